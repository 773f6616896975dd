"""The data plane through real processes: `li-httpd start` in front of the mock upstream.

Every test talks to the gateway with a real client (the OpenAI SDK, httpx, raw sockets)
and checks what the upstream saw through the mock's /echo and /stats endpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from .conftest import MockUpstream, gateway_config, raw_exchange

pytestmark = pytest.mark.integration


def _sse_events(response: httpx.Response) -> list[tuple[float, str]]:
    """(arrival time, data) for each SSE event of a streamed response."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            events.append((time.time(), line[6:]))
    return events


def test_openai_sdk_chat_and_streamed_chat(mock: MockUpstream, start_gateway) -> None:
    gateway = start_gateway(gateway_config(mock.origin))
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-test-not-real",
                           max_retries=0)
    completion = client.chat.completions.create(
        model="mock-chat", messages=[{"role": "user", "content": "hello"}])
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.total_tokens > 0

    stream = client.chat.completions.create(
        model="mock-chat", messages=[{"role": "user", "content": "hello"}], stream=True,
        extra_query={"tokens": "5", "delay_ms": "20"})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None


def test_first_sse_event_arrives_while_upstream_still_streams(mock: MockUpstream,
                                                               start_gateway) -> None:
    gateway = start_gateway(gateway_config(mock.origin))
    body = {"model": "mock-chat", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    with gateway.client() as client, client.stream(
            "POST", "/v1/chat/completions?tokens=6&delay_ms=150", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers.get("transfer-encoding") == "chunked"
        events = _sse_events(response)
    payloads = [json.loads(data) for _, data in events if data != "[DONE]"]
    first_arrival = events[0][0]
    last_sent = max(p["x_mock_sent_at"] for p in payloads)
    # The first event reached the client before the upstream produced its last one.
    assert first_arrival < last_sent - 0.3
    assert events[-1][1] == "[DONE]"


def test_client_disconnect_closes_upstream_within_a_second(mock: MockUpstream,
                                                           start_gateway) -> None:
    gateway = start_gateway(gateway_config(mock.origin))
    before = mock.stats()
    payload = json.dumps({"model": "m", "stream": True,
                          "messages": [{"role": "user", "content": "x"}]}).encode()
    request = (b"POST /v1/chat/completions?stall_after=2 HTTP/1.1\r\nHost: t\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
               % (len(payload), payload))
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.sendall(request)
    received = b""
    while received.count(b"data: ") < 2:
        data = sock.recv(65536)
        assert data
        received += data
    assert mock.stats()["streams_aborted_by_client"] == before["streams_aborted_by_client"]
    closed_at = time.monotonic()
    sock.close()
    while mock.stats()["streams_aborted_by_client"] == before["streams_aborted_by_client"]:
        assert time.monotonic() - closed_at < 1.0, "upstream still streaming after 1 s"
        time.sleep(0.02)


def test_header_policy_drops_requires_and_injects(mock: MockUpstream, start_gateway) -> None:
    extra = """
[[route]]
name = "echo"
priority = 5
match.path = { type = "exact", value = "/echo" }
proxy = "main"
[route.headers.ingress]
allow = ["content-type", "traceparent", "x-agent-id", "x-model", "authorization",
         "x-request-id"]
require = ["traceparent"]
[route.headers.egress]
allow = ["content-type", "traceparent", "x-model"]
inject = { "via" = "li-httpd/1", "x-tenant" = "blue" }
[route.headers.response]
allow = ["content-type"]

[[route]]
name = "health"
priority = 10
match.methods = ["GET"]
match.path = { type = "exact", value = "/health" }
static = "healthcheck"
"""
    config = gateway_config(mock.origin, routes=None).split("[routes]")[0] + extra
    gateway = start_gateway(config)
    with gateway.client() as client:
        missing = client.get("/echo")
        assert missing.status_code == 400
        assert "traceparent" in missing.json()["error"]["message"]
        response = client.get("/echo", headers={
            "traceparent": "00-abc-def-01", "x-model": "gpt", "x-agent-id": "agent-7",
            "authorization": "Bearer sk-secret", "x-upstream-host": "evil",
            "x-route-override": "1", "cookie": "a=b", "x-request-id": "client-id-1",
            "connection": "x-model"})
    assert response.status_code == 200
    seen = {name.lower(): value for name, value in response.json()["headers"]}
    assert seen["traceparent"] == "00-abc-def-01"
    assert seen["via"] == "li-httpd/1" and seen["x-tenant"] == "blue"
    for dropped in ("x-agent-id", "authorization", "x-upstream-host", "x-route-override",
                    "cookie", "x-model"):  # x-model: named by the client's Connection header
        assert dropped not in seen, dropped
    assert seen["x-request-id"] == "client-id-1"
    assert response.headers["x-request-id"] == "client-id-1"
    # Response allowlist: the mock's x-mock-* headers do not reach the client.
    assert not [h for h in response.headers if h.startswith("x-mock")]


def test_default_policy_assigns_request_id_and_strips_hop_by_hop(
        mock: MockUpstream, start_gateway) -> None:
    gateway = start_gateway(gateway_config(mock.origin))
    with gateway.client() as client:
        response = client.get("/echo", headers={"te": "trailers", "upgrade": "websocket",
                                                "proxy-authorization": "x", "keep-alive": "5",
                                                "x-request-id": "bad id with spaces"})
    seen = {name.lower(): value for name, value in response.json()["headers"]}
    for hop in ("te", "upgrade", "proxy-authorization", "keep-alive", "connection"):
        assert hop not in seen
    assert seen["x-request-id"] == response.headers["x-request-id"] != "bad id with spaces"
    assert seen["host"] == mock.url.removeprefix("http://")


def test_underscore_lookalikes_never_reach_the_upstream(mock: MockUpstream,
                                                        start_gateway) -> None:
    """Many upstream frameworks map ``-`` and ``_`` in header names to the same variable
    (``X_Request_Id`` and ``X-Request-Id`` both become ``HTTP_X_REQUEST_ID``). Allowlists
    compare names byte for byte, so a lookalike of an allowed or gateway-set header is
    just another unlisted name: dropped, and the gateway's own value stands."""
    gateway = start_gateway(gateway_config(mock.origin))
    reply = raw_exchange(gateway.port, b"GET /echo HTTP/1.1\r\nHost: a\r\n"
                         b"X_Request_Id: forged-id\r\nx_model: forged\r\n"
                         b"Content_Type: forged/type\r\nAuthorization_: Bearer forged\r\n"
                         b"Connection: close\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), reply
    seen = {name.lower(): value for name, value in json.loads(body)["headers"]}
    assert not [name for name in seen if "_" in name], seen
    assert "forged" not in json.dumps(seen)
    assert seen["x-request-id"].encode() in head


def test_routing_errors_are_json(mock: MockUpstream, start_gateway) -> None:
    routes = '"GET /health" = "static:healthcheck"\n"POST /v1/*" = "proxy:main"\n'
    gateway = start_gateway(gateway_config(mock.origin, routes=routes))
    with gateway.client() as client:
        not_found = client.get("/nowhere")
        wrong_method = client.get("/v1/models")
        bad_path = client.get("/v1/%2e%2e/secret")
    assert not_found.status_code == 404
    assert not_found.json()["error"]["request_id"] == not_found.headers["x-request-id"]
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert bad_path.status_code == 400


def test_a_repeated_header_cannot_choose_the_route(mock: MockUpstream, start_gateway) -> None:
    """Routing reads x-tier; the upstream and the log would read its first value. Two
    values are a 400 before routing, so no reader can see a value the others do not."""
    routes = ('"GET /small x-tier=gold" = "proxy:main"\n'
              '"GET /health" = "static:healthcheck"\n')
    gateway = start_gateway(gateway_config(mock.origin, routes=routes))
    gold = raw_exchange(gateway.port, b"GET /small HTTP/1.1\r\nHost: x\r\nx-tier: gold\r\n"
                                      b"Connection: close\r\n\r\n")
    assert gold.startswith(b"HTTP/1.1 200"), gold
    for values in ((b"free", b"gold"), (b"gold", b"free")):
        reply = raw_exchange(gateway.port, b"GET /small HTTP/1.1\r\nHost: x\r\n"
                             b"x-tier: %s\r\nx-tier: %s\r\n\r\n" % values)
        assert reply.startswith(b"HTTP/1.1 400"), reply
        assert b"repeated x-tier header" in reply
    for name in (b"x-model", b"x-agent-id"):
        reply = raw_exchange(gateway.port, b"GET /health HTTP/1.1\r\nHost: x\r\n"
                             b"%s: a\r\n%s: b\r\n\r\n" % (name, name))
        assert reply.startswith(b"HTTP/1.1 400"), reply


def test_keepalive_pipelining_and_http10(mock: MockUpstream, start_gateway) -> None:
    gateway = start_gateway(gateway_config(mock.origin))
    pipelined = (b"GET /small HTTP/1.1\r\nHost: a\r\n\r\n"
                 b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n"
                 b"GET /small HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    reply = raw_exchange(gateway.port, pipelined)
    assert reply.count(b"HTTP/1.1 200 OK") == 3
    assert reply.index(b"Hello, world!") < reply.index(b'{"status":"ok"}')
    http10 = raw_exchange(gateway.port, b"GET /small HTTP/1.0\r\n\r\n")
    assert http10.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in http10
    assert http10.endswith(b"Hello, world!\n")
    keep10 = raw_exchange(gateway.port, b"GET /small HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                                        b"GET /small HTTP/1.0\r\n\r\n")
    assert keep10.count(b"Hello, world!") == 2


def _read_until_closed(sock: socket.socket) -> tuple[bytes, str]:
    """Everything the server sends, and how the connection ended."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                received += chunk
        return received, "reset"
    return received, "end of stream"


def test_closing_at_keepalive_requests_lingers_for_pipelined_requests(
        mock: MockUpstream, start_gateway) -> None:
    """A client pipelines far more requests than ``keepalive_requests`` allows: it gets
    that many answers, the last with ``Connection: close``, and then a clean end of
    stream (FIN) rather than a reset, so the answers it has not read yet survive (the
    gateway half-closes and discards what is still arriving: a lingering close)."""
    gateway = start_gateway(gateway_config(
        mock.origin, extra="[limits]\nkeepalive_requests = 3\n", workers=1))
    request = b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        # 330 kB: far more than the gateway reads before it has its three requests.
        sock.sendall(request * 10_000)
        received, ended = _read_until_closed(sock)
    assert received.count(b"HTTP/1.1 200 OK") == 3
    assert b"connection: close" in received.rpartition(b"HTTP/1.1 200 OK")[2].lower()
    assert ended == "end of stream"


def test_a_413_while_the_body_is_still_arriving_ends_with_a_clean_close(
        mock: MockUpstream, start_gateway) -> None:
    """The body is refused from its Content-Length while the client is still sending it:
    the client reads the 413 and a clean end of stream, not a reset."""
    gateway = start_gateway(gateway_config(
        mock.origin, extra='[limits]\nmax_body = "1k"\n', workers=1))
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: 400000\r\n\r\n")
        sock.sendall(b"x" * 400_000)
        received, ended = _read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 413 ")
    assert ended == "end of stream"


def test_a_client_that_keeps_sending_is_cut_off_after_the_lingering_time(
        mock: MockUpstream, start_gateway) -> None:
    """Lingering is bounded: a client that never stops sending after its refused request
    loses the connection (reset) once the lingering time is over."""
    from li_httpd.workers.sockio import LINGER_TOTAL
    gateway = start_gateway(gateway_config(
        mock.origin, extra='[limits]\nmax_body = "1k"\n', workers=1))
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: 900000000\r\n\r\n")
        started = time.monotonic()
        with contextlib.suppress(OSError):
            while time.monotonic() - started < 3 * LINGER_TOTAL:
                sock.sendall(b"x" * 4096)
                time.sleep(0.01)
        elapsed = time.monotonic() - started
    assert elapsed < 3 * LINGER_TOTAL, "the gateway kept reading past its lingering time"


def test_http10_client_gets_close_delimited_stream(mock: MockUpstream, start_gateway) -> None:
    gateway = start_gateway(gateway_config(mock.origin))
    payload = b'{"model":"m","stream":true,"messages":[]}'
    reply = raw_exchange(gateway.port, b"POST /v1/chat/completions?tokens=3&delay_ms=20 "
                         b"HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head and b"connection: close" in head
    assert body.rstrip().endswith(b"data: [DONE]")


def test_expect_continue_and_chunked_upload(mock: MockUpstream, start_gateway) -> None:
    gateway = start_gateway(gateway_config(mock.origin))
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        interim = sock.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        final = sock.recv(65536)
    assert final.startswith(b"HTTP/1.1 200")
    echoed = json.loads(final.partition(b"\r\n\r\n")[2])
    assert echoed["body_bytes"] == 5
    big = os.urandom(300_000)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(big[i:i + 70_000]), big[i:i + 70_000])
                      for i in range(0, len(big), 70_000)) + b"0\r\n\r\n"
    reply = raw_exchange(gateway.port, b"POST /echo HTTP/1.1\r\nHost: a\r\nConnection: close"
                         b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    echoed = json.loads(reply.partition(b"\r\n\r\n")[2])
    assert echoed["body_bytes"] == len(big)
    assert echoed["body_sha256"] == hashlib.sha256(big).hexdigest()


def test_body_limit_and_large_download(mock: MockUpstream, start_gateway) -> None:
    gateway = start_gateway(gateway_config(mock.origin, extra='[limits]\nmax_body = "1k"\n'))
    reply = raw_exchange(gateway.port, b"POST /echo HTTP/1.1\r\nHost: a\r\n"
                         b"Content-Length: 2000\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 413")
    with gateway.client() as client:
        big = client.get("/bytes", params={"n": str(5 * 1024 * 1024)})
    assert big.status_code == 200 and len(big.content) == 5 * 1024 * 1024


def test_timeouts(mock: MockUpstream, start_gateway) -> None:
    extra = ('[limits]\nheader_timeout = "300ms"\n\n[defaults.timeouts]\n'
             'ttfb_timeout = "1s"\nstream_idle_timeout = "1s"\nheartbeat_interval = 0\n')
    gateway = start_gateway(gateway_config(mock.origin, extra=extra))
    started = time.monotonic()
    reply = raw_exchange(gateway.port, b"GET /small HTTP/1.1\r\nHost: a\r\n")
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert time.monotonic() - started < 3
    with gateway.client() as client:
        slow = client.get("/small", params={"ttfb_ms": "3000"})
    assert slow.status_code == 504
    payload = json.dumps({"model": "m", "stream": True, "messages": []})
    with gateway.client() as client, client.stream(
            "POST", "/v1/chat/completions?stall_after=2", content=payload,
            headers={"content-type": "application/json"}) as response:
        events = [data for _, data in _sse_events(response)]
    # The stall detector ends the stream with an error event the OpenAI SDK understands.
    assert len(events) == 3
    assert json.loads(events[-1])["error"]["code"] == 504


def test_failover_to_a_live_peer(mock: MockUpstream, start_gateway) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there: connect is refused
    upstreams = (f'[upstreams.main]\npeers = ["http://127.0.0.1:{dead_port}", '
                 f'"{mock.origin}"]\nmax_retries = 1\n')
    gateway = start_gateway(gateway_config(mock.origin, upstreams=upstreams))
    with gateway.client() as client:
        statuses = [client.get("/small").status_code for _ in range(10)]
    assert statuses == [200] * 10


def test_static_files(mock: MockUpstream, start_gateway, tmp_path: Path) -> None:
    root = tmp_path / "site"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "index.html").write_text("<h1>docs</h1>")
    (root / "data.json").write_bytes(b'{"k": 1}' * 5000)
    (root / ".env").write_text("SECRET=1")
    outside = tmp_path / "outside.txt"
    outside.write_text("outside the root")
    (root / "escape.txt").symlink_to(outside)
    config = gateway_config(mock.origin, routes='"GET /files/**" = "static:site"\n',
                            extra=f'[static.site]\nroot = "{root.resolve()}"\n')
    gateway = start_gateway(config)
    with gateway.client() as client:
        whole = client.get("/files/data.json")
        assert whole.status_code == 200 and len(whole.content) == 40000
        assert whole.headers["content-type"] == "application/json"
        etag = whole.headers["etag"]
        assert client.get("/files/data.json", headers={"if-none-match": etag}).status_code == 304
        ranged = client.get("/files/data.json", headers={"range": "bytes=10-19"})
        assert ranged.status_code == 206 and ranged.content == whole.content[10:20]
        assert ranged.headers["content-range"] == "bytes 10-19/40000"
        assert client.get("/files/data.json",
                          headers={"range": "bytes=50000-"}).status_code == 416
        huge = client.get("/files/data.json", headers={"range": "bytes=0-" + "9" * 5000})
        assert huge.status_code == 206 and len(huge.content) == 40000
        stale = client.get("/files/data.json", headers={"if-match": '"deadbeef-1"',
                                                         "range": "bytes=0-9"})
        assert stale.status_code == 412 and stale.content == b""
        assert client.get("/files/data.json", headers={"if-match": etag}).status_code == 200
        assert client.get("/files/docs/").text == "<h1>docs</h1>"
        redirect = client.get("/files/docs")
        assert redirect.status_code == 301 and redirect.headers["location"] == "/files/docs/"
        for probe in ("/files/escape.txt", "/files/.env", "/files/docs/../../outside.txt",
                      "/files/%2e%2e/outside.txt", "/files/..%2foutside.txt",
                      "/files/docs%2f..%2f..%2foutside.txt", "/files/nope"):
            answer = client.get(probe)
            assert answer.status_code in (400, 404), probe
            assert b"outside the root" not in answer.content
        head = client.head("/files/data.json")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == "40000"


def test_a_client_that_stops_reading_is_dropped_after_send_timeout(
        mock: MockUpstream, start_gateway, tmp_path: Path) -> None:
    """A slow-read client asks for a large file and never reads: once a write has been
    blocked for ``send_timeout`` the gateway closes the connection instead of holding
    it (and the file) open for as long as the client likes."""
    root = tmp_path / "site"
    root.mkdir()
    size = 32 * 1024 * 1024
    (root / "big.bin").write_bytes(b"z" * size)
    config = gateway_config(mock.origin, routes='"GET /files/**" = "static:site"\n',
                            extra=f'[static.site]\nroot = "{root.resolve()}"\n'
                                  '[limits]\nsend_timeout = "300ms"\n', workers=1)
    gateway = start_gateway(config)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", gateway.port))
        sock.sendall(b"GET /files/big.bin HTTP/1.1\r\nHost: a\r\n\r\n")
        time.sleep(2.0)  # never reading: the gateway's writes block, then time out
        received = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
    assert 0 < received < size


def test_sigterm_lets_a_live_stream_finish(mock: MockUpstream, start_gateway) -> None:
    gateway = start_gateway(gateway_config(mock.origin))
    payload = json.dumps({"model": "m", "stream": True, "messages": []})
    received: list[str] = []

    def consume() -> None:
        with httpx.Client(base_url=gateway.url, timeout=20) as client, client.stream(
                "POST", "/v1/chat/completions?tokens=10&delay_ms=150", content=payload,
                headers={"content-type": "application/json"}) as response:
            received.extend(data for _, data in _sse_events(response))

    thread = threading.Thread(target=consume)
    thread.start()
    time.sleep(0.5)
    gateway.signal(signal.SIGTERM)
    thread.join(20)
    assert received and received[-1] == "[DONE]"
    assert gateway.wait(20) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{gateway.url}/health", timeout=2)


def test_worker_killed_is_respawned(mock: MockUpstream, start_gateway) -> None:
    gateway = start_gateway(gateway_config(mock.origin))
    workers = gateway.workers()
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    give_up = time.monotonic() + 10
    while True:
        current = gateway.workers()
        if len(current) == 2 and workers[0] not in current:
            break
        assert time.monotonic() < give_up, "worker not respawned"
        time.sleep(0.05)
    with gateway.client() as client:
        assert all(client.get("/small", headers={"connection": "close"}).status_code == 200
                   for _ in range(20))
    assert "killed by SIGKILL" in gateway.output.text()


def test_sigquit_stops_at_once(mock: MockUpstream, start_gateway) -> None:
    gateway = start_gateway(gateway_config(mock.origin))
    gateway.signal(signal.SIGQUIT)
    assert gateway.wait(10) == 0


def test_config_and_bind_errors_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nlisten = "0.0.0.0:8080"\n')
    result = subprocess.run([sys.executable, "-m", "li_httpd.supervisor.cli", "start", "-c",
                             str(bad)], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1 and "public_tls" not in result.stderr
    assert f"{bad}:2: server.listen:" in result.stderr
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    busy = tmp_path / "busy.toml"
    busy.write_text(f'[server]\nlisten = "127.0.0.1:{holder.getsockname()[1]}"\n'
                    f'profile = "dev"\n[log]\ndir = "{tmp_path}/logs"\n'
                    '[routes]\n"GET /health" = "static:healthcheck"\n')
    result = subprocess.run([sys.executable, "-m", "li_httpd.supervisor.cli", "start", "-c",
                             str(busy)], capture_output=True, text=True, timeout=30, check=False)
    holder.close()
    assert result.returncode == 2 and "cannot listen" in result.stderr
