"""Table-driven routing cases (SPEC §4): tests/routing/cases/*.toml.

Each case file holds a multi-line ``config`` string (the gateway config the cases run against,
``@NAME@`` placeholders filled from the ``config_env`` fixture) and ``[[case]]`` entries:

    id = "chat_completions"
    request = { method = "POST", host = "api.example.com", path = "/v1/chat", headers = {...} }
    expect = { route = "...", action = "proxy", target = "...", upstream_path = "..." }
    expect = { status = 404 } | { status = 405, allow = [...] } | { status = 400 }

Every case is checked twice: in-process (normalize_path -> Router.lookup, and against
the unindexed naive_lookup) and through the real ``li-httpd explain-route`` command.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from li_httpd.config import Found, LoadedConfig, PathError, Router, load_text, normalize_path
from li_httpd.config.matching import normalize_host
from li_httpd.config.router import naive_lookup

CASES_DIR = Path(__file__).parent / "cases"
CASE_FILES = sorted(CASES_DIR.glob("*.toml"))
MIN_CASES = 60

_FILE_KEYS = {"config", "case"}
_CASE_KEYS = {"id", "request", "expect"}
_REQUEST_KEYS = {"method", "host", "path", "headers"}
_FOUND_KEYS = {"route", "action", "target", "upstream_path"}
_STATUS_KEYS = {"status", "allow"}


@functools.cache
def _read(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _all_cases() -> list[Any]:
    params = []
    for path in CASE_FILES:
        for case in _read(path).get("case", []):
            params.append(pytest.param(path.name, case, id=f"{path.stem}:{case.get('id')}"))
    return params


CASES = _all_cases()


def _route_in_process(loaded: LoadedConfig, request: dict[str, Any]) -> dict[str, Any]:
    """What explain-route prints, computed in-process (plus ``allow`` for a 405)."""
    raw_path = str(request["path"]).partition("?")[0]
    try:
        path = normalize_path(raw_path)
    except PathError:
        return {"status": 400}
    method = str(request["method"]).upper()
    host = normalize_host(str(request["host"]))
    headers = {str(k).lower(): str(v) for k, v in request.get("headers", {}).items()}
    result = Router(loaded.config.route).lookup(method, host, path, headers)
    naive = naive_lookup(loaded.config.route, method, host, path, headers)
    if isinstance(result, Found):
        assert isinstance(naive, Found), "indexed router and naive scan disagree"
        assert naive.route.name == result.route.name
        assert naive.upstream_path == result.upstream_path
        return {"route": result.route.name, "action": result.route.action,
                "target": result.route.target, "upstream_path": result.upstream_path}
    assert naive == result, "indexed router and naive scan disagree"
    out: dict[str, Any] = {"status": result.status}
    if result.status == 405:
        out["allow"] = list(result.allow)
    return out


def _check_expectation(actual: dict[str, Any], expect: dict[str, Any], *,
                       with_allow: bool) -> None:
    if "status" in expect:
        assert actual.get("status") == expect["status"], actual
        if with_allow and "allow" in expect:
            assert actual.get("allow") == expect["allow"], actual
        return
    assert "status" not in actual, f"expected route {expect['route']!r}, got {actual}"
    for key in _FOUND_KEYS:
        if key in expect:
            assert actual[key] == expect[key], f"{key}: {actual}"


@pytest.fixture(scope="module")
def case_configs(config_env: Any, tmp_path_factory: pytest.TempPathFactory
                 ) -> dict[str, tuple[LoadedConfig, Path]]:
    """Per case file: the loaded config and the config written to a file for the CLI."""
    directory = tmp_path_factory.mktemp("routing_configs")
    out = {}
    for path in CASE_FILES:
        text = config_env.fill(_read(path)["config"])
        config_file = directory / f"{path.stem}.li-httpd.toml"
        config_file.write_text(text, encoding="utf-8")
        out[path.name] = (load_text(text, str(config_file)), config_file)
    return out


def test_case_files_are_well_formed() -> None:
    assert CASE_FILES, f"no case files in {CASES_DIR}"
    seen_ids: set[str] = set()
    for path in CASE_FILES:
        data = _read(path)
        assert set(data) <= _FILE_KEYS, f"{path.name}: unknown top-level keys"
        assert isinstance(data.get("config"), str), f"{path.name}: config = \"\"\"...\"\"\""
        assert data.get("case"), f"{path.name}: no [[case]]"
        for case in data["case"]:
            where = f"{path.name}:{case.get('id')}"
            assert set(case) == _CASE_KEYS, where
            assert case["id"] not in seen_ids, f"{where}: duplicate case id"
            seen_ids.add(case["id"])
            request, expect = case["request"], case["expect"]
            assert {"method", "host", "path"} <= set(request) <= _REQUEST_KEYS, where
            if "status" in expect:
                assert set(expect) <= _STATUS_KEYS, where
                assert expect["status"] in (400, 404, 405), where
                assert ("allow" in expect) == (expect["status"] == 405), (
                    f"{where}: a 405 case names its Allow methods, other statuses do not")
            else:
                assert {"route", "action"} <= set(expect) <= _FOUND_KEYS, where
                assert expect["action"] in ("proxy", "static"), where
    assert len(seen_ids) >= MIN_CASES, f"only {len(seen_ids)} routing cases"


def test_every_case_file_config_validates(
        case_configs: dict[str, tuple[LoadedConfig, Path]]) -> None:
    for name, (loaded, _) in case_configs.items():
        assert loaded.config.route, f"{name}: config has no routes"


def test_every_route_is_reached_by_some_case(
        case_configs: dict[str, tuple[LoadedConfig, Path]]) -> None:
    """Case files exercise their whole config: no route is left without a case."""
    for path in CASE_FILES:
        loaded, _ = case_configs[path.name]
        reached = {c["expect"].get("route") for c in _read(path)["case"]}
        unused = [r.name for r in loaded.config.route if r.name not in reached]
        assert not unused, f"{path.name}: routes without a case: {unused}"


@pytest.mark.parametrize(("file_name", "case"), CASES)
def test_case_in_process(file_name: str, case: dict[str, Any],
                         case_configs: dict[str, tuple[LoadedConfig, Path]]) -> None:
    loaded, _ = case_configs[file_name]
    actual = _route_in_process(loaded, case["request"])
    _check_expectation(actual, case["expect"], with_allow=True)


def _cli_args(config_file: Path, request: dict[str, Any]) -> list[str]:
    args = ["explain-route", "-c", str(config_file), "--method", request["method"],
            "--host", request["host"], "--path", request["path"]]
    for name, value in request.get("headers", {}).items():
        args += ["-H", f"{name}={value}"]
    return args


@pytest.fixture(scope="module")
def cli_results(cli: Any, case_configs: dict[str, tuple[LoadedConfig, Path]]
                ) -> dict[tuple[str, str], subprocess.CompletedProcess[str]]:
    """Every case run through the CLI once; one process per case, a few at a time."""
    jobs = {}
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        for param in CASES:
            file_name, case = param.values
            _, config_file = case_configs[file_name]
            jobs[(file_name, case["id"])] = pool.submit(
                cli, *_cli_args(config_file, case["request"]))
        return {key: job.result() for key, job in jobs.items()}


@pytest.mark.parametrize(("file_name", "case"), CASES)
def test_case_through_cli(file_name: str, case: dict[str, Any],
                          case_configs: dict[str, tuple[LoadedConfig, Path]],
                          cli_results: dict[tuple[str, str], Any]) -> None:
    loaded, _ = case_configs[file_name]
    result = cli_results[(file_name, case["id"])]
    expected = _route_in_process(loaded, case["request"])
    # Exit 1 when the request would be refused (400, 404, 405), 0 when it is routed.
    assert result.returncode == (1 if "status" in expected else 0), result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    printed = json.loads(lines[0])
    _check_expectation(printed, case["expect"], with_allow=True)
    if expected.get("status") == 400:
        assert set(printed) == {"status", "error"}, printed
        printed.pop("error")
    if "route" in expected:
        # A matched route also shows whether auth applies and its effective rate limit.
        route = next(r for r in loaded.config.route if r.name == expected["route"])
        limit = route.rate_limit
        expected["auth"] = route.auth
        expected["rate_limit"] = None if limit is None else {
            "key": limit.key, "requests_per_sec": limit.requests_per_sec,
            "burst": limit.burst, "concurrent_streams": limit.concurrent_streams}
    assert printed == expected
