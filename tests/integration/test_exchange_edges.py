"""Edges of one exchange found by review: timers that outlive their phase, a disconnect
watch lost on a retry, an upstream reset that passed for a clean end of the body. Each
test failed at 9447c3b."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest

from .conftest import RawServer, gateway_config, raw_exchange

pytestmark = pytest.mark.integration

_SSE_EVENT = b"data: one\n\n"


class _ScriptedUpstream(RawServer):
    """A raw HTTP upstream that answers by request path: ``/fail`` 503 after 0.3 s;
    ``/sse`` a chunked event stream that ends after 0.2 s; ``/reset`` a close-delimited
    200 whose body is cut by a TCP reset. With ``hold=True`` it answers nothing and
    records when the gateway closes the connection."""

    def __init__(self, *, hold: bool = False) -> None:
        self.hold = hold
        self.closed_at: float | None = None
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        pending = b""
        with conn:
            try:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                target = pending.split(b" ")[1]
                if self.hold:
                    conn.recv(1)  # returns when the gateway closes
                    self.closed_at = time.monotonic()
                elif target == b"/fail":
                    time.sleep(0.3)
                    conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\n"
                                 b"content-length: 0\r\n\r\n")
                elif target == b"/sse":
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                                 b"transfer-encoding: chunked\r\n\r\n"
                                 b"%x\r\n%s\r\n" % (len(_SSE_EVENT), _SSE_EVENT))
                    time.sleep(0.2)  # the gateway streams the first event on its own
                    conn.sendall(b"0\r\n\r\n")
                    conn.recv(65536)  # keep the connection until the gateway lets go
                elif target == b"/switch":
                    # A protocol switch nobody asked for, with an HTTP response after it
                    # that a lenient proxy would relay and pool.
                    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                                 b"connection: upgrade\r\n\r\n"
                                 b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled")
                    if not conn.recv(65536):  # the gateway must close, never reuse
                        self.closed_at = time.monotonic()
                elif target == b"/reset":
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n"
                                 b"partial-")
                    time.sleep(0.3)
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))  # close() now sends a reset
            except OSError:
                self.closed_at = time.monotonic()


@pytest.fixture
def upstream() -> Iterator[_ScriptedUpstream]:
    scripted = _ScriptedUpstream()
    yield scripted
    scripted.close()


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        data = sock.recv(65536)
        if not data:
            break
        received += data
    return received


def test_client_disconnect_is_seen_after_a_retry(upstream: _ScriptedUpstream,
                                                  start_gateway) -> None:
    """The first peer answers 503 (retried), the second holds the request, the client
    hangs up: the held peer must see the gateway close at once, not when it answers."""
    holding = _ScriptedUpstream(hold=True)
    try:
        # Smooth weighted round robin picks the heavier peer first; the retry, the other.
        upstreams = (f'[upstreams.main]\npeers = [{{ url = "{upstream.origin}", '
                     f'weight = 100 }}, {{ url = "{holding.origin}", weight = 1 }}]\n')
        gateway = start_gateway(gateway_config("", upstreams=upstreams, workers=1,
                                               routes='"/" = "proxy:main"\n'))
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as client:
            client.sendall(b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(1.0)  # the 503 came back after 0.3 s; the retry is being held
            hung_up_at = time.monotonic()
        give_up = time.monotonic() + 5
        while holding.closed_at is None and time.monotonic() < give_up:
            time.sleep(0.05)
        assert holding.closed_at is not None, "the held peer never saw the request end"
        assert holding.closed_at - hung_up_at < 1.0
    finally:
        holding.close()


def test_header_timeout_after_an_event_stream_is_a_408(upstream: _ScriptedUpstream,
                                                       start_gateway) -> None:
    """After a complete SSE response, a next request whose head stalls gets a 408, not
    a stray SSE error chunk from the finished stream."""
    gateway = start_gateway(gateway_config(upstream.origin, routes='"/" = "proxy:main"\n',
                                           extra='[limits]\nheader_timeout = "1s"\n'))
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as client:
        client.sendall(b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n")
        first = _read_until(client, b"0\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"0\r\n\r\n")
        client.sendall(b"GET /next HTTP/1.1\r\n")  # and nothing more
        rest = _read_until(client, b"}")
    assert rest.startswith(b"HTTP/1.1 408"), rest
    assert b"stream aborted" not in rest


def test_header_timeout_does_not_run_during_upstream_connect(start_gateway) -> None:
    """A peer whose accept queue is full makes connect hang: the client gets the
    connect timeout's 502, not the (shorter) header timeout's 408."""
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = []
    try:
        for _ in range(3):  # more than the queue holds: later SYNs are dropped
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(full.getsockname())
            fillers.append(filler)
        time.sleep(0.2)
        origin = f"http://127.0.0.1:{full.getsockname()[1]}"
        upstreams = (f'[upstreams.main]\npeers = ["{origin}"]\nconnect_timeout = "3s"\n'
                     f'max_retries = 0\n')
        gateway = start_gateway(gateway_config("", upstreams=upstreams,
                                               routes='"/" = "proxy:main"\n',
                                               extra='[limits]\nheader_timeout = "1s"\n'))
        started = time.monotonic()
        reply = raw_exchange(gateway.port, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n", timeout=10)
        elapsed = time.monotonic() - started
    finally:
        for filler in fillers:
            filler.close()
        full.close()
    assert reply.startswith(b"HTTP/1.1 502"), reply
    assert elapsed >= 2.5


def test_upstream_reset_mid_body_is_not_a_complete_response(upstream: _ScriptedUpstream,
                                                            start_gateway) -> None:
    """A close-delimited body ends at the upstream's close, but a reset is not a close:
    the client must see the response break (no terminating chunk), not a clean end."""
    gateway = start_gateway(gateway_config(upstream.origin, routes='"/" = "proxy:main"\n'))
    received = raw_exchange(gateway.port, b"GET /reset HTTP/1.1\r\nHost: x\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 200"), received
    assert b"partial-" in received
    assert not received.endswith(b"0\r\n\r\n"), received


def test_an_unsolicited_protocol_switch_is_a_502_and_never_pooled(
        upstream: _ScriptedUpstream, start_gateway) -> None:
    gateway = start_gateway(gateway_config(upstream.origin, routes='"/" = "proxy:main"\n'))
    reply = raw_exchange(gateway.port, b"GET /switch HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 502"), reply
    assert b"smuggled" not in reply
    give_up = time.monotonic() + 5
    while upstream.closed_at is None and time.monotonic() < give_up:
        time.sleep(0.05)
    assert upstream.closed_at is not None, "the upstream connection was kept after a 101"
