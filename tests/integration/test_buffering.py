"""Request buffering (``request_buffering``, on by default): a body is read whole before
an upstream connection is taken, so a trickling client holds no upstream connection and
a large body can still fail over to another peer."""

from __future__ import annotations

import socket
import time

import pytest

from .conftest import RecordingUpstream, gateway_config

pytestmark = pytest.mark.integration

BODY = bytes(range(256)) * 400  # 102,400 bytes: more than the 64 KiB read-ahead


def _post_in_two_parts(port: int, split: int, pause: float, upstream: RecordingUpstream,
                       *, until_connected: bool = False) -> tuple[int, bytes]:
    """Send the head and BODY[:split], wait ``pause`` seconds (or, ``until_connected``,
    at most that long for the upstream connection to appear), then the rest. Returns
    (upstream connections seen during the pause, the response)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY)
                     + BODY[:split])
        deadline = time.monotonic() + pause
        # Absence can only be shown by waiting the whole pause; presence as soon as it
        # shows (a loaded CI box once needed more than 0.5 s to open the connection).
        while time.monotonic() < deadline and not (until_connected and upstream.connections):
            time.sleep(0.02)
        during = upstream.connections
        sock.sendall(BODY[split:])
        reply = b""
        while data := sock.recv(65536):
            reply += data
    return during, reply


def test_a_trickling_body_holds_no_upstream_connection(
        recording_upstream: RecordingUpstream, start_gateway) -> None:
    gateway = start_gateway(gateway_config(recording_upstream.origin))
    during, reply = _post_in_two_parts(gateway.port, 90_000, 0.5, recording_upstream)
    assert during == 0, "an upstream connection was taken before the body was complete"
    assert reply.startswith(b"HTTP/1.1 200"), reply
    assert recording_upstream.connections == 1
    sent = recording_upstream.data()
    assert sent.endswith(BODY) and b"content-length: %d\r\n" % len(BODY) in sent.lower()


def test_without_buffering_the_body_streams_through(
        recording_upstream: RecordingUpstream, start_gateway) -> None:
    gateway = start_gateway(gateway_config(recording_upstream.origin,
                                           extra="[defaults]\nrequest_buffering = false\n"))
    during, reply = _post_in_two_parts(gateway.port, 90_000, 10.0, recording_upstream,
                                       until_connected=True)
    assert during == 1, "an unbuffered body over 64 KiB should already be streaming"
    assert reply.startswith(b"HTTP/1.1 200"), reply
    # The recording upstream answers on the head: the body's end may still be on its way.
    deadline = time.monotonic() + 10
    while not recording_upstream.data().endswith(BODY) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert recording_upstream.data().endswith(BODY)


def test_a_large_buffered_post_fails_over_to_a_live_peer(
        recording_upstream: RecordingUpstream, start_gateway) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()  # nothing listens there: connect is refused
    # Smooth weighted round robin picks the heavier (dead) peer first.
    upstreams = (f'[upstreams.main]\npeers = [{{ url = "{dead}", weight = 100 }}, '
                 f'{{ url = "{recording_upstream.origin}", weight = 1 }}]\n')
    gateway = start_gateway(gateway_config("", upstreams=upstreams))
    _, reply = _post_in_two_parts(gateway.port, len(BODY), 0.0, recording_upstream)
    assert reply.startswith(b"HTTP/1.1 200"), reply
    assert recording_upstream.data().endswith(BODY)
