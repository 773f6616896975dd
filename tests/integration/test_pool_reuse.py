"""Pooled upstream connections that the upstream closes while they sit idle.

Upstreams close idle keep-alive connections on their own timer (often shorter than the
gateway's ``keepalive_timeout``). The gateway must notice before it writes a request on
such a connection: a request that is not safe to send twice (a POST, a streamed body)
cannot be retried once its bytes may have reached the upstream, so a stale connection
found only by the failed write or read would turn into a 502. Every case here lets the
upstream close (or reset) the pooled connection, then sends the next request: it must
succeed, and the upstream must have seen every request exactly once.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest
from li_httpd.workers.proxy import REPLAYABLE_BODY

from .conftest import RawServer, gateway_config

pytestmark = pytest.mark.integration

IDLE_CLOSE = 0.1
"""Seconds the upstream keeps an idle keep-alive connection open."""


class _ClosingUpstream(RawServer):
    """Answers each request with ``200`` and its body length; closes a connection that
    stays idle for IDLE_CLOSE seconds (with a reset when ``reset``)."""

    def __init__(self, reset: bool = False) -> None:
        self.reset = reset
        self.requests: list[tuple[bytes, int]] = []
        self.idle_closes = 0
        self._lock = threading.Lock()
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        pending = b""
        with conn:
            conn.settimeout(IDLE_CLOSE)
            while True:
                try:
                    while b"\r\n\r\n" not in pending:
                        data = conn.recv(65536)
                        if not data:
                            return
                        pending += data
                except TimeoutError:
                    with self._lock:
                        self.idle_closes += 1
                    if self.reset:
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    return
                except OSError:
                    return
                head, _, pending = pending.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                conn.settimeout(10)
                try:
                    while len(pending) < length:
                        data = conn.recv(65536)
                        if not data:
                            return
                        pending += data
                except OSError:
                    return
                pending = pending[length:]
                with self._lock:
                    self.requests.append((head.split(b" ")[1], length))
                body = b"%d" % length
                try:
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(body), body))
                except OSError:
                    return
                conn.settimeout(IDLE_CLOSE)


def _after_idle_close(upstream: _ClosingUpstream, client: httpx.Client, method: str,
                      path: str, body: bytes) -> None:
    """Send one request to fill the pool, wait until the upstream closed the pooled
    connection, send the second: both answered by the upstream, each seen once."""
    for round_ in (1, 2):
        response = client.request(method, f"{path}?round={round_}", content=body)
        assert response.status_code == 200, (round_, response.status_code, response.text)
        assert response.text == str(len(body))
        if round_ == 1:
            give_up = time.monotonic() + 5
            while upstream.idle_closes < 1 and time.monotonic() < give_up:
                time.sleep(0.02)
            assert upstream.idle_closes == 1
            time.sleep(0.05)  # the close has reached the gateway's socket
    seen = [target for target, _ in upstream.requests]
    assert seen == [f"{path}?round=1".encode(), f"{path}?round=2".encode()], seen


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "reset"])
@pytest.mark.parametrize(("method", "size"), [("GET", 0), ("POST", 200),
                                              ("POST", 2 * REPLAYABLE_BODY)],
                         ids=["get", "post", "streamed_post"])
def test_a_connection_the_upstream_closed_while_idle_is_never_used(
        start_gateway, reset: bool, method: str, size: int) -> None:
    upstream = _ClosingUpstream(reset=reset)
    try:
        # Streamed: a body above REPLAYABLE_BODY without buffering can never be replayed.
        gateway = start_gateway(gateway_config(
            upstream.origin, workers=1,
            extra="[defaults]\nrequest_buffering = false\n" if size > REPLAYABLE_BODY
            else ""))
        with gateway.client() as client:
            _after_idle_close(upstream, client, method, "/thing", b"x" * size)
        assert upstream.connections == 2  # the closed one was replaced, not retried on
    finally:
        upstream.close()
