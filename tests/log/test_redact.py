"""Redaction golden cases: planted secrets of every detector never reach any sink."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from li_httpd.config.model import Log, LogSink, Redact, StderrSink
from li_httpd.ops.log import REDACTED, Redactor, WorkerLog
from li_httpd.ops.log.redact import logged_path

from .test_detectors import POSITIVES

SECRETS = [(detector_id, secrets[0]) for detector_id, secrets in POSITIVES.items()]
"""One planted secret per detector id."""


def test_always_redacted_headers_whatever_the_config() -> None:
    redactor = Redactor(Redact(headers=("x-api-key",), patterns=()))
    for name in ("Authorization", "proxy-authorization", "COOKIE", "set-cookie", "x-api-key",
                 b"Authorization"):
        assert redactor.header(name, "anything at all") == REDACTED
    assert redactor.header("accept", "text/plain") == "text/plain"
    assert redactor.header(b"Host", b"example.com") == "example.com"


def test_detectors_in_header_values_paths_and_bytes() -> None:
    redactor = Redactor()
    for detector_id, secret in SECRETS:
        marker = f"[REDACTED:{detector_id}]"
        assert redactor.header("x-custom", f"v {secret}") == f"v {marker}"
        assert redactor.text(f"/v1/{secret}?q=1".encode("latin-1")) == f"/v1/{marker}?q=1"
        assert redactor.text(f"message {secret}") == f"message {marker}"


def test_configured_patterns_only() -> None:
    github = dict(SECRETS)["github_token"]
    google = dict(SECRETS)["google_api_key"]
    redactor = Redactor(Redact(patterns=("github_token",)))
    assert redactor.text(f"{github} {google}") == f"[REDACTED:github_token] {google}"
    assert Redactor(Redact(patterns=())).text(github) == github


def test_fields_keys_and_nested_values() -> None:
    redactor = Redactor(Redact(headers=("x-api-key",)))
    openai = dict(SECRETS)["openai_sk"]
    fields = redactor.fields({
        "authorization": "Bearer abc",
        "x_api_key": "plain",
        "cookie": None,
        "headers": [("authorization", "Bearer abc"), (b"x-trace", openai.encode())],
        "nested": {"Set-Cookie": "s=1", "deep": [[{"v": openai}]]},
        "err": ValueError(f"bad key {openai}"),
        "count": 3,
    })
    assert fields == {
        "authorization": REDACTED,
        "x_api_key": REDACTED,
        "cookie": None,
        "headers": [["authorization", REDACTED], ["x-trace", "[REDACTED:openai_sk]"]],
        "nested": {"Set-Cookie": REDACTED, "deep": [[{"v": "[REDACTED:openai_sk]"}]]},
        "err": "ValueError('bad key [REDACTED:openai_sk]')",
        "count": 3,
    }


def test_memo_is_bounded() -> None:
    redactor = Redactor()
    for n in range(10_000):
        redactor.text(f"/path/{n}")
    assert len(redactor._memo) <= 4096


@pytest.mark.parametrize("fmt", ["human", "json"])
def test_planted_secrets_never_reach_any_sink(tmp_path: Path, fmt: str) -> None:
    """Every detector's secret, planted in every kind of field of every record kind."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    json = fmt == "json"
    config = Log(dir=str(tmp_path), level="trace",
                 access=LogSink(path="access.log", format="json" if json else "human"),
                 error=LogSink(path="error.log", level="trace",
                               format="json" if json else "human"),
                 audit=LogSink(path="audit.jsonl", format="json"),
                 stderr=StderrSink(level="trace"),
                 redact=Redact(headers=("x-api-key",)))
    log = WorkerLog(config, stderr_fd=write_end, color=False)
    raw_values = ["Bearer plain-token-value", "session=plain-cookie-value",
                  "plain-api-key-value"]
    for detector_id, secret in SECRETS:
        log.access(secret, f"route-{secret}", secret.encode(), 200, "completed", 1.0, 1, 2,
                   method="POST", path=f"/v1/{secret}?k={secret}".encode())
        log.audit(secret, secret, "r", secret, "POST", f"/p/{secret}", 200, "completed",
                  "allow", secret, 1.0, 0.5, 1, 2)
        log.diagnostic("error", f"failed with {secret}", request_id=secret,
                       authorization=raw_values[0], cookie=raw_values[1],
                       x_api_key=raw_values[2], detail={"body": [secret]},
                       headers=[(b"authorization", raw_values[0].encode()),
                                (b"x-other", secret.encode())], detector=detector_id)
    log.close()
    os.close(write_end)
    outputs = {name: (tmp_path / name).read_bytes()
               for name in ("access.log", "error.log", "audit.jsonl")}
    outputs["stderr"] = os.read(read_end, 1 << 20)
    os.close(read_end)
    for name, data in outputs.items():
        assert data.count(b"\n") == len(SECRETS), name
        for _, secret in SECRETS:
            for fragment in (secret, secret.replace("\n", "\\n"), secret[:30]):
                assert fragment.encode() not in data, (name, secret)
        for raw in raw_values:
            assert raw.encode() not in data, name
    for detector_id, _ in SECRETS:
        marker = f"[REDACTED:{detector_id}]".encode()
        for name, data in outputs.items():
            assert marker in data, (name, detector_id)
    for line in outputs["audit.jsonl"].splitlines():
        orjson.loads(line)


@pytest.mark.parametrize(("path", "query", "logged"), [
    (b"/v1/chat", None, b"/v1/chat"),
    (b"/v1/chat", b"", b"/v1/chat?"),
    (b"/s", b"a=1&b=2", b"/s?a=<redacted>&b=<redacted>"),
    (b"/s", b"key=sk-secret", b"/s?key=<redacted>"),
    (b"/s", b"flag&x=", b"/s?flag&x=<redacted>"),
    (b"/s", b"a=1=2&&b", b"/s?a=<redacted>&&b"),
    (b"/s", b"=v", b"/s?=<redacted>"),
    (b"/", b"q=a%26b&lang=en", b"/?q=<redacted>&lang=<redacted>"),
])
def test_logged_path_keeps_keys_and_redacts_query_values(path: bytes, query: bytes | None,
                                                           logged: bytes) -> None:
    assert logged_path(path, query) == logged
