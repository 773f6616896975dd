"""The leak censor through a real gateway: secrets split at every position across
upstream reads and SSE events come out redacted (or the response is withheld, per
mode), framing stays valid, SDK clients parse the streams, ordinary bodies pass
byte-identical; upstream error bodies are replaced unless exposed."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import orjson
import pytest

from tests.integration.conftest import (
    Gateway,
    MockUpstream,
    RawServer,
    cli_command,
    gateway_config,
    read_request,
)
from tests.log.test_detectors import POSITIVES
from tests.workers.test_censor import redacted

SECRETS = {kind: secrets[0] for kind, secrets in POSITIVES.items()}


class Script(RawServer):
    """An upstream that answers each request with ``head`` and then ``pieces``, each in
    its own write with a pause between them (so the gateway reads them separately)."""

    def __init__(self) -> None:
        self.head = b""
        self.pieces: list[bytes] = []
        self.pause = 0.002
        self.requests = 0
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = b""
        with conn:
            while (request := read_request(conn, pending)) is not None:
                pending = request[2]
                self.requests += 1
                try:
                    conn.sendall(self.head)
                    for piece in self.pieces:
                        time.sleep(self.pause)
                        conn.sendall(piece)
                except OSError:
                    return

    def chunked(self, content_type: bytes, pieces: list[bytes]) -> None:
        self.head = (b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type +
                     b"\r\ntransfer-encoding: chunked\r\n\r\n")
        self.pieces = [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p] + [b"0\r\n\r\n"]

    def framed(self, content_type: bytes, pieces: list[bytes]) -> None:
        self.head = (b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type +
                     b"\r\ncontent-length: %d\r\n\r\n" % sum(map(len, pieces)))
        self.pieces = [p for p in pieces if p]


@pytest.fixture
def script() -> Iterator[Script]:
    server = Script()
    yield server
    server.close()


CENSOR = '[leak_censor]\nenabled = true\n'


def _config(upstream: str, mode: str = "redact", extra: str = "") -> str:
    body = CENSOR + f'\n[defaults.leak_censor]\non_detect = "{mode}"\n' + extra
    return gateway_config(upstream, extra=body, workers=1)


def _chat_event(text: str) -> bytes:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
             "model": "m", "choices": [{"index": 0, "delta": {"content": text},
                                        "finish_reason": None}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _sse_text(body: bytes) -> str:
    """The chat text of a complete event stream, checking that every event parses."""
    assert body.endswith(b"\n\n")
    parts = []
    for event in body.split(b"\n\n")[:-1]:
        [line] = [x for x in event.split(b"\n") if x.startswith(b"data:")]
        payload = line[5:].strip()
        if payload == b"[DONE]":
            continue
        parts.append(orjson.loads(payload)["choices"][0]["delta"]["content"])
    return "".join(parts)


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_every_split_of_every_detector_through_the_gateway(
        start_gateway: Callable[..., Gateway], script: Script, kind: str) -> None:
    gateway = start_gateway(_config(script.origin))
    secret = SECRETS[kind]
    text = f"key: {secret} ok"
    assert f"[REDACTED:{kind}]" in redacted(text)
    raw = text.encode()
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as client:
        for i in range(1, len(text)):
            script.chunked(b"text/event-stream",
                           [_chat_event(text[:i]), _chat_event(text[i:]),
                            b"data: [DONE]\n\n"])
            response = client.post("/v1/chat/completions", json={"stream": True})
            assert response.status_code == 200
            assert _sse_text(response.content) == redacted(text, (i,)), i
        for i in range(1, len(raw)):
            script.chunked(b"text/plain", [raw[:i], raw[i:]])
            response = client.get("/plain")
            assert response.content == redacted(text, (i,)).encode(), i
        for i in range(1, len(raw), 7):
            j = min(len(raw), i + 5)
            script.framed(b"text/plain", [raw[:i], raw[i:j], raw[j:]])
            response = client.get("/framed")
            # A body whose pieces all arrived with the head is scrubbed whole and
            # re-framed (on a loaded box they can coalesce); one still arriving keeps
            # its Content-Length.
            if response.content != redacted(text).encode():
                assert len(response.content) == len(raw)  # Content-Length kept
            assert secret.encode() not in response.content
            assert re.match(rb"key: .{0,2}\[REDACTED", response.content)


def test_secrets_in_nested_json_and_sse_json_payloads(
        start_gateway: Callable[..., Gateway], script: Script) -> None:
    gateway = start_gateway(_config(script.origin))
    secret = SECRETS["github_token"]
    doc = {"data": {"items": [{"note": f"use {secret} here", "n": 1}]}, "ok": True}
    body = orjson.dumps(doc)
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as client:
        script.framed(b"application/json", [body[:20], body[20:]])
        response = client.get("/json")
        assert response.json() == {"data": {"items": [
            {"note": "use [REDACTED:github_token] here", "n": 1}]}, "ok": True}
        assert int(response.headers["content-length"]) == len(response.content)
        event = b"data: " + orjson.dumps({"type": "tool_result", "result": doc}) + b"\n\n"
        script.chunked(b"text/event-stream", [event[:30], event[30:]])
        response = client.get("/events")
        [line] = [x for x in response.content.split(b"\n") if x.startswith(b"data:")]
        assert orjson.loads(line[5:])["result"]["data"]["items"][0]["note"] == \
            "use [REDACTED:github_token] here"


FALSE_POSITIVES = [
    b"def ask_for_key(task):\n    return {'asia': 1, 'bearer': 'of news'}  # sk-ip\n",
    b"sha256 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824 "
    b"uuid 123e4567-e89b-12d3-a456-426614174000\n",
    b"data:image/png;base64," + b"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42"
    b"mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==" * 20,
    b"The bearer of this note lives in Asia. -----BEGIN PUBLIC KEY----- is fine.",
]


def test_ordinary_bodies_pass_byte_identical(start_gateway: Callable[..., Gateway],
                                             script: Script) -> None:
    gateway = start_gateway(_config(script.origin))
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as client:
        for body in FALSE_POSITIVES:
            for i in (1, len(body) // 2, len(body) - 1):
                script.chunked(b"text/plain", [body[:i], body[i:]])
                assert client.get("/p").content == body
                script.framed(b"text/plain", [body[:i], body[i:]])
                assert client.get("/p").content == body
        events = [_chat_event(w + " ") for w in b"".join(FALSE_POSITIVES).decode().split()]
        script.chunked(b"text/event-stream", [*events, b"data: [DONE]\n\n"])
        assert client.get("/s").content == b"".join(events) + b"data: [DONE]\n\n"


def test_block_502_and_abort_stream(start_gateway: Callable[..., Gateway],
                                    script: Script) -> None:
    secret = SECRETS["stripe_key"]
    gateway = start_gateway(_config(script.origin, "block_502"))
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as client:
        script.framed(b"application/json", [orjson.dumps({"k": f"x {secret}"})])
        response = client.get("/j")
        assert response.status_code == 502
        assert response.json()["error"]["message"] == "response withheld by the leak censor"
        assert secret.encode() not in response.content
        rid = response.headers["x-request-id"]
    record = gateway.audit_record(rid)
    assert record["outcome"] == "censored"
    assert record["censor"] == {"detectors": {"stripe_key": 1}, "paths": {}}
    gateway.stop()

    gateway = start_gateway(_config(script.origin, "abort_stream"), name="abort.toml")
    half = len(secret) // 2
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as client:
        script.chunked(b"text/event-stream",
                       [_chat_event("hello "), _chat_event(secret[:half]),
                        _chat_event(secret[half:] + " more"), b"data: [DONE]\n\n"])
        response = client.get("/s")
        assert response.status_code == 200
        body = response.content
        assert secret[:half].encode() not in body and b"[DONE]" not in body
        assert b"event: error" in body
        assert _sse_text(body.split(b"event: error")[0]) == "hello "


def test_openai_and_anthropic_sdks_read_redacted_streams(
        start_gateway: Callable[..., Gateway], mock: MockUpstream) -> None:
    gateway = start_gateway(_config(mock.origin))
    secret = SECRETS["openai_sk"]
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{gateway.port}/v1", api_key="x")
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_query={"body_secret": secret, "secret_split": "1"})
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert "[REDACTED:openai_sk]" in text and secret not in text
    claude = anthropic.Anthropic(base_url=f"http://127.0.0.1:{gateway.port}", api_key="x")
    with claude.messages.stream(model="m", max_tokens=64,
                                messages=[{"role": "user", "content": "hi"}],
                                extra_query={"body_secret": secret,
                                             "secret_split": "1"}) as events:
        text = "".join(events.text_stream)
    assert "[REDACTED:openai_sk]" in text and secret not in text
    whole = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}],
        extra_query={"body_secret": secret})
    assert "[REDACTED:openai_sk]" in (whole.choices[0].message.content or "")


def test_hits_are_counted_and_logged_without_the_secret(
        start_gateway: Callable[..., Gateway], script: Script) -> None:
    gateway = start_gateway(_config(script.origin))
    secret = SECRETS["aws_access_key"]
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as client:
        script.chunked(b"text/plain", [f"a {secret} b {secret} c".encode()])
        response = client.get("/p")
        assert response.content == b"a [REDACTED:aws_access_key] b [REDACTED:aws_access_key] c"
        rid = response.headers["x-request-id"]
    record = gateway.audit_record(rid)
    assert record["censor"] == {"detectors": {"aws_access_key": 2}, "paths": {}}
    deadline = time.monotonic() + 5
    log = ""
    while time.monotonic() < deadline:
        log = (gateway.log_dir / "error.log").read_text()
        if rid in log:
            break
        time.sleep(0.05)
    [line] = [x for x in log.splitlines() if rid in x]
    assert "leak censor redacted the response" in line and "detectors=aws_access_key" in line
    assert secret not in log


def test_censor_off_passes_secrets(start_gateway: Callable[..., Gateway],
                                   script: Script) -> None:
    gateway = start_gateway(gateway_config(script.origin, workers=1))
    secret = SECRETS["openai_sk"]
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as client:
        script.chunked(b"text/plain", [secret.encode()])
        assert client.get("/p").content == secret.encode()


def test_upstream_error_bodies_are_replaced_unless_exposed(
        start_gateway: Callable[..., Gateway], script: Script) -> None:
    leak = b'{"error": "db at 10.0.0.7 refused: password=hunter2", "trace": "..."}'
    script.head = (b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
                   b"retry-after: 7\r\nx-internal-host: db7\r\ncontent-length: %d\r\n\r\n"
                   % len(leak))
    script.pieces = [leak]
    hidden = gateway_config(script.origin, workers=1,
                            extra='[defaults.headers.response]\nallow = ["content-type", '
                                  '"x-internal-host"]\n').replace(
        'profile = "dev"', 'profile = "dev"\nexpose_upstream_errors = false')
    gateway = start_gateway(hidden)
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as client:
        for _ in range(2):  # the upstream connection goes back to the pool and is reused
            response = client.get("/x")
            assert response.status_code == 429
            assert response.headers["retry-after"] == "7"
            assert "x-internal-host" not in response.headers
            error = response.json()["error"]
            assert error["message"] == "upstream answered 429"
            assert error["type"] == "rate_limited"
            assert error["request_id"] == response.headers["x-request-id"]
            assert b"hunter2" not in response.content
    assert script.requests == 2 and script.connections == 1
    gateway.stop()
    exposed = start_gateway(gateway_config(script.origin, workers=1), name="dev.toml")
    with httpx.Client(base_url=f"http://127.0.0.1:{exposed.port}", timeout=10) as client:
        response = client.get("/x")
        assert response.status_code == 429 and response.content == leak


def _deny_config(upstream: str, extra: str = "") -> str:
    return _config(upstream, extra='json_deny_paths = ["$..password", "$.meta.api_key"]\n'
                   + extra)


def _users(count: int) -> dict[str, object]:
    return {"meta": {"api_key": "k-123", "page": 1},
            "users": [{"name": f"u{i}", "password": f"pw{i}", "bio": "x" * 40}
                      for i in range(count)]}


def _expect_redacted(doc: object, count: int) -> None:
    assert doc == {"meta": {"api_key": "[REDACTED]", "page": 1},
                   "users": [{"name": f"u{i}", "password": "[REDACTED]", "bio": "x" * 40}
                             for i in range(count)]}


def test_deny_paths_small_and_large_json_bodies(start_gateway: Callable[..., Gateway],
                                                script: Script) -> None:
    gateway = start_gateway(_deny_config(script.origin))
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as client:
        for count in (3, 2000):  # 2000 users: ~150 KB, rewritten in a worker process
            body = orjson.dumps(_users(count))
            script.framed(b"application/json", [body[:1000], body[1000:]])
            response = client.get("/users")
            assert int(response.headers["content-length"]) == len(response.content)
            _expect_redacted(response.json(), count)
            script.chunked(b"application/json; charset=utf-8", [body[:5], body[5:]])
            _expect_redacted(client.get("/users").json(), count)
            rid = response.headers["x-request-id"]
            assert gateway.audit_record(rid)["censor"]["paths"] == {
                "$..password": count, "$.meta.api_key": 1}


@pytest.mark.parametrize("policy", ["stream", "block", "pass"])
def test_json_over_max_scrub_bytes(start_gateway: Callable[..., Gateway], script: Script,
                                   policy: str) -> None:
    gateway = start_gateway(_deny_config(
        script.origin, f'max_scrub_bytes = "4k"\noversize_json = "{policy}"\n'))
    body = orjson.dumps(_users(400))  # ~30 KB
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as client:
        for frame in (script.framed, script.chunked):
            frame(b"application/json", [body[i:i + 3000] for i in range(0, len(body), 3000)])
            response = client.get("/users")
            if policy == "block":
                assert response.status_code == 502
                assert b"pw1" not in response.content
            elif policy == "stream":
                assert response.headers.get("transfer-encoding") == "chunked"
                _expect_redacted(response.json(), 400)
            else:
                assert response.content == body
    if policy == "stream":
        bad = b'{"users": [{"password": "p"}' + b" " * 6000 + b"garbage"
        script.framed(b"application/json", [bad])
        with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as client, \
                pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            client.get("/broken")


def test_generated_deny_paths_apply_with_include_generated(
        start_gateway: Callable[..., Gateway], script: Script, tmp_path: Path) -> None:
    data = Path(__file__).resolve().parents[1] / "censor" / "data"
    out = tmp_path / "leak_censor.generated.toml"
    subprocess.run(cli_command("setup-censor", "--sql", str(data / "migrations"), "--out",
                               str(out)), check=True, capture_output=True)
    paths = [line.split('"')[1] for line in out.read_text().splitlines()
             if line.strip().startswith('"$..')]
    assert "$..password_hash" in paths
    config = gateway_config(script.origin, workers=1, extra=(
        f'[leak_censor]\nenabled = true\ngenerated_file = "{out}"\n\n'
        '[defaults.leak_censor]\ninclude_generated = true\n'))
    gateway = start_gateway(config)
    body = orjson.dumps({"user": {"email": "a@b", "password_hash": "$argon2id$v=19$abc"}})
    script.framed(b"application/json", [body])
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as client:
        assert client.get("/u").json() == {"user": {"email": "a@b",
                                                    "password_hash": "[REDACTED]"}}


def test_review_regressions_through_the_gateway(start_gateway: Callable[..., Gateway],
                                                script: Script) -> None:
    import gzip

    secret = SECRETS["openai_sk"]
    gateway = start_gateway(_config(script.origin, extra=(
        '\n[defaults.headers.response]\n'
        'allow = ["content-type", "content-encoding", "location"]\n')))
    half = len(secret) // 2
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as client:
        # A compressed body cannot be read: withheld, never passed.
        packed = gzip.compress(orjson.dumps({"k": secret}))
        script.head = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                       b"content-encoding: gzip\r\ncontent-length: %d\r\n\r\n" % len(packed))
        script.pieces = [packed]
        response = client.get("/gz", headers={"accept-encoding": "gzip"})
        assert response.status_code == 502 and secret.encode() not in response.content
        # An event stream with a Content-Length, in pieces, in mixed case: read as events.
        for media in (b"text/event-stream", b"Text/Event-Stream; charset=utf-8"):
            events = [_chat_event("key " + secret[:half]), _chat_event(secret[half:] + " ok"),
                      b"data: [DONE]\n\n"]
            script.framed(media, events)
            response = client.get("/s")
            assert secret[half:].encode() not in response.content
            assert _sse_text(response.content) == "key [REDACTED:openai_sk] ok"
        # A header value with a key in it.
        script.head = (b"HTTP/1.1 302 Found\r\nlocation: https://x.example/cb?token=" +
                       secret.encode() + b"\r\ncontent-length: 0\r\n\r\n")
        script.pieces = []
        response = client.get("/redirect")
        assert secret not in response.headers["location"]
        assert "[REDACTED:openai_sk]" in response.headers["location"]
