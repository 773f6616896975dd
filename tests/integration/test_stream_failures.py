"""How a relayed stream fails, through a real ``li-httpd start`` and a hostile upstream.

The upstream (:class:`_HostileSse`) answers every request with a scripted response: a
head, body pieces a moment apart, then a stall, a close or a reset. The client is a raw
socket (to see the exact bytes and framing) or the official OpenAI SDK.

The contract: an SSE stream that fails after its head carries exactly the events that
arrived whole, then one ``event: error`` whose data is the gateway's JSON error, then
the terminal chunk (or, to an HTTP/1.0 client, the close); the OpenAI SDK raises an
``APIError`` with the gateway's message for it. Other bodies cut short end without their
terminal chunk or before their Content-Length, so the client can tell.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import openai
import pytest

from .conftest import Gateway, RawServer, gateway_config

EVENT_1 = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",' \
          b'"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}\n\n'
HALF_EVENT = b'data: {"id":"c2","object":"chat.completion.chunk","created":1,"mod'
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
TIMERS = '[defaults.timeouts]\nstream_idle_timeout = "1s"\nheartbeat_interval = 0\n'
HEARTBEATS = '[defaults.timeouts]\nstream_idle_timeout = "1s"\nheartbeat_interval = "300ms"\n'
"""The same timers with SSE heartbeats, several of them within the idle timeout."""


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _HostileSse(RawServer):
    """Reads one request per connection, sends ``head`` then each of ``pieces`` 0.2 s
    apart, then ends as ``end`` says: ``stall`` (silence, connection held), ``close``
    or ``reset``."""

    def __init__(self, head: bytes, pieces: list[bytes], end: str) -> None:
        self.head, self.pieces, self.end = head, pieces, end
        self.release = threading.Event()
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            request = b""
            while b"\r\n\r\n" not in request:
                data = conn.recv(65536)
                if not data:
                    return
                request += data
            try:
                conn.sendall(self.head)
                for piece in self.pieces:
                    time.sleep(0.2)
                    conn.sendall(piece)
                time.sleep(0.2)
                if self.end == "stall":
                    self.release.wait(30)
                elif self.end == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            except OSError:
                return

    def close(self) -> None:
        self.release.set()
        super().close()


@pytest.fixture
def hostile() -> Iterator[Callable[..., _HostileSse]]:
    made: list[_HostileSse] = []

    def make(head: bytes, pieces: list[bytes], end: str) -> _HostileSse:
        upstream = _HostileSse(head, pieces, end)
        made.append(upstream)
        return upstream

    yield make
    for upstream in made:
        upstream.close()


def _gateway(start_gateway: Callable[..., Gateway], upstream: _HostileSse,
             extra: str = TIMERS) -> Gateway:
    # The pool's read_timeout bounds a Content-Length body's gaps (streams: the timers).
    pools = f'[upstreams.main]\npeers = ["{upstream.origin}"]\nread_timeout = "1s"\n'
    return start_gateway(gateway_config(upstream.origin, workers=1, extra=extra,
                                        upstreams=pools))


def _exchange(gateway: Gateway, version: bytes = b"1.1",
              timeout: float = 10.0) -> tuple[bytes, dict[bytes, bytes], bytes, bool]:
    """One POST on a raw connection, read until the gateway closes the connection or
    ends a chunked body: (status line, headers, raw body bytes, closed)."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=timeout) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/" + version +
                     b"\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 15\r\n\r\n{\"stream\":true}")
        received = b""
        closed = False
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                closed = True
                break
            received += data
            if b"\r\n\r\n" in received and received.endswith(b"\r\n0\r\n\r\n"):
                break
    head, _, body = received.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}
    return status, headers, body, closed


def _dechunk(body: bytes) -> tuple[bytes, bool]:
    """The data of a chunked body and whether it ended with its terminal chunk."""
    data = b""
    while body:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            return data, False
        size = int(size_line, 16)
        if size == 0:
            return data, rest == b"\r\n"
        if len(rest) < size + 2:
            return data + rest[:size], False
        data += rest[:size]
        body = rest[size + 2:]
    return data, False


def _error_event(data: bytes, request_id: bytes) -> dict[str, object]:
    """Splits off the one terminal error event; checks it and returns its error."""
    before, marker, event = data.rpartition(b"event: error\ndata: ")
    assert marker, data
    assert before.count(b"event: error") == 0
    assert event.endswith(b"\n\n") and event.count(b"\n") == 2, event
    error: dict[str, object] = json.loads(event)["error"]
    assert error["request_id"] == request_id.decode()
    return error


