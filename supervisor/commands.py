"""Subcommands: validate-config, explain-config, explain-route, start, hash-key,
setup-censor, mock-upstream."""

from __future__ import annotations

import argparse
import sys

import orjson
from li_httpd.config import EMBEDDED_NAME, ConfigError, Found, LoadedConfig, PathError, Router, load
from li_httpd.config.matching import normalize_host
from li_httpd.config.paths import normalize_path

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_NO_ROUTE = 1
"""explain-route: the request would be refused (400, 404 or 405) instead of routed."""


def _load_or_report(path: str | None) -> LoadedConfig | None:
    try:
        loaded = load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem.render(exc.filename), file=sys.stderr)
        return None
    for warning in loaded.warnings:
        print(warning.render(loaded.filename), file=sys.stderr)
    return loaded


def validate_config(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args.config)
    if loaded is None:
        return EXIT_CONFIG
    checked = "embedded default config" if loaded.filename == EMBEDDED_NAME \
        else loaded.filename
    print(f"ok: {checked}")
    return EXIT_OK


def explain_config(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args.config)
    if loaded is None:
        return EXIT_CONFIG
    sys.stdout.write(loaded.canonical)
    return EXIT_OK


def explain_route(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args.config)
    if loaded is None:
        return EXIT_CONFIG
    headers: dict[str, str] = {}
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep:
            print(f"li-httpd: -H expects NAME=VALUE, got {item!r}", file=sys.stderr)
            return EXIT_CONFIG
        name = name.strip().lower()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    raw_path = args.path.partition("?")[0]
    try:
        path = normalize_path(raw_path)
    except PathError as exc:
        _print_json({"status": 400, "error": str(exc)})
        return EXIT_NO_ROUTE
    result = Router(loaded.config.route).lookup(args.method.upper(), normalize_host(args.host),
                                                path, headers)
    if not isinstance(result, Found):
        answer: dict[str, object] = {"status": result.status}
        if result.status == 405:
            answer["allow"] = list(result.allow)
        _print_json(answer)
        return EXIT_NO_ROUTE
    route = result.route.route
    limit = route.rate_limit
    _print_json({"route": result.route.name, "action": result.route.action,
                 "target": result.route.target, "upstream_path": result.upstream_path,
                 "auth": route.auth,
                 "rate_limit": None if limit is None else {
                     "key": limit.key, "requests_per_sec": limit.requests_per_sec,
                     "burst": limit.burst, "concurrent_streams": limit.concurrent_streams}})
    return EXIT_OK


def _print_json(value: object) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")


def start(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args.config)
    if loaded is None:
        return EXIT_CONFIG
    from li_httpd.config.loader import resolve_path

    from .master import start as start_master

    return start_master(loaded, resolve_path(args.config))


def mock_upstream(arguments: list[str]) -> int:
    from li_httpd.ops.mock_upstream import main as mock_main

    return mock_main(arguments)


def hash_key(_args: argparse.Namespace) -> int:
    """Read a raw API key from stdin (one line, never an argument: shell history and
    process listings would keep it) and print the digest to put in [auth] keys."""
    from li_httpd.workers.identity import hash_key as digest

    raw = sys.stdin.readline().rstrip("\r\n")
    if not raw or raw.strip() != raw:
        print("li-httpd: hash-key reads one key (no surrounding spaces) from stdin",
              file=sys.stderr)
        return EXIT_CONFIG
    print(digest(raw))
    return EXIT_OK


def setup_censor(args: argparse.Namespace) -> int:
    """Generate (or with --check, compare) leak_censor.generated.toml."""
    from li_httpd.ops.setup_censor import main as setup_main

    return setup_main(args.sql, args.openapi, args.out, args.check)
