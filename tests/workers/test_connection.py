"""The connection actor driven in-process over a socketpair, on trio's virtual clock.

Each test scripts a client on one end of a socketpair while the real
:class:`~li_httpd.workers.connection.ClientConnection` and the worker's housekeeping
task serve the other end: no processes, no wall-clock waits.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from li_httpd.config import load_text
from li_httpd.workers import sockio
from li_httpd.workers.connection import handle_connection
from li_httpd.workers.context import WorkerContext
from li_httpd.workers.proxy import REPLAYABLE_BODY
from li_httpd.workers.sse import HOLD_LIMIT

CONFIG = """
[server]
listen = "127.0.0.1:8080"
profile = "dev"

[limits]
header_timeout = "5s"
keepalive_timeout = "30s"

[upstreams.dead]
peers = ["http://127.0.0.1:9"]
max_retries = 0

[routes]
"GET /health" = "static:healthcheck"
"POST /v1/*" = "proxy:dead"
"""


@pytest.fixture
def ctx() -> Iterator[WorkerContext]:
    context = WorkerContext(load_text(CONFIG, "connection.toml"))
    yield context
    context.close()


@pytest.fixture
def virtual_clock(monkeypatch: pytest.MonkeyPatch) -> trio.testing.MockClock:
    monkeypatch.setattr(sockio, "now", trio.current_time)
    return trio.testing.MockClock(autojump_threshold=0)



class Client:
    """The scripted client end of the socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        self.stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self.buffer = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def response(self) -> tuple[bytes, dict[bytes, bytes], bytes]:
        """One response: status line, headers, body (Content-Length framed)."""
        while b"\r\n\r\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            assert data, f"connection closed before a response: {self.buffer!r}"
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}
        length = int(headers.get(b"content-length", b"0"))
        while len(self.buffer) < length:
            self.buffer += await self.stream.receive_some(65536)
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    async def closed(self) -> bool:
        return await self.stream.receive_some(65536) == b""


async def _run(ctx: WorkerContext, script: object) -> None:
    server_end, client_end = socket.socketpair()
    async with trio.open_nursery() as nursery:
        await nursery.start(ctx.housekeeping.run)
        nursery.start_soon(handle_connection, ctx, server_end, ("127.0.0.1", 40000))
        await script(Client(client_end))  # type: ignore[operator]
        nursery.cancel_scope.cancel()


async def test_keep_alive_serves_requests_in_order(ctx: WorkerContext) -> None:
    async def script(client: Client) -> None:
        await client.send(b"GET /health HTTP/1.1\r\nhost: a\r\n\r\n"
                          b"GET /nowhere HTTP/1.1\r\nhost: a\r\n\r\n")
        status, headers, body = await client.response()
        assert status == b"HTTP/1.1 200 OK" and body == b'{"status":"ok"}'
        first_id = headers[b"x-request-id"]
        status, headers, _ = await client.response()
        assert status == b"HTTP/1.1 404 Not Found"
        assert headers[b"x-request-id"] != first_id
        assert b"connection" not in headers  # still keep-alive
    await _run(ctx, script)
    assert ctx.shared.worker_stats(0)[2] == 2  # both requests counted


async def test_header_timeout_answers_408_and_closes(
        ctx: WorkerContext, virtual_clock: trio.testing.MockClock) -> None:
    async def script(client: Client) -> None:
        start = trio.current_time()
        await client.send(b"GET /health HTTP/1.1\r\n")  # and never the rest
        status, headers, _ = await client.response()
        assert status == b"HTTP/1.1 408 Request Timeout"
        assert headers[b"connection"] == b"close"
        assert 5.0 <= trio.current_time() - start <= 5.0 + 2 * sockio.TICK
        assert await client.closed()
    await _run(ctx, script)


async def test_idle_keep_alive_closes_quietly(
        ctx: WorkerContext, virtual_clock: trio.testing.MockClock) -> None:
    async def script(client: Client) -> None:
        await client.send(b"GET /health HTTP/1.1\r\nhost: a\r\n\r\n")
        assert (await client.response())[0] == b"HTTP/1.1 200 OK"
        start = trio.current_time()
        assert await client.closed()  # no 408 for a client that sent nothing more
        assert 30.0 <= trio.current_time() - start <= 30.0 + 2 * sockio.TICK
    await _run(ctx, script)