@pytest.mark.parametrize("timers", [TIMERS, HEARTBEATS], ids=["plain", "heartbeats"])
def test_a_stall_mid_event_drops_the_half_event_then_sends_one_error_event(
        timers: str, hostile: Callable[..., _HostileSse],
        start_gateway: Callable[..., Gateway]) -> None:
    """With heartbeats, the held half event does not stop them (the client stands
    between events); they never split an event, and the half event is still dropped."""
    upstream = hostile(SSE_HEAD + b"transfer-encoding: chunked\r\n\r\n",
                       [_chunk(EVENT_1), _chunk(HALF_EVENT)], "stall")
    gateway = _gateway(start_gateway, upstream, timers)
    started = time.monotonic()
    status, headers, body, _ = _exchange(gateway)
    assert status == b"HTTP/1.1 200 OK"
    assert headers[b"transfer-encoding"] == b"chunked"
    data, terminated = _dechunk(body)
    assert terminated
    assert data.startswith(EVENT_1)
    assert HALF_EVENT not in data  # held back, then dropped: never half an event
    rest = data[len(EVENT_1):]
    beat = b": heartbeat\n\n"
    beats = 0
    while rest.startswith(beat, beats * len(beat)):
        beats += 1
    assert beats >= 2 if timers == HEARTBEATS else beats == 0, data
    error = _error_event(rest[beats * len(beat):], headers[b"x-request-id"])
    assert error == {"type": "gateway_timeout", "code": 504,
                     "message": "upstream stream stalled",
                     "request_id": headers[b"x-request-id"].decode()}
    assert 1.0 <= time.monotonic() - started < 5.0


@pytest.mark.parametrize(("last", "end"), [(b"", "close"), (b"", "reset"),
                                           (b"zz\r\nmalformed", "stall")])
def test_a_chunked_upstream_cut_mid_event_ends_with_an_error_event(
        last: bytes, end: str, hostile: Callable[..., _HostileSse],
        start_gateway: Callable[..., Gateway]) -> None:
    """The upstream closes, resets, or breaks its chunked framing mid-event."""
    upstream = hostile(SSE_HEAD + b"transfer-encoding: chunked\r\n\r\n",
                       [_chunk(EVENT_1), _chunk(HALF_EVENT) + last], end)
    gateway = _gateway(start_gateway, upstream)
    status, headers, body, _ = _exchange(gateway)
    assert status == b"HTTP/1.1 200 OK"
    data, terminated = _dechunk(body)
    assert terminated
    assert data.startswith(EVENT_1) and HALF_EVENT not in data
    error = _error_event(data[len(EVENT_1):], headers[b"x-request-id"])
    assert (error["type"], error["code"]) == ("bad_gateway", 502)
    assert error["message"] == "upstream stream broke off"


def test_a_close_delimited_upstream_cut_mid_event_is_a_cut(
        hostile: Callable[..., _HostileSse], start_gateway: Callable[..., Gateway]) -> None:
    """No length, no chunking: the close ends the body, and it falls mid-event."""
    upstream = hostile(SSE_HEAD + b"\r\n", [EVENT_1, HALF_EVENT], "close")
    gateway = _gateway(start_gateway, upstream)
    status, headers, body, _ = _exchange(gateway)
    assert status == b"HTTP/1.1 200 OK"
    data, terminated = _dechunk(body)
    assert terminated
    assert data.startswith(EVENT_1) and HALF_EVENT not in data
    error = _error_event(data[len(EVENT_1):], headers[b"x-request-id"])
    assert (error["code"], error["message"]) == (502, "upstream stream broke off")


def test_a_close_delimited_upstream_closed_between_events_is_complete(
        hostile: Callable[..., _HostileSse], start_gateway: Callable[..., Gateway]) -> None:
    upstream = hostile(SSE_HEAD + b"\r\n", [EVENT_1, b"data: [DONE]\r\n\r\n"], "close")
    gateway = _gateway(start_gateway, upstream)
    status, _, body, _ = _exchange(gateway)
    assert status == b"HTTP/1.1 200 OK"
    data, terminated = _dechunk(body)
    assert terminated
    assert data == EVENT_1 + b"data: [DONE]\r\n\r\n"


def test_an_http10_client_gets_the_error_event_then_the_close(
        hostile: Callable[..., _HostileSse], start_gateway: Callable[..., Gateway]) -> None:
    upstream = hostile(SSE_HEAD + b"transfer-encoding: chunked\r\n\r\n",
                       [_chunk(EVENT_1), _chunk(HALF_EVENT)], "stall")
    gateway = _gateway(start_gateway, upstream)
    status, headers, body, closed = _exchange(gateway, version=b"1.0")
    assert status == b"HTTP/1.1 200 OK"
    assert b"transfer-encoding" not in headers and b"content-length" not in headers
    assert headers[b"connection"] == b"close" and closed
    assert body.startswith(EVENT_1) and HALF_EVENT not in body
    error = _error_event(body[len(EVENT_1):], headers[b"x-request-id"])
    assert (error["code"], error["message"]) == (504, "upstream stream stalled")


