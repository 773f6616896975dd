"""Fallback chains across pools, and the early event-stream head, through a real gateway.

The failing pools are scripted loopback servers (an answer chosen per test: a status, a
silent peer, an event stream cut after its first event); the pools that answer are
either scripted too (to record the exact request bytes they got) or the mock upstream.
Each test asserts what the client saw, what each pool received, and the audit record's
list of attempts.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import openai
import pytest

from .conftest import Gateway, MockUpstream, RawServer, read_request

BODY = (b'{ "messages" : [{"role":"user","content":"h\\u00e9llo \\"stream\\": true"}],\n'
        b'  "model":"m-1", "max_tokens": 7 }')
"""A body whose bytes (spacing, key order, escapes) must reach every pool unchanged."""


class Scripted(RawServer):
    """A pool peer that reads each request (head and Content-Length body), records it,
    and answers with ``answer``: raw response bytes, ``"silent"`` (never answers, holds
    the connection until the gateway closes it) or ``"cut"`` (an event-stream head and
    one event, then the connection closes)."""

    def __init__(self, answer: bytes | str) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self._lock = threading.Lock()
        super().__init__()

    def bodies(self) -> list[bytes]:
        with self._lock:
            return [request.partition(b"\r\n\r\n")[2] for request in self.requests]

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        pending = b""
        with conn:
            while (request := read_request(conn, pending)) is not None:
                head, body, pending = request
                with self._lock:
                    self.requests.append(head + b"\r\n\r\n" + body)
                try:
                    if self.answer == "silent":
                        conn.recv(65536)  # returns when the gateway gives up and closes
                        return
                    if self.answer == "cut":
                        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                                     b"transfer-encoding: chunked\r\n\r\n"
                                     b"d\r\ndata: first\n\n\r\n")
                        time.sleep(0.2)
                        return
                    assert isinstance(self.answer, bytes)
                    conn.sendall(self.answer)
                except OSError:
                    return


def _status(code: int, body: bytes = b'{"error":{"message":"busy"}}') -> bytes:
    return (b"HTTP/1.1 %d Status\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (code, len(body), body))


OK = _status(200, b'{"ok":true}')


@pytest.fixture
def scripted() -> Iterator[Callable[[bytes | str], Scripted]]:
    servers: list[Scripted] = []

    def make(answer: bytes | str) -> Scripted:
        servers.append(Scripted(answer))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(primary: str, backup: str, *, fallback: str = "", timeouts: str = "",
            extra_pool: str = "", buffering: bool = True) -> str:
    pools = (f'[upstreams.primary]\npeers = ["{primary}"]\nmax_fails = 0\n\n'
             f'[upstreams.backup]\npeers = ["{backup}"]\n\n{extra_pool}')
    routes = ('[[route]]\nname = "chat"\npriority = 1\n'
              'match.path = { type = "prefix", value = "/v1/" }\nproxy = "primary"\n'
              f'request_buffering = {str(buffering).lower()}\n\n'
              f'[route.fallback]\nchain = ["backup"]\n{fallback}\n'
              f'[route.timeouts]\n{timeouts}\n')
    return (f'[server]\nlisten = "127.0.0.1:0"\nprofile = "dev"\nworkers = 1\n'
            f'shutdown_timeout = "5s"\n\n{pools}\n{routes}')


def _attempts(record: dict[str, object]) -> list[tuple[str, str | None]]:
    attempts = record["attempts"]
    assert isinstance(attempts, list)
    return [(a["pool"], a["failure"]) for a in attempts]


def _post(gateway: Gateway, request_id: str, body: bytes = BODY,
          **headers: str) -> tuple[int, bytes, float]:
    started = time.monotonic()
    with gateway.client() as client:
        response = client.post("/v1/chat/completions", content=body,
                               headers={"content-type": "application/json",
                                        "x-request-id": request_id, **headers})
    return response.status_code, response.content, time.monotonic() - started


@pytest.mark.parametrize(("answer", "failure"), [
    (_status(503), "status_503"),
    (_status(429), "status_429"),
    ("silent", "ttfb_timeout"),
])
def test_falls_back_to_the_next_pool_with_the_same_bytes(
        answer: bytes | str, failure: str, scripted: Callable[[bytes | str], Scripted],
        start_gateway: Callable[..., Gateway]) -> None:
    primary, backup = scripted(answer), scripted(OK)
    gateway = start_gateway(_config(primary.origin, backup.origin,
                                    timeouts='ttfb_timeout = "1s"\n'))
    status, content, took = _post(gateway, f"fb-{failure}")
    assert (status, content) == (200, b'{"ok":true}')
    assert primary.bodies() == [BODY] and backup.bodies() == [BODY]  # byte for byte
    record = gateway.audit_record(f"fb-{failure}")
    assert _attempts(record) == [("primary", failure), ("backup", None)]
    assert record["status"] == 200 and record["outcome"] == "completed"
    assert record["peer"] == f"127.0.0.1:{backup.port}"
    if failure == "ttfb_timeout":
        assert 1.0 <= took < 5.0  # one first-byte timeout, then the backup at once
    error_log = (gateway.log_dir / "error.log").read_text()
    assert "falling back to the next pool" in error_log and f"after={failure}" in error_log


def test_falls_back_on_a_refused_connection_and_on_a_pool_that_is_down(
        scripted: Callable[[bytes | str], Scripted],
        start_gateway: Callable[..., Gateway]) -> None:
    backup = scripted(OK)
    refused = f"http://127.0.0.1:{_closed_port()}"
    config = _config(refused, backup.origin).replace(
        "max_fails = 0", 'max_fails = 1\nfail_timeout = "30s"')
    gateway = start_gateway(config)
    assert _post(gateway, "refused")[:2] == (200, b'{"ok":true}')
    assert _attempts(gateway.audit_record("refused")) == [("primary", "connect"), ("backup", None)]
    # The refusal marked the only peer down: the next request skips the pool at once.
    assert _post(gateway, "down")[:2] == (200, b'{"ok":true}')
    assert _attempts(gateway.audit_record("down")) == [("primary", "down"), ("backup", None)]
    assert backup.bodies() == [BODY, BODY]


def test_without_a_matching_failure_the_first_answer_stands(
        scripted: Callable[[bytes | str], Scripted],
        start_gateway: Callable[..., Gateway]) -> None:
    primary, backup = scripted(_status(500)), scripted(OK)
    gateway = start_gateway(_config(primary.origin, backup.origin,
                                    fallback="statuses = [503]\n"))
    status, content, _ = _post(gateway, "no-match")
    assert status == 500 and b"busy" in content
    assert backup.bodies() == []
    assert gateway.audit_record("no-match")["attempts"] is None


def test_a_streamed_body_is_never_replayed(scripted: Callable[[bytes | str], Scripted],
                                           start_gateway: Callable[..., Gateway]) -> None:
    primary, backup = scripted(_status(503)), scripted(OK)
    gateway = start_gateway(_config(primary.origin, backup.origin, buffering=False))
    big = b'{"model":"m-1","input":"' + b"x" * (200 * 1024) + b'"}'
    status, _, _ = _post(gateway, "streamed", big)
    assert status == 503  # the primary's own answer: the body cannot be sent twice
    assert primary.bodies() == [big] and backup.bodies() == []


def test_never_after_the_first_byte(scripted: Callable[[bytes | str], Scripted],
                                    start_gateway: Callable[..., Gateway]) -> None:
    primary, backup = scripted("cut"), scripted(OK)
    gateway = start_gateway(_config(primary.origin, backup.origin,
                                    fallback='on = ["connect", "status", "reset"]\n'))
    status, content, _ = _post(gateway, "cut")
    assert status == 200
    assert content.startswith(b"data: first\n\n")
    assert b"event: error\n" in content and b'"code":502' in content
    assert backup.bodies() == []
    record = gateway.audit_record("cut")
    assert record["outcome"] == "upstream_cut" and record["attempts"] is None


# -- the early event-stream head ------------------------------------------------------------


def _stream_config(primary: str, backup: str, **kwargs: str) -> str:
    timeouts = ('early_stream_head = true\nheartbeat_interval = "1s"\n'
                + kwargs.pop("timeouts", 'ttfb_timeout = "10s"\n'))
    return _config(primary, backup, timeouts=timeouts, **kwargs)


def _timed_stream(gateway: Gateway, path: str, body: bytes
                  ) -> tuple[bytes, list[tuple[float, bytes]]]:
    """POST and read the raw response to its end: the head, and each later piece with
    its arrival time."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=20) as sock:
        started = time.monotonic()
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                     b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                     % (path.encode(), len(body), body))
        received = b""
        pieces: list[tuple[float, bytes]] = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received += data
            pieces.append((time.monotonic() - started, data))
    return received, pieces