async def test_dead_upstream_is_a_502(ctx: WorkerContext) -> None:
    async def script(client: Client) -> None:
        await client.send(b"POST /v1/chat HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{}")
        status, headers, body = await client.response()
        assert status == b"HTTP/1.1 502 Bad Gateway"
        assert b"upstream connection failed" in body
        assert headers[b"connection"] == b"close"  # a request with a body: no reuse
        assert await client.closed()
    await _run(ctx, script)
    assert ctx.shared.active_of(0) == 0  # the attempt's in-flight count was given back


async def test_truncated_body_is_a_400(
        ctx: WorkerContext, virtual_clock: trio.testing.MockClock) -> None:
    async def script(client: Client) -> None:
        await client.send(b"POST /v1/chat HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\n{}")
        await client.stream.send_eof()
        status, headers, _ = await client.response()
        assert status == b"HTTP/1.1 400 Bad Request"
        assert headers[b"connection"] == b"close"
    await _run(ctx, script)


async def _stalling_sse_upstream(event: bytes = b"data: token\n\n", *,
                                 task_status: trio.TaskStatus[int]) -> None:
    """An upstream that starts an SSE stream, sends one event (or the given bytes), then
    goes silent."""
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                              b"transfer-encoding: chunked\r\n\r\n"
                              b"%x\r\n%s\r\n" % (len(event), event))
        await trio.sleep_forever()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)


async def test_a_stalled_sse_stream_ends_with_an_error_event(
        virtual_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as upstreams:
        port = await upstreams.start(_stalling_sse_upstream)
        ctx = WorkerContext(load_text(_timers_config(port, "3s", "0s"), "sse.toml"))

        async def script(client: Client) -> None:
            start = trio.current_time()
            await client.send(b"POST /v1/chat HTTP/1.1\r\nhost: a\r\n"
                              b"content-length: 2\r\n\r\n{}")
            received = b""
            while not received.endswith(b"0\r\n\r\n"):
                data = await client.stream.receive_some(65536)
                assert data, received
                received += data
            assert b"data: token\n\n" in received
            assert b'event: error\ndata: {"error":{"type":"gateway_timeout","code":504,' \
                   b'"message":"upstream stream stalled"' in received
            assert received.index(b"token") < received.index(b"stalled")
            assert 3.0 <= trio.current_time() - start <= 3.0 + 2 * sockio.TICK
        try:
            await _run(ctx, script)
        finally:
            ctx.close()
        upstreams.cancel_scope.cancel()


async def _trickling_sse_upstream(task_status: trio.TaskStatus[int]) -> None:
    """An upstream that sends one event, then one event that never ends: a few bytes
    of it every half second, forever (never idle long enough for the stall detector)."""
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                              b"transfer-encoding: chunked\r\n\r\n"
                              b"d\r\ndata: token\n\n\r\n" b"a\r\ndata: {\"ha\r\n")
        while True:
            await trio.sleep(0.5)
            await stream.send_all(b"2\r\nlf\r\n")
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)


async def test_the_maximum_duration_mid_event_drops_the_half_event(
        virtual_clock: trio.testing.MockClock) -> None:
    """``stream_max_duration`` ends a stream while an event is half sent upstream: the
    client gets the whole events, never the half one, then the one error event."""
    async with trio.open_nursery() as upstreams:
        port = await upstreams.start(_trickling_sse_upstream)
        text = CONFIG.replace('peers = ["http://127.0.0.1:9"]',
                              f'peers = ["http://127.0.0.1:{port}"]')
        text = text.replace("[routes]", '[defaults.timeouts]\n'
                            'stream_max_duration = "2s"\n\n[routes]')
        ctx = WorkerContext(load_text(text, "sse.toml"))

        async def script(client: Client) -> None:
            start = trio.current_time()
            await client.send(b"POST /v1/chat HTTP/1.1\r\nhost: a\r\n"
                              b"content-length: 2\r\n\r\n{}")
            received = b""
            while not received.endswith(b"0\r\n\r\n"):
                data = await client.stream.receive_some(65536)
                assert data, received
                received += data
            body = received.partition(b"\r\n\r\n")[2]
            event = (b'event: error\ndata: {"error":{"type":"gateway_timeout","code":504,'
                     b'"message":"stream exceeded its maximum duration","request_id":')
            assert body.startswith(b"d\r\ndata: token\n\n\r\n")
            assert body[len(b"d\r\ndata: token\n\n\r\n"):].partition(b"\r\n")[2] \
                .startswith(event)
            assert b"half" not in body and b'"ha' not in body
            assert 2.0 <= trio.current_time() - start <= 2.0 + 2 * sockio.TICK
        try:
            await _run(ctx, script)
        finally:
            ctx.close()
        upstreams.cancel_scope.cancel()