@pytest.mark.parametrize(("end", "message", "timers"),
                         [("stall", "upstream stream stalled", TIMERS),
                          ("stall", "upstream stream stalled", HEARTBEATS),
                          ("close", "upstream stream broke off", TIMERS)])
def test_the_openai_sdk_raises_an_api_error(
        end: str, message: str, timers: str, hostile: Callable[..., _HostileSse],
        start_gateway: Callable[..., Gateway]) -> None:
    upstream = hostile(SSE_HEAD + b"transfer-encoding: chunked\r\n\r\n",
                       [_chunk(EVENT_1), _chunk(HALF_EVENT)], end)
    gateway = _gateway(start_gateway, upstream, timers)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0,
                           timeout=10.0)
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    contents = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            contents.append(chunk.choices[0].delta.content)
    assert not isinstance(raised.value, openai.APIConnectionError)
    assert contents == ["Hel"]
    assert raised.value.message == message
    assert isinstance(raised.value.body, dict) and raised.value.body["request_id"]


@pytest.mark.parametrize("end", ["close", "reset"])
def test_a_chunked_body_cut_short_has_no_terminal_chunk(
        end: str, hostile: Callable[..., _HostileSse],
        start_gateway: Callable[..., Gateway]) -> None:
    upstream = hostile(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
                       b"transfer-encoding: chunked\r\n\r\n",
                       [_chunk(b'{"a":1}\n'), _chunk(b'{"b":')], end)
    gateway = _gateway(start_gateway, upstream)
    status, headers, body, closed = _exchange(gateway)
    assert status == b"HTTP/1.1 200 OK" and closed
    assert headers[b"transfer-encoding"] == b"chunked"
    data, terminated = _dechunk(body)
    assert not terminated
    assert data.startswith(b'{"a":1}\n') and b"error" not in data


@pytest.mark.parametrize("end", ["close", "reset", "stall"])
def test_a_length_delimited_body_cut_short_ends_before_its_length(
        end: str, hostile: Callable[..., _HostileSse],
        start_gateway: Callable[..., Gateway]) -> None:
    upstream = hostile(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                       b"content-length: 100\r\n\r\n", [b'{"partial": tr'], end)
    gateway = _gateway(start_gateway, upstream)
    status, headers, body, closed = _exchange(gateway)
    assert status == b"HTTP/1.1 200 OK" and closed
    assert headers[b"content-length"] == b"100"
    assert body == b'{"partial": tr'


def test_a_stream_still_running_when_shutdown_timeout_ends_gets_the_error_event(
        hostile: Callable[..., _HostileSse], start_gateway: Callable[..., Gateway]) -> None:
    """SIGTERM during a stream: the gateway drains, the stream runs on, and when
    ``shutdown_timeout`` ends it the client gets the terminal error event (503)."""
    upstream = hostile(SSE_HEAD + b"transfer-encoding: chunked\r\n\r\n",
                       [_chunk(EVENT_1), _chunk(HALF_EVENT)], "stall")
    config = gateway_config(upstream.origin, workers=1).replace(
        'shutdown_timeout = "10s"', 'shutdown_timeout = "1s"')
    gateway = start_gateway(config)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-length: 2\r\n\r\n{}")
        received = b""
        while EVENT_1 not in received:
            data = sock.recv(65536)
            assert data, received
            received += data
        gateway.signal(signal.SIGTERM)
        signalled = time.monotonic()
        while not received.endswith(b"\r\n0\r\n\r\n"):
            data = sock.recv(65536)
            assert data, received
            received += data
        ended_after = time.monotonic() - signalled
        assert sock.recv(65536) == b""  # then the close
    assert 1.0 <= ended_after < 3.0
    head, _, body = received.partition(b"\r\n\r\n")
    request_id = re.search(rb"(?i)\r\nx-request-id: *([^\r]+)", head)
    assert request_id
    data, terminated = _dechunk(body)
    assert terminated and data.startswith(EVENT_1) and HALF_EVENT not in data
    error = _error_event(data[len(EVENT_1):], request_id.group(1))
    assert (error["type"], error["code"]) == ("unavailable", 503)
    assert gateway.wait(10) == 0


def test_a_request_still_waiting_for_its_head_when_shutdown_timeout_ends_gets_a_503(
        hostile: Callable[..., _HostileSse], start_gateway: Callable[..., Gateway]) -> None:
    upstream = hostile(b"", [], "stall")  # never answers
    config = gateway_config(upstream.origin, workers=1).replace(
        'shutdown_timeout = "10s"', 'shutdown_timeout = "1s"')
    gateway = start_gateway(config)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-length: 2\r\n\r\n{}")
        while not upstream.connections:
            time.sleep(0.02)
        time.sleep(0.2)
        gateway.signal(signal.SIGTERM)
        received = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received += data
    assert received.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), received
    assert b'"code":503' in received
    assert gateway.wait(10) == 0
