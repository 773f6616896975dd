"""Desugar the easy form into canonical TOML data, before typed decoding.

Input is the dict ``tomllib`` produced; output is a dict in the canonical shape of
:mod:`.model` plus an *origin* map that remembers, for every generated route, which key
of the user's file it came from (so later errors point at the user's line, not at a
route the user never wrote). Desugaring also fills the defaults that depend on other
parts of the file: route names and priorities, the default host, per-route auth, the log
directory for the profile. Anything ambiguous is an error at its line, never a guess.

Easy route keys: ``"[METHOD[,METHOD...]|*] /path [name=value ...]"``.
Path sugar: no wildcard = exact; trailing ``/*`` or ``/`` = prefix; trailing ``/**`` =
prefix_strip; a whole ``*`` segment elsewhere = one segment (``glob_one``); ``*``
segments with a trailing ``/**`` = ``glob_rest``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .checks import header_name, method_name
from .locate import KeyPath
from .problems import Problems

ARROW = "->"
_NAME_JUNK = re.compile(r"[^a-z0-9]+")


@dataclass
class Desugared:
    data: dict[str, Any]
    origins: dict[KeyPath, KeyPath] = field(default_factory=dict)
    """Canonical path prefix -> the user's key path it came from."""


class _RouteSyntaxError(ValueError):
    pass


def parse_route_key(key: str) -> dict[str, Any]:
    """Turn ``"POST /v1/*  x-model=gpt-4"`` into a canonical ``match`` table."""
    tokens = key.split()
    if not tokens:
        raise _RouteSyntaxError("empty route key; write \"METHOD /path\"")
    methods: list[str] = ["*"]
    if not tokens[0].startswith("/"):
        methods = tokens[0].split(",")
        tokens = tokens[1:]
        for method in methods:
            problem = method_name(method)
            if problem:
                raise _RouteSyntaxError(problem)
        if "*" in methods and len(methods) > 1:
            raise _RouteSyntaxError("'*' already means any method; do not combine it")
        if len(set(methods)) != len(methods):
            raise _RouteSyntaxError("a method is listed twice")
    if not tokens or not tokens[0].startswith("/"):
        raise _RouteSyntaxError("expected a path starting with '/' after the method")
    path = desugar_path(tokens[0])
    headers = []
    for literal in tokens[1:]:
        name, sep, value = literal.partition("=")
        if not sep or not value:
            raise _RouteSyntaxError(
                f"{literal!r}: after the path only header literals name=value may follow")
        problem = header_name(name)
        if problem:
            raise _RouteSyntaxError(problem)
        headers.append({"name": name, "equals": value})
    if len({h["name"] for h in headers}) != len(headers):
        raise _RouteSyntaxError("a header literal names the same header twice")
    return {"methods": methods, "path": path, "headers": headers}


def desugar_path(text: str) -> dict[str, Any]:
    """Path sugar to a canonical ``match.path`` table."""
    if text.endswith("/**"):
        base, sugar = text[:-2], "rest"
    elif text.endswith("/*"):
        base, sugar = text[:-1], "prefix"
    elif text.endswith("/"):
        base, sugar = text, "prefix"
    else:
        base, sugar = text, "exact"
    segments = [s for s in base.split("/") if s]
    for segment in segments:
        if segment == "**":
            raise _RouteSyntaxError(f"{text!r}: '**' is only allowed as the last segment")
        if "*" in segment and segment != "*":
            raise _RouteSyntaxError(
                f"{text!r}: '*' must be a whole segment (no partial globs like 'a*b')")
    globbed = "*" in segments
    if globbed and sugar == "prefix":
        raise _RouteSyntaxError(
            f"{text!r} is ambiguous: a trailing '/*' after a '*' segment could mean one more "
            "segment or any rest; write .../* without the glob prefix, or end with '/**'")
    if globbed:
        kind = "glob_rest" if sugar == "rest" else "glob_one"
        return {"type": kind, "value": text}
    if sugar == "rest":
        return {"type": "prefix_strip", "value": base}
    if sugar == "prefix":
        return {"type": "prefix", "value": base}
    return {"type": "exact", "value": text}


def parse_target(target: object) -> tuple[str, str]:
    if not isinstance(target, str):
        raise _RouteSyntaxError("a route target is a string: \"proxy:<upstream>\" or "
                                "\"static:<name>\"")
    kind, sep, name = target.partition(":")
    if kind not in ("proxy", "static") or not sep or not name or "/" in name:
        raise _RouteSyntaxError(
            f"{target!r} is not a route target; write \"proxy:<upstream name>\" or "
            "\"static:<name>\" (URLs are never targets: declare an [upstreams.NAME] pool)")
    return kind, name


def auto_name(match: dict[str, Any]) -> str:
    """A readable name from the match: ``POST /v1/*`` -> ``post_v1_wildcard``."""
    methods = match.get("methods", ["*"])
    parts = ["any" if methods == ["*"] else "_".join(m.lower() for m in methods)]
    path = match.get("path", {})
    value = str(path.get("value", "/"))
    kind = path.get("type")
    segments = [s for s in value.split("/") if s]
    for segment in segments:
        parts.append({"*": "wildcard", "**": "rest"}.get(segment, segment))
    if kind == "prefix":
        parts.append("wildcard")
    elif kind == "prefix_strip":
        parts.append("rest")
    elif not segments:
        parts.append("root")
    for literal in match.get("headers", []):
        parts.append(f"{literal.get('name', '')}_{literal.get('equals', '')}")
    name = _NAME_JUNK.sub("_", "_".join(parts).lower()).strip("_")
    return name[:64].rstrip("_") or "route"