def _timers_config(port: int, idle: str, heartbeat: str) -> str:
    return CONFIG.replace('peers = ["http://127.0.0.1:9"]',
                          f'peers = ["http://127.0.0.1:{port}"]').replace(
        "[routes]", f'[defaults.timeouts]\nstream_idle_timeout = "{idle}"\n'
                    f'heartbeat_interval = "{heartbeat}"\n\n[routes]')


async def test_a_silent_sse_stream_gets_heartbeats_until_its_idle_timeout(
        virtual_clock: trio.testing.MockClock) -> None:
    """Heartbeats at the interval while the upstream is silent, each one chunk and only
    after a whole event; they do not reset the idle timeout."""
    async with trio.open_nursery() as upstreams:
        port = await upstreams.start(_stalling_sse_upstream)
        ctx = WorkerContext(load_text(_timers_config(port, "3s", "1s"), "sse.toml"))

        async def script(client: Client) -> None:
            start = trio.current_time()
            await client.send(b"POST /v1/chat HTTP/1.1\r\nhost: a\r\n"
                              b"content-length: 2\r\n\r\n{}")
            received = b""
            beats: list[float] = []
            while not received.endswith(b"0\r\n\r\n"):
                data = await client.stream.receive_some(65536)
                assert data, received
                if b": heartbeat" in data:
                    assert data == b"d\r\n: heartbeat\n\n\r\n"  # one chunk, one write
                    beats.append(trio.current_time() - start)
                received += data
            assert received.index(b"data: token\n\n") < received.index(b": heartbeat")
            assert b'"upstream stream stalled"' in received
            assert len(beats) == 2
            assert 1.0 <= beats[0] <= 1.0 + 2 * sockio.TICK
            assert 1.0 <= beats[1] - beats[0] <= 1.0 + 2 * sockio.TICK
            assert 3.0 <= trio.current_time() - start <= 3.0 + 2 * sockio.TICK
        try:
            await _run(ctx, script)
        finally:
            ctx.close()
        upstreams.cancel_scope.cancel()


async def test_heartbeats_go_on_while_a_half_event_is_held(
        virtual_clock: trio.testing.MockClock) -> None:
    """A stall in the middle of an event: the half event is held back, so the client
    stands between events and gets its heartbeats; the idle timeout ends the stream and
    the half event is dropped, never sent."""
    async with trio.open_nursery() as upstreams:
        port = await upstreams.start(_stalling_sse_upstream, b"data: token\n\ndata: half")
        ctx = WorkerContext(load_text(_timers_config(port, "3s", "1s"), "sse.toml"))

        async def script(client: Client) -> None:
            start = trio.current_time()
            await client.send(b"POST /v1/chat HTTP/1.1\r\nhost: a\r\n"
                              b"content-length: 2\r\n\r\n{}")
            received = b""
            while not received.endswith(b"0\r\n\r\n"):
                data = await client.stream.receive_some(65536)
                assert data, received
                received += data
            assert received.count(b": heartbeat\n\n") == 2
            assert received.index(b"data: token\n\n") < received.index(b": heartbeat")
            assert b"half" not in received
            assert b'"upstream stream stalled"' in received
            assert 3.0 <= trio.current_time() - start <= 3.0 + 2 * sockio.TICK
        try:
            await _run(ctx, script)
        finally:
            ctx.close()
        upstreams.cancel_scope.cancel()


