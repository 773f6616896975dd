"""The route timers ([route.timeouts] / [defaults.timeouts]) on routes without any rate
limit, against a hostile upstream that stalls before its head, stalls after it, or
streams for longer than allowed; SSE heartbeats while the upstream is silent."""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from .conftest import Gateway, RawServer, gateway_config

pytestmark = pytest.mark.integration

_SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
             b"transfer-encoding: chunked\r\n\r\n")
_EVENT = b"data: token\n\n"
_EVENT_CHUNK = b"%x\r\n%s\r\n" % (len(_EVENT), _EVENT)


class _HostileUpstream(RawServer):
    """By request path: ``/hang`` never answers; ``/silent`` sends an SSE head and one
    event, then nothing; ``/framed`` 10 bytes of a 100-byte body, then nothing;
    ``/endless`` sends an event every 0.2 s. Each keeps the
    connection until the gateway closes it."""

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        pending = b""
        with conn:
            try:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                target = pending.split(b" ")[1]
                if target == b"/silent":
                    conn.sendall(_SSE_HEAD + _EVENT_CHUNK)
                elif target == b"/framed":
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                                 b"content-length: 100\r\n\r\nfirst ten.")
                elif target == b"/endless":
                    conn.sendall(_SSE_HEAD)
                    conn.settimeout(0.2)
                    while True:
                        conn.sendall(_EVENT_CHUNK)
                        try:
                            if not conn.recv(65536):
                                return
                        except TimeoutError:
                            continue
                conn.settimeout(30)
                conn.recv(65536)  # returns when the gateway closes
            except OSError:
                pass


@pytest.fixture
def hostile() -> Iterator[_HostileUpstream]:
    server = _HostileUpstream()
    yield server
    server.close()


def _timed_exchange(port: int, path: str) -> tuple[list[tuple[float, bytes]], float]:
    """GET ``path``; every piece received with its arrival time (seconds after the
    request), and when the response ended (terminal chunk or close)."""
    pieces: list[tuple[float, bytes]] = []
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        start = time.monotonic()
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        while True:
            data = sock.recv(65536)
            if not data:
                break
            pieces.append((time.monotonic() - start, data))
            received += data
            if received.endswith(b"0\r\n\r\n"):
                break
    return pieces, time.monotonic() - start


def _config(hostile: _HostileUpstream, timeouts: str) -> str:
    # No [defaults.rate_limit] and no [route.rate_limit]: the timers apply anyway.
    return gateway_config(hostile.origin, extra=f"[defaults.timeouts]\n{timeouts}",
                          workers=1)


def test_timers_apply_to_a_route_without_a_rate_limit(
        hostile: _HostileUpstream, start_gateway: Callable[..., Gateway]) -> None:
    gateway = start_gateway(_config(hostile, 'ttfb_timeout = "1s"\n'
                                             'stream_idle_timeout = "2s"\n'
                                             'stream_max_duration = "3s"\n'
                                             'heartbeat_interval = 0\n'))
    assert "rate_limit" not in gateway.config_path.read_text()

    # An upstream that never answers: 504 at ttfb_timeout (not the pool's read_timeout).
    pieces, ended = _timed_exchange(gateway.port, "/hang")
    body = b"".join(data for _, data in pieces)
    assert body.startswith(b"HTTP/1.1 504"), body
    assert 1.0 <= ended < 2.0

    # A stream that stalls after its first event is cut at stream_idle_timeout.
    pieces, ended = _timed_exchange(gateway.port, "/silent")
    body = b"".join(data for _, data in pieces)
    assert body.startswith(b"HTTP/1.1 200") and _EVENT in body
    assert b": heartbeat" not in body  # heartbeat_interval = 0
    assert body.endswith(b"0\r\n\r\n") and b'"error"' in body
    assert 2.0 <= ended < 3.0

    # A stream that never stops is ended at stream_max_duration.
    pieces, ended = _timed_exchange(gateway.port, "/endless")
    body = b"".join(data for _, data in pieces)
    assert body.count(_EVENT) >= 10
    assert body.endswith(b"0\r\n\r\n") and b'"error"' in body
    assert 3.0 <= ended < 4.0


def test_a_silent_event_stream_gets_heartbeats(
        hostile: _HostileUpstream, start_gateway: Callable[..., Gateway]) -> None:
    gateway = start_gateway(_config(hostile, 'stream_idle_timeout = "3s"\n'
                                             'heartbeat_interval = "1s"\n'))
    pieces, ended = _timed_exchange(gateway.port, "/silent")
    beats = [at for at, data in pieces if data == b"d\r\n: heartbeat\n\n\r\n"]
    body = b"".join(data for _, data in pieces)
    assert body.count(b": heartbeat") == len(beats)  # each one chunk, alone in its write
    assert len(beats) >= 2, pieces
    assert 0.9 <= beats[0] <= 1.5
    for earlier, later in itertools.pairwise(beats):
        assert 0.9 <= later - earlier <= 1.5
    assert body.index(_EVENT) < body.index(b": heartbeat")
    # Heartbeats do not keep a stalled stream alive: it still ends at the idle timeout.
    assert 3.0 <= ended < 4.0
    assert body.endswith(b"0\r\n\r\n") and b'"error"' in body


def test_a_body_with_a_content_length_is_bounded_by_the_pool_read_timeout(
        hostile: _HostileUpstream, start_gateway: Callable[..., Gateway]) -> None:
    """Not a stream: the pool's read_timeout bounds its gaps, not stream_idle_timeout
    (and it caps none of the route's timers)."""
    pools = f'[upstreams.main]\npeers = ["{hostile.origin}"]\nread_timeout = "1s"\n'
    gateway = start_gateway(gateway_config(
        hostile.origin, upstreams=pools, workers=1,
        extra='[defaults.timeouts]\nstream_idle_timeout = "5s"\nheartbeat_interval = "2s"\n'))
    pieces, ended = _timed_exchange(gateway.port, "/framed")
    body = b"".join(data for _, data in pieces)
    assert body.startswith(b"HTTP/1.1 200") and body.endswith(b"first ten.")
    assert 1.0 <= ended < 2.0  # closed before the Content-Length: visibly cut
    # The same pool's streams wait their own stream_idle_timeout, longer than 1 s.
    pieces, ended = _timed_exchange(gateway.port, "/silent")
    assert 5.0 <= ended < 6.0