STREAM = b'{"model":"mock-chat","stream":true,"messages":[]}'


def test_early_head_sends_heartbeats_until_the_first_token(
        mock: MockUpstream, scripted: Callable[[bytes | str], Scripted],
        start_gateway: Callable[..., Gateway]) -> None:
    gateway = start_gateway(_stream_config(mock.origin, scripted(OK).origin))
    received, pieces = _timed_stream(
        gateway, "/v1/chat/completions?ttfb_ms=2600&tokens=2", STREAM)
    head = received.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
    assert pieces[0][0] < 0.5  # the head went out before the upstream answered
    beats = [at for at, piece in pieces if b": heartbeat" in piece]
    assert len(beats) >= 2 and beats[0] < 1.6
    body = received.partition(b"\r\n\r\n")[2]
    assert body.index(b": heartbeat") < body.index(b"data: {")
    assert body.endswith(b"0\r\n\r\n") and b"data: [DONE]" in body


def test_early_head_turns_an_upstream_error_into_the_error_event(
        scripted: Callable[[bytes | str], Scripted],
        start_gateway: Callable[..., Gateway]) -> None:
    primary, backup = scripted(_status(429)), scripted(OK)
    gateway = start_gateway(_stream_config(primary.origin, backup.origin,
                                           fallback="on = [\"connect\"]\n"))
    received, _ = _timed_stream(gateway, "/v1/chat/completions", STREAM)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"event: error\n" in body and b'"code":429' in body
    assert body.endswith(b"0\r\n\r\n")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{gateway.port}/v1", api_key="k",
                           max_retries=0)
    with pytest.raises(openai.APIError) as caught:
        for _ in client.chat.completions.create(model="mock-chat", messages=[],
                                                stream=True):
            pass
    assert "429" in str(caught.value)


def test_early_head_falls_back_while_it_beats(
        mock: MockUpstream, scripted: Callable[[bytes | str], Scripted],
        start_gateway: Callable[..., Gateway]) -> None:
    primary = scripted("silent")
    gateway = start_gateway(_stream_config(primary.origin, mock.origin,
                                           timeouts='ttfb_timeout = "2500ms"\n'))
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{gateway.port}/v1", api_key="k",
                           max_retries=0)
    chunks = list(client.chat.completions.create(model="mock-chat", messages=[],
                                                 stream=True,
                                                 extra_query={"tokens": "3"}))
    assert len(chunks) >= 3
    assert len(primary.bodies()) == 1


def test_early_head_leaves_other_requests_alone(
        mock: MockUpstream, scripted: Callable[[bytes | str], Scripted],
        start_gateway: Callable[..., Gateway]) -> None:
    gateway = start_gateway(_stream_config(mock.origin, scripted(OK).origin))
    received, _ = _timed_stream(gateway, "/v1/chat/completions",
                                b'{"model":"mock-chat","messages":[]}')
    head = received.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 200") and b"application/json" in head
