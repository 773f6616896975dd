"""Access, audit and error logs of a real gateway: content, rotation, reopen, redaction."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import signal
import time
from pathlib import Path

import pytest

from .conftest import Gateway, MockUpstream, gateway_config

pytestmark = pytest.mark.integration


def _get(gateway: Gateway, path: str, headers: dict[str, str] | None = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:  # type: ignore[operator]
        return [line for line in handle.read().splitlines() if line]


def _wait_for(predicate: object, timeout: float = 10.0) -> None:
    give_up = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < give_up, "condition not reached"
        time.sleep(0.05)


def test_access_and_audit_records(mock: MockUpstream, start_gateway) -> None:
    limit = ('[defaults.rate_limit]\nkey = "ip"\nallow_ip_key = true\n'
             'requests_per_sec = 1\nburst = 2\n')
    gateway = start_gateway(gateway_config(mock.origin, extra=limit))
    statuses = [_get(gateway, "/small", {"x-request-id": f"req-{i}"}) for i in range(3)]
    assert statuses == [200, 200, 429]
    _get(gateway, "/health")
    access = gateway.log_dir / "access.log"
    audit = gateway.log_dir / "audit.jsonl"
    _wait_for(lambda: len(_lines(access)) >= 4 and len(_lines(audit)) >= 3)
    # Two workers flush independently: find lines by request id, not by position.
    first = next(line.split(" ") for line in _lines(access) if " req-0 " in line)
    assert len(first) == 14
    assert first[0].endswith("Z") and "T" in first[0] and len(first[0]) == 24  # RFC 3339 ms
    assert first[2] == "req-0" and first[3] == "any_wildcard" and first[5] == "200"
    assert first[6] == "completed"
    assert first[10:12] == ["GET", "/small"] and first[12].startswith("127.0.0.1:")
    assert first[13] == "-"  # no API key on this route
    limited = next(line.split(" ") for line in _lines(access) if " req-2 " in line)
    assert limited[5:7] == ["429", "rejected"]
    records = sorted((json.loads(line) for line in _lines(audit)),
                     key=lambda r: r["request_id"])
    assert [r["decision"] for r in records[:3]] == ["allow", "allow", "rate_limited"]
    assert [r["outcome"] for r in records[:3]] == ["completed", "completed", "rejected"]
    assert records[0]["route"] == "any_wildcard" and records[0]["peer"] in mock.origin
    assert records[0]["ttfb_ms"] > 0 and records[0]["status"] == 200
    assert all(r["route"] != "get_health" for r in records)  # static routes are not audited


def test_mv_and_sigusr1_lose_and_duplicate_nothing(mock: MockUpstream, start_gateway) -> None:
    gateway = start_gateway(gateway_config(mock.origin))
    access = gateway.log_dir / "access.log"
    moved = gateway.log_dir / "access.log.moved"
    for i in range(50):
        _get(gateway, "/small", {"x-request-id": f"before-{i}"})
    _wait_for(lambda: len(_lines(access)) == 50)
    os.rename(access, moved)
    for i in range(20):  # still written to the moved file until the reopen
        _get(gateway, "/small", {"x-request-id": f"between-{i}"})
    gateway.signal(signal.SIGUSR1)
    _wait_for(access.exists)
    for i in range(50):
        _get(gateway, "/small", {"x-request-id": f"after-{i}"})
    _wait_for(lambda: len(_lines(access)) + len(_lines(moved)) == 120)
    time.sleep(0.3)
    ids = [line.split(" ")[2] for line in _lines(moved) + _lines(access)]
    assert len(ids) == len(set(ids)) == 120
    new_file = {line.split(" ")[2] for line in _lines(access)}
    assert {f"after-{i}" for i in range(50)} <= new_file  # all after the reopen
    assert not any(i.startswith("before-") for i in new_file)


def test_rotation_by_size_compresses_and_keeps_max_backups(mock: MockUpstream,
                                                           start_gateway, tmp_path: Path) -> None:
    extra = (f'[log]\ndir = "{tmp_path / "rot"}"\n[log.rotation]\nmax_size = "64k"\n'
             'max_backups = 2\n')
    gateway = start_gateway(gateway_config(mock.origin, extra=extra))
    directory = tmp_path / "rot"
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    sent = 0
    give_up = time.monotonic() + 60
    while len(list(directory.glob("access.log.*.gz"))) < 2 or sent < 3000:
        assert time.monotonic() < give_up, sorted(p.name for p in directory.iterdir())
        connection.request("GET", f"/small?pad={'x' * 200}&n={sent}")
        connection.getresponse().read()
        sent += 1
    connection.close()
    time.sleep(2.5)  # the last rotation's grace period and compression
    backups = sorted(p.name for p in directory.glob("access.log.*"))
    assert backups and all(name.endswith(".gz") for name in backups), backups
    assert len(backups) <= 2
    for backup in directory.glob("access.log.*.gz"):
        lines = _lines(backup)
        assert lines and all(line.count(" ") == 13 for line in lines)
    assert (os.stat(directory / "access.log").st_mode & 0o777) == 0o640
    assert (os.stat(directory).st_mode & 0o777) == 0o750


SECRETS = {
    "openai": "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    "github": "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "jwt": ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
            "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
    "cookie": "session=topsecretcookievalue123",
}


def test_planted_secrets_never_reach_a_log(mock: MockUpstream, start_gateway) -> None:
    routes = '"/v1/*" = "proxy:main"\n"/small" = "proxy:main"\n"/nowhere" = "proxy:main"\n'
    gateway = start_gateway(gateway_config(mock.origin, routes=routes))
    _get(gateway, f"/small?api_key={SECRETS['openai']}",
         {"authorization": f"Bearer {SECRETS['jwt']}", "cookie": SECRETS["cookie"],
          "x-request-id": "secret-test"})
    _get(gateway, f"/v1/{SECRETS['github']}/x?token={SECRETS['aws']}")
    _get(gateway, f"/small?body_secret={SECRETS['openai']}")  # the upstream leaks it back
    _get(gateway, "/%ZZ" + SECRETS["aws"])  # a malformed request: error log only
    time.sleep(0.5)
    logged = "\n".join(p.read_text(errors="replace") for p in gateway.log_dir.iterdir())
    assert "secret-test" in logged  # the logs were written at all
    for name, secret in SECRETS.items():
        assert secret not in logged, name
        assert secret.split("=")[-1] not in logged, name
    assert "[REDACTED" in logged
    assert "/small?api_key=<redacted> " in logged  # query values never reach the access log
    assert " GET <invalid> " in logged  # nor the bytes of a path that does not decode
