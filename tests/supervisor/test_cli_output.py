"""What the `li-httpd` commands print, tried the way a newcomer runs them.

A reader that stops early (``li-httpd ctl status | head -1``) must not make a command
print a BrokenPipeError traceback: the tests give each command a stdout pipe whose read
end is already closed, so every write fails (no race with a real ``head``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from li_httpd.supervisor.control import ControlServer

TIMEOUT = 60


def _command(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("li-httpd")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), *args]
    return [sys.executable, "-m", "li_httpd.supervisor.cli", *args]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LI_HTTPD_CONFIG"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_into_closed_pipe(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run the CLI with stdout a pipe nobody reads any more (as after ``| head -1``)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(_command(*args), stdout=write_end, stderr=subprocess.PIPE,
                              input=stdin, text=True, env=_env(), timeout=TIMEOUT,
                              check=False)
    finally:
        os.close(write_end)


def _assert_quiet(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "BrokenPipeError" not in result.stderr, result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr
    assert result.returncode == 1, result


@pytest.mark.parametrize("args", [
    ("validate-config", "-c", ":embedded:"),
    ("explain-config", "-c", ":embedded:"),
    ("explain-route", "-c", ":embedded:", "--method", "GET", "--host", "localhost",
     "--path", "/health"),
], ids=lambda a: a[0])
def test_commands_stop_quietly_when_the_reader_goes_away(args: tuple[str, ...]) -> None:
    _assert_quiet(run_into_closed_pipe(*args))


def test_hash_key_stops_quietly_when_the_reader_goes_away() -> None:
    _assert_quiet(run_into_closed_pipe("hash-key", stdin="sk-test-key\n"))


STATUS: dict[str, Any] = {
    "ok": True, "version": "0.1.0", "pid": 1234, "uptime_s": 5.0, "config_file": "g.toml",
    "config_hash": "0123456789ab", "generation": 0, "listen": ["http://127.0.0.1:8080"],
    "control_socket": "control.sock", "last_reload": {"result": "none"},
    "workers": [{"slot": 0, "pid": 1235, "generation": 0, "state": "running",
                 "connections": 0, "requests": 0, "uptime_s": 5.0}],
    "upstreams": [],
}


@pytest.fixture
def control_socket() -> Iterator[str]:
    """A control socket that answers ``status`` like a running master."""
    with tempfile.TemporaryDirectory(prefix="lictl-") as directory:
        path = str(Path(directory) / "control.sock")
        server = ControlServer(path)
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                server.serve_one(lambda _command: STATUS)
                time.sleep(0.01)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield path
        finally:
            stop.set()
            thread.join()
            server.close()


@pytest.mark.parametrize("extra", [(), ("--json",)], ids=["table", "json"])
def test_ctl_status_stops_quietly_when_the_reader_goes_away(control_socket: str,
                                                            extra: tuple[str, ...]) -> None:
    _assert_quiet(run_into_closed_pipe("ctl", "--socket", control_socket, "status", *extra))


def test_ctl_status_prints_to_a_reader(control_socket: str) -> None:
    result = subprocess.run(_command("ctl", "--socket", control_socket, "status"),
                            capture_output=True, text=True, env=_env(), timeout=TIMEOUT,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("li-httpd 0.1.0  pid 1234")


# -- validate-config says what it checked -------------------------------------------------


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_command(*args), capture_output=True, text=True,
                          env=env or _env(), timeout=TIMEOUT, check=False)


def test_validate_config_names_the_embedded_default() -> None:
    result = _run("validate-config", "-c", ":embedded:")
    assert (result.returncode, result.stdout) == (0, "ok: embedded default config\n")


def test_validate_config_names_the_file_it_found(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[server]\nlisten = "127.0.0.1:8080"\nprofile = "dev"\n'
                      '[routes]\n"GET /health" = "static:healthcheck"\n')
    result = _run("validate-config", env={**_env(), "LI_HTTPD_CONFIG": str(config)})
    assert (result.returncode, result.stdout) == (0, f"ok: {config}\n")
    result = _run("validate-config", "-c", str(config))
    assert (result.returncode, result.stdout) == (0, f"ok: {config}\n")


def test_validate_config_refuses_a_file_without_routes(tmp_path: Path) -> None:
    config = tmp_path / "empty.toml"
    config.write_text('[server]\nlisten = "127.0.0.1:8080"\nprofile = "dev"\n')
    result = _run("validate-config", "-c", str(config))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(f"{config}: routes: the config has no routes")


# -- explain-route: refusals exit 1; a route shows its auth and rate limit ---------------

ROUTED = '''[server]
listen = "127.0.0.1:8080"
profile = "dev"

[upstreams.inference]
peers = ["http://127.0.0.1:8000"]

[auth]
keys = [{ id = "ci", sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" }]

[defaults.rate_limit]
requests_per_sec = 7
burst = 9

[routes]
"GET /health" = "static:healthcheck"
"POST /v1/*" = "proxy:inference"
'''


@pytest.fixture
def routed(tmp_path: Path) -> Path:
    config = tmp_path / "routed.toml"
    config.write_text(ROUTED)
    return config


def _explain(config: Path, method: str, path: str) -> tuple[int, Any]:
    result = _run("explain-route", "-c", str(config), "--method", method,
                  "--host", "localhost", "--path", path)
    return result.returncode, json.loads(result.stdout)


def test_explain_route_shows_auth_and_the_effective_rate_limit(routed: Path) -> None:
    assert _explain(routed, "POST", "/v1/chat/completions") == (0, {
        "route": "post_v1_wildcard", "action": "proxy", "target": "inference",
        "upstream_path": "/v1/chat/completions", "auth": "api_key",
        "rate_limit": {"key": "api_key", "requests_per_sec": 7, "burst": 9,
                       "concurrent_streams": 32}})
    code, health = _explain(routed, "GET", "/health")
    assert code == 0 and (health["auth"], health["rate_limit"]) == ("none", None)


def test_explain_route_exits_1_when_the_request_would_be_refused(routed: Path) -> None:
    assert _explain(routed, "GET", "/nowhere") == (1, {"status": 404})
    assert _explain(routed, "GET", "/v1/models") == (1, {"status": 405, "allow": ["POST"]})
    code, answer = _explain(routed, "GET", "/a/../b")
    assert code == 1 and answer["status"] == 400