async def test_no_heartbeat_inside_an_event_beyond_the_hold_limit(
        virtual_clock: trio.testing.MockClock) -> None:
    """A stall in the middle of an event longer than HOLD_LIMIT, whose bytes went out as
    they came: a heartbeat's blank line would dispatch the half event, so none is sent;
    the idle timeout still ends the stream, with the half event closed off before the
    error event."""
    half = b"data: " + b"x" * (HOLD_LIMIT + 10)
    async with trio.open_nursery() as upstreams:
        port = await upstreams.start(_stalling_sse_upstream, half)
        ctx = WorkerContext(load_text(_timers_config(port, "3s", "1s"), "sse.toml"))

        async def script(client: Client) -> None:
            start = trio.current_time()
            await client.send(b"POST /v1/chat HTTP/1.1\r\nhost: a\r\n"
                              b"content-length: 2\r\n\r\n{}")
            received = b""
            while not received.endswith(b"0\r\n\r\n"):
                data = await client.stream.receive_some(65536)
                assert data, received
                received += data
            assert received.count(b"x") >= HOLD_LIMIT
            assert b"heartbeat" not in received
            assert b"\n\nevent: error\n" in received
            assert b'"upstream stream stalled"' in received
            assert 3.0 <= trio.current_time() - start <= 3.0 + 2 * sockio.TICK
        try:
            await _run(ctx, script)
        finally:
            ctx.close()
        upstreams.cancel_scope.cancel()


async def test_a_pipelined_flood_does_not_hold_up_other_connections(
        ctx: WorkerContext) -> None:
    """300 requests in one write on one connection, one request on another: the second
    connection's answer comes while the flood is still being answered (each buffered
    request yields to the worker's other connections), not after all of it."""
    flood_end, flood_client = socket.socketpair()
    single_end, single_client = socket.socketpair()
    for sock in (flood_client, single_client, flood_end, single_end):
        # Buffers that hold every answer: no write ever waits, so only the actor's own
        # yielding can let the other connection in.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    async with trio.open_nursery() as nursery:
        await nursery.start(ctx.housekeeping.run)
        nursery.start_soon(handle_connection, ctx, flood_end, ("127.0.0.1", 40001))
        nursery.start_soon(handle_connection, ctx, single_end, ("127.0.0.1", 40002))
        flood = Client(flood_client)
        single = Client(single_client)
        await flood.send(b"GET /health HTTP/1.1\r\nhost: a\r\n\r\n" * 300)
        # The first answers of the flood are in: the other request arrives mid-flood.
        flood.buffer += await flood.stream.receive_some(1 << 20)
        await single.send(b"GET /health HTTP/1.1\r\nhost: a\r\n\r\n")
        assert (await single.response())[0] == b"HTTP/1.1 200 OK"
        with trio.move_on_after(0):  # what the flood connection has received so far
            while True:
                flood.buffer += await flood.stream.receive_some(1 << 20)
        answered_before = flood.buffer.count(b"HTTP/1.1 200 OK")
        assert answered_before < 100, (
            f"the single request waited for {answered_before} of the flood's answers")
        for _ in range(300):
            assert (await flood.response())[0] == b"HTTP/1.1 200 OK"
        nursery.cancel_scope.cancel()


FLOOD_CHUNKS = 16000
"""Chunks of 16 bytes (the smallest average the chunk budget lets through): about 350 KB
on the wire, several reads and dozens of turns' worth of chunks (a neighbour is served after
a bounded number of turns, so a larger flood makes the check independent of how fast the
build relays one turn: the compiled one relays more per test step)."""


async def _parked_upstream(direction: str, accepted: list[trio.SocketStream],
                           task_status: trio.TaskStatus[int]) -> None:
    """An upstream that never reads a request body ("request": what the gateway has
    forwarded stays in its receive buffer, where the test counts it), or that answers
    every request with the chunk flood ("response")."""
    async def handler(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        if direction == "response":
            await stream.receive_some(65536)
            await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                  + b"10\r\n0123456789abcdef\r\n" * FLOOD_CHUNKS
                                  + b"0\r\n\r\n")
        await trio.sleep_forever()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    for listener in listeners:
        listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)


def _unread(sock: socket.socket | trio.socket.SocketType) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