def desugar(raw: dict[str, Any], problems: Problems) -> Desugared:
    data = dict(raw)
    result = Desugared(data)
    server = data.get("server")
    if isinstance(server, dict):
        server = dict(server)
        data["server"] = server
        if isinstance(server.get("listen"), str):
            server["listen"] = [server["listen"]]
    _desugar_upstreams(data)
    _desugar_routes(data, result, problems)
    _fill_route_defaults(data)
    _fill_log_dir(data)
    _fill_expose_errors(data)
    return result


def _desugar_upstreams(data: dict[str, Any]) -> None:
    upstreams = data.get("upstreams")
    if not isinstance(upstreams, dict):
        return
    data["upstreams"] = upstreams = dict(upstreams)
    for name, pool in upstreams.items():
        if isinstance(pool, dict) and isinstance(pool.get("peers"), list):
            pool = dict(pool)
            pool["peers"] = [{"url": p} if isinstance(p, str) else p for p in pool["peers"]]
            upstreams[name] = pool


def _desugar_routes(data: dict[str, Any], result: Desugared, problems: Problems) -> None:
    easy = data.pop("routes", None)
    canonical = data.get("route")
    if easy is None:
        return
    if canonical is not None:
        problems.error(("routes",), "routes_mixed",
                       "the easy [routes] form and canonical [[route]] tables cannot be mixed "
                       "(their order would be a guess); use one form")
        return
    entries: list[tuple[KeyPath, str, object]] = []
    if isinstance(easy, dict):
        for key, target in easy.items():
            entries.append((("routes", key), key, target))
    elif isinstance(easy, list):
        for index, item in enumerate(easy):
            if not isinstance(item, str) or ARROW not in item:
                problems.error(("routes", index), "route_syntax",
                               "list entries look like \"GET /health -> static:healthcheck\"")
                continue
            key, _, target = item.partition(ARROW)
            entries.append((("routes", index), key.strip(), target.strip()))
    else:
        problems.error(("routes",), "type", "expected a [routes] table or a routes = [...] list")
        return
    routes: list[dict[str, Any]] = []
    seen: dict[str, KeyPath] = {}
    for origin, key, target in entries:
        try:
            match = parse_route_key(key)
            kind, name = parse_target(target)
        except _RouteSyntaxError as exc:
            problems.error(origin, "route_syntax", str(exc))
            continue
        canonical_key = repr((match["methods"], match["path"], match["headers"]))
        if canonical_key in seen:
            problems.error(origin, "duplicate_route",
                           f"this route repeats an earlier key ({key!r} means the same match)")
            continue
        seen[canonical_key] = origin
        result.origins[("route", len(routes))] = origin
        routes.append({"match": match, kind: name})
    data["route"] = routes


def _fill_route_defaults(data: dict[str, Any]) -> None:
    routes = data.get("route")
    if not isinstance(routes, list):
        return
    server = data.get("server") if isinstance(data.get("server"), dict) else {}
    default_host = server.get("host") if isinstance(server, dict) else None
    auth = data.get("auth")
    keys = auth.get("keys") if isinstance(auth, dict) else None
    entries = [k for k in keys if isinstance(k, dict)] if isinstance(keys, list) else []
    # Bearer keys first (the long-standing default); a config whose [auth] names only
    # client certificates protects its proxy routes with them.
    default_auth = ("api_key" if any("client_cert" not in k for k in entries)
                    else "client_cert" if entries else "none")
    filled: list[Any] = []
    used_names: set[str] = {r["name"] for r in routes if isinstance(r, dict)
                            and isinstance(r.get("name"), str)}
    for index, route in enumerate(routes):
        if not isinstance(route, dict):
            filled.append(route)
            continue
        route = dict(route)
        match = route.get("match")
        if isinstance(match, dict):
            match = dict(match)
            if "host" not in match and isinstance(default_host, str):
                match["host"] = {"type": "exact", "value": default_host}
            route["match"] = match
        if "name" not in route and isinstance(match, dict):
            base = auto_name(match)
            name, suffix = base, 2
            while name in used_names:
                name, suffix = f"{base[:60]}_{suffix}", suffix + 1
            used_names.add(name)
            route["name"] = name
        route.setdefault("priority", (index + 1) * 10)
        if "auth" not in route:
            route["auth"] = default_auth if "proxy" in route else "none"
        filled.append(route)
    data["route"] = filled


def _fill_expose_errors(data: dict[str, Any]) -> None:
    """Under the dev profile upstream error bodies pass through unless the file says
    otherwise (they help while building against a backend); elsewhere the default holds."""
    server = data.get("server")
    if isinstance(server, dict) and server.get("profile") == "dev" \
            and "expose_upstream_errors" not in server:
        data["server"] = {**server, "expose_upstream_errors": True}


def _fill_log_dir(data: dict[str, Any]) -> None:
    server = data.get("server")
    profile = server.get("profile", "production") if isinstance(server, dict) else "production"
    log = data.get("log")
    log = dict(log) if isinstance(log, dict) else {}
    if "dir" not in log:
        log["dir"] = "./logs" if profile == "dev" else "/var/log/li-httpd"
    data["log"] = log