@pytest.mark.parametrize("direction", ["request", "response"])
async def test_a_chunk_flood_does_not_hold_up_other_connections(direction: str) -> None:
    """One connection's body (or its upstream's response) is thousands of small chunks,
    all buffered at once; a neighbour's request arriving just after is answered while
    less than half of the flood has been relayed: the flood is decoded a bounded batch
    per turn, and the connection yields between batches."""
    accepted: list[trio.SocketStream] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_parked_upstream, direction, accepted)
        text = CONFIG.replace('peers = ["http://127.0.0.1:9"]',
                              f'peers = ["http://127.0.0.1:{port}"]')
        text = text.replace("[routes]", "[defaults]\nrequest_buffering = false\n\n[routes]")
        ctx = WorkerContext(load_text(text, "flood.toml"))
        flood_end, flood_client = socket.socketpair()
        single_end, single_client = socket.socketpair()
        for sock in (flood_client, single_client, flood_end, single_end):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        await nursery.start(ctx.housekeeping.run)
        nursery.start_soon(handle_connection, ctx, flood_end, ("127.0.0.1", 40001))
        flood = Client(flood_client)
        single = Client(single_client)
        if direction == "request":
            # The gateway holds the first REPLAYABLE_BODY bytes (a retry may need them),
            # then streams: send that much first, wait for it upstream, then the flood.
            opening = REPLAYABLE_BODY // 16 + 1
            await flood.send(b"POST /v1/up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked"
                             b"\r\n\r\n" + b"10\r\n0123456789abcdef\r\n" * opening)
            while not accepted or _unread(accepted[0].socket) < 16 * opening:
                await trio.sleep(0.001)
            baseline = _unread(accepted[0].socket)
            await flood.send(b"10\r\n0123456789abcdef\r\n" * FLOOD_CHUNKS)
        else:
            await flood.send(b"POST /v1/down HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n")
            while not _unread(flood_client):
                await trio.sleep(0.001)  # the response has started
        nursery.start_soon(handle_connection, ctx, single_end, ("127.0.0.1", 40002))
        await single.send(b"GET /health HTTP/1.1\r\nhost: a\r\n\r\n")
        assert (await single.response())[0] == b"HTTP/1.1 200 OK"
        relayed = (_unread(accepted[0].socket) - baseline if direction == "request"
                   else _unread(flood_client))
        total = 16 * FLOOD_CHUNKS
        assert relayed < total // 2, (
            f"the neighbour waited until {relayed} of {total} flood bytes were relayed")
        nursery.cancel_scope.cancel()
    ctx.close()


def _context(**limits: str) -> WorkerContext:
    """The module's config with some ``[limits]`` replaced."""
    lines = "".join(f"{key} = {value}\n" for key, value in limits.items())
    return WorkerContext(load_text(CONFIG.replace("[limits]\n", "[limits]\n" + lines, 1),
                                   "limits.toml"))


async def test_a_stalled_body_answers_408_and_closes(
        virtual_clock: trio.testing.MockClock) -> None:
    """The head is in, the body stops: ``body_timeout`` after the last body bytes the
    client gets a 408 and the connection closes (no upstream is contacted meanwhile)."""
    ctx = _context(body_timeout='"2s"')

    async def script(client: Client) -> None:
        await client.send(b"POST /v1/chat HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\n{")
        await trio.sleep(1.5)
        await client.send(b'"')  # a byte within the timeout restarts it
        start = trio.current_time()
        status, headers, _ = await client.response()
        assert status == b"HTTP/1.1 408 Request Timeout"
        assert headers[b"connection"] == b"close"
        assert 2.0 <= trio.current_time() - start <= 2.0 + 2 * sockio.TICK
        assert await client.closed()
    try:
        await _run(ctx, script)
    finally:
        ctx.close()


async def test_keepalive_requests_caps_the_requests_of_one_connection() -> None:
    """After ``keepalive_requests`` requests the connection closes, even with more
    requests pipelined behind: the last answer says ``Connection: close``."""
    ctx = _context(keepalive_requests="3")

    async def script(client: Client) -> None:
        await client.send(b"GET /health HTTP/1.1\r\nhost: a\r\n\r\n" * 5)
        for number in range(3):
            status, headers, _ = await client.response()
            assert status == b"HTTP/1.1 200 OK"
            assert (headers.get(b"connection") == b"close") is (number == 2)
        assert client.buffer == b""
        assert await client.closed()
    try:
        await _run(ctx, script)
    finally:
        ctx.close()
    assert ctx.shared.worker_stats(0)[2] == 3
