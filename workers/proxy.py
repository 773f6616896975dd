"""Reverse proxy for one request: upstream choice, retries, streaming both ways.

Request side: the upstream request head is built from the route's header policy (the
allowed client headers, literal injections, ``x-request-id``, the peer's Host and the
gateway's own framing). A body that has fully arrived with the head (the common small
JSON POST) is sent in the same write and stays replayable; a larger body is streamed
from the client to the upstream through one bounded buffer (one receive at a time) and
``Expect: 100-continue`` is answered just before it is read.

Retries (SPEC §5): a failed connect moves to the next peer; a pooled connection that
turns out stale (write fails, or it closes before any response byte) is retried on a
fresh connection when nothing of the request can have been processed (the write failed)
or the request is idempotent and its body replayable; an upstream answer with a status
in ``retry_statuses`` is retried on another peer under the same replay rule. Retries are
bounded by ``max_retries``.

Response side: allowed headers pass, the gateway sets framing, ``date`` and
``x-request-id``; SSE responses get ``Cache-Control: no-cache`` and
``X-Accel-Buffering: no``. Bodies are forwarded as they arrive, one write per upstream
read (an SSE event reaches the client while the upstream is still generating), with
per-read idle deadlines (stall detector), a total stream deadline, and re-chunking when
the length is unknown. The upstream connection returns to the pool only after a response
read exactly to its end.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from . import sockio
from .http1 import (
    END,
    NEED_DATA,
    HttpError,
    RequestHead,
    ResponseHead,
    ResponseReader,
    UpstreamProtocolError,
)
from .responses import CONTINUE, error_response, render_head
from .sockio import ClientGone, PeerGone
from .upstream import PeerPool, UpstreamConn, UpstreamConnectError

if TYPE_CHECKING:
    from .connection import ClientConnection
    from .context import RoutePlan

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS"})
REPLAYABLE_BODY = 64 * 1024
_SSE = b"text/event-stream"


class _UpstreamFailed(Exception):  # noqa: N818 - internal control flow
    """The exchange with this upstream connection failed before any response byte."""

    def __init__(self, reason: str, request_sent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request_sent = request_sent


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _body_start(conn: ClientConnection, head: RequestHead) -> tuple[bytes, bool]:
    """Read and decode the request body until it is complete or REPLAYABLE_BODY bytes
    are in hand, before any upstream is contacted. Returns (bytes, complete). A complete
    body is replayable on retries; a malformed body fails here (400) and never reaches an
    upstream, even partly."""
    reader = conn.reader
    pieces: list[bytes] = []
    total = 0
    asked_continue = False
    deadline = conn.deadline
    body_timeout = conn.ctx.timeouts.body
    while True:
        event = reader.next_event()
        if event is END:
            return b"".join(pieces), True
        if isinstance(event, bytes):
            pieces.append(event)
            total += len(event)
            await conn.meter_body(len(event))
            if total >= REPLAYABLE_BODY:
                return b"".join(pieces), False
            continue
        if head.expect_continue and not asked_continue:
            asked_continue = True
            await conn.io.send_all(CONTINUE)
        deadline.set(body_timeout, "body")
        data = await conn.io.recv()
        if not data:
            raise HttpError(400, "request body truncated")
        reader.feed(data)


_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,128})"')


def _model_of(head: RequestHead, body_start: bytes) -> str | None:
    """The model a request names: ``x-model``, else a JSON body's ``model`` field (found
    with a bounded search of the body's start; no full JSON parse on the hot path)."""
    for name, value in head.headers:
        if name == b"x-model":
            return value.decode("latin-1")
    found = _MODEL.search(body_start, 0, 4096) if body_start else None
    return found.group(1).decode("utf-8", "replace") if found else None


def _request_head(head: RequestHead, plan: RoutePlan, upstream_path: str, host: bytes,
                  request_id: bytes, body: bytes | None) -> bytes:
    target = upstream_path.encode()
    if head.query is not None:
        target += b"?" + head.query
    parts = [head.method, b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    policy = plan.policy
    for name, value in policy.egress(head.headers, head.connection_tokens):
        parts += (name, b": ", value, b"\r\n")
    for name, value in policy.inject:
        parts += (name, b": ", value, b"\r\n")
    parts += (b"x-request-id: ", request_id, b"\r\n")
    if body is not None:
        if body or head.has_body or head.method in (b"POST", b"PUT", b"PATCH"):
            parts += (b"content-length: ", b"%d" % len(body), b"\r\n")
    elif head.chunked:
        parts.append(b"transfer-encoding: chunked\r\n")
    else:
        parts += (b"content-length: ", b"%d" % (head.content_length or 0), b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


async def proxy_request(conn: ClientConnection, head: RequestHead, plan: RoutePlan,
                        upstream_path: str) -> bool:
    """Proxy one request; True when the client connection may be reused."""
    group = plan.group
    if group is None:  # validation guarantees a target; stay total anyway
        return await conn.reject(head, 502)
    settings = group.settings
    start, complete = await _body_start(conn, head) if head.has_body else (b"", True)
    body = start if complete else None
    exchange = conn.exchange
    if exchange is not None:
        exchange.model = _model_of(head, start)
    replayable = body is not None and head.method in IDEMPOTENT
    # A streamed body is consumed by the first attempt: no retry, no keep-alive on error.
    retry_ok = body is not None
    tried: list[int] = []
    failovers_left = settings.max_retries
    stale_retry_left = True
    shared = group.shared
    conn.upstream_group = group
    housekeeping = conn.ctx.housekeeping
    while True:
        # Each attempt runs under its own timers (connect, TTFB, idle); none of an earlier
        # phase (the request head's, a failed attempt's TTFB) may fire during this one.
        conn.deadline.clear()
        pool = group.pick(exclude=tried)
        if pool is None:
            message = "every upstream peer failed" if tried else "all upstream peers are down"
            return await conn.reject(head, 502, keep=retry_ok, message=message)
        peer = pool.peer
        if exchange is not None:
            exchange.peer = peer.label
        shared.add_active(peer.shared_id, 1)
        try:
            try:
                up = await pool.acquire(conn.deadline, conn.ctx.timeouts.send)
            except UpstreamConnectError as exc:
                conn.ctx.log.diagnostic("warn", "upstream connect failed",
                                        request_id=conn.request_id, peer=peer.label,
                                        error=str(exc))
                conn.ctx.metrics.upstream_error(peer.label, "connect")
                group.failed(peer)
                tried.append(peer.index)
                if retry_ok and failovers_left > 0:
                    failovers_left -= 1
                    continue
                return await conn.reject(head, 502, keep=retry_ok,
                                         message="upstream connection failed")
            conn.upstream = up
            try:
                response = await _exchange(conn, up, head, plan, upstream_path, body, start)
            except _UpstreamFailed as failure:
                conn.upstream = None
                up.close()
                conn.ctx.log.diagnostic("warn", "upstream failed", request_id=conn.request_id,
                                        peer=peer.label, error=failure.reason,
                                        reused=up.reused)
                conn.ctx.metrics.upstream_error(peer.label, "closed")
                safe = retry_ok and (not failure.request_sent or replayable)
                if up.reused and stale_retry_left and safe:
                    stale_retry_left = False  # a stale pooled connection: not the peer's fault
                    continue
                group.failed(peer)
                tried.append(peer.index)
                if safe and failovers_left > 0:
                    failovers_left -= 1
                    continue
                return await conn.reject(head, 502, keep=retry_ok, message="upstream failed")
            except UpstreamProtocolError as exc:
                conn.upstream = None
                up.close()
                conn.ctx.log.diagnostic("warn", "invalid upstream response",
                                        request_id=conn.request_id, peer=peer.label,
                                        error=exc.detail)
                conn.ctx.metrics.upstream_error(peer.label, "protocol")
                group.failed(peer)
                return await conn.reject(head, 502, keep=False,
                                         message="invalid upstream response")
            if response.status in settings.retry_statuses:
                group.failed(peer)
                conn.ctx.metrics.upstream_error(peer.label, f"status_{response.status}")
                if replayable and failovers_left > 0:
                    conn.upstream = None
                    up.close()
                    tried.append(peer.index)
                    failovers_left -= 1
                    continue
            else:
                group.succeeded(peer)
            return await _relay(conn, up, pool, head, plan, response)
        finally:
            shared.add_active(peer.shared_id, -1)
            housekeeping.unwatch(conn.io.fd)  # no disconnect watch outlives its attempt


async def _exchange(conn: ClientConnection, up: UpstreamConn, head: RequestHead,
                    plan: RoutePlan, upstream_path: str, body: bytes | None,
                    start: bytes) -> ResponseHead:
    """Send the request (the whole ``body``, or ``start`` then the streamed rest) and read
    the response head (skipping 1xx)."""
    request_head = _request_head(head, plan, upstream_path, up.peer.host_header,
                                 conn.request_id, body)
    io = up.io
    try:
        if body is not None:
            await io.send_all(request_head + body if body else request_head)
        else:
            await io.send_all(request_head + (_chunk(start) if head.chunked else start))
            await _stream_request_body(conn, up, head)
    except ClientGone:
        raise  # the connection ends quietly; the peer did nothing wrong
    except PeerGone as exc:
        raise _UpstreamFailed(str(exc), request_sent=False) from None
    reader = up.reader
    reader.expect_response(head.method == b"HEAD")
    deadline = conn.deadline
    deadline.set(plan.ttfb_timeout, "upstream_ttfb")
    conn.ctx.housekeeping.watch(conn.io.sock, conn.io.fd, deadline)
    waiting = True
    while True:
        event = reader.next_event()
        if event is NEED_DATA:
            reader.feed(await (io.recv_after_wait() if waiting else io.recv()))
            waiting = False
            continue
        if isinstance(event, ResponseHead):
            if conn.exchange is not None:
                conn.exchange.ttfb_ms = (time.monotonic() - conn.exchange.started) * 1000
            return event
        raise _UpstreamFailed("closed before responding", request_sent=True)


async def _stream_request_body(conn: ClientConnection, up: UpstreamConn,
                               head: RequestHead) -> None:
    """Copy the request body from the client to the upstream, one read at a time."""
    reader = conn.reader
    client = conn.io
    upstream = up.io
    deadline = conn.deadline
    body_timeout = conn.ctx.timeouts.body
    chunked = head.chunked
    while True:
        event = reader.next_event()
        if event is NEED_DATA:
            deadline.set(body_timeout, "body")
            try:
                data = await client.recv()
            except PeerGone as exc:
                raise ClientGone(str(exc)) from None
            reader.feed(data)
            continue
        if event is END:
            if chunked:
                await upstream.send_all(b"0\r\n\r\n")
            return
        if isinstance(event, bytes):
            await conn.meter_body(len(event))
            await upstream.send_all(_chunk(event) if chunked else event)


def _response_headers(plan: RoutePlan, response: ResponseHead,
                      head: RequestHead) -> tuple[list[tuple[bytes, bytes]], bool]:
    headers = plan.policy.response(response.headers, response.connection_tokens)
    sse = False
    for name, value in headers:
        if name == b"content-type" and value.startswith(_SSE):
            sse = True
            break
    if sse:
        headers = [h for h in headers if h[0] != b"cache-control"]
        headers += ((b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"))
    if head.method == b"HEAD" and response.content_length is not None:
        headers.append((b"content-length", b"%d" % response.content_length))
    return headers, sse


async def _relay(conn: ClientConnection, up: UpstreamConn, pool: PeerPool,
                 head: RequestHead, plan: RoutePlan, response: ResponseHead) -> bool:
    """Forward the response head and body to the client."""
    housekeeping = conn.ctx.housekeeping
    reader = up.reader
    client = conn.io
    headers, sse = _response_headers(plan, response, head)
    conn.response_sse = sse
    keep = head.keep_alive
    pieces: list[bytes] = []
    whole = reader.take_whole_body()
    if whole is not None:
        complete = True
        if whole:
            pieces.append(whole)
    else:
        try:
            complete = _collect(reader, pieces)
        except UpstreamProtocolError:
            return await _upstream_broke(conn, up, head)
    if head.method == b"HEAD" or response.status in (204, 304):
        pass
    elif response.content_length is not None:
        headers.append((b"content-length", b"%d" % response.content_length))
    elif complete:
        headers.append((b"content-length", b"%d" % sum(map(len, pieces))))
    elif head.version == b"1.1":
        headers.append((b"transfer-encoding", b"chunked"))
        conn.response_chunked = True
    else:
        keep = False  # HTTP/1.0 client, unknown length: the close ends the body
    headers.append((b"x-request-id", conn.request_id))
    headers.append((b"date", housekeeping.date))
    if not keep:
        headers.append((b"connection", b"close"))
    chunked = conn.response_chunked
    out = render_head(response.status, headers)
    if pieces:
        data = b"".join(pieces)
        out += _chunk(data) if chunked else data
    if complete and chunked:
        out += b"0\r\n\r\n"
    conn.begin_response(response.status)
    await client.send_all(out)
    if not complete:
        try:
            await _stream_response_body(conn, up, plan, chunked)
        except UpstreamProtocolError:
            return await _upstream_broke(conn, up, head)
    housekeeping.unwatch(client.fd)
    conn.upstream = None
    if response.keep_alive:
        pool.release(up)
    else:
        up.close()
    return keep


async def _stream_response_body(conn: ClientConnection, up: UpstreamConn, plan: RoutePlan,
                                chunked: bool) -> None:
    """Forward body pieces as they arrive until the response is complete."""
    reader = up.reader
    io = up.io
    client = conn.io
    deadline = conn.deadline
    idle = plan.idle_timeout
    limit_at = sockio.now() + plan.max_duration
    pieces: list[bytes] = []
    while True:
        now = sockio.now()
        if now + idle < limit_at:
            deadline.at, deadline.reason = now + idle, "upstream_idle"
        else:
            deadline.at, deadline.reason = limit_at, "stream_max"
        try:
            reader.feed(await io.recv(reset_is_error=True))
        except PeerGone as exc:
            # A reset is not an end: a close-delimited body would look complete.
            raise UpstreamProtocolError(502, f"upstream connection reset: {exc}") from None
        pieces.clear()
        complete = _collect(reader, pieces)
        out = b""
        if pieces:
            data = b"".join(pieces)
            out = _chunk(data) if chunked else data
        if complete and chunked:
            out += b"0\r\n\r\n"
        if out:
            await client.send_all(out)
        if complete:
            return


def _collect(reader: ResponseReader, pieces: list[bytes]) -> bool:
    """Take every body piece already buffered; True when the message is complete."""
    while True:
        event = reader.next_event()
        if event is END:
            return True
        if event is NEED_DATA:
            return False
        if isinstance(event, bytes):
            pieces.append(event)
        else:
            raise UpstreamProtocolError(502, "unexpected data after the upstream response")


async def _upstream_broke(conn: ClientConnection, up: UpstreamConn, head: RequestHead) -> bool:
    """The upstream sent a malformed or truncated response."""
    conn.upstream = None
    up.close()
    conn.ctx.housekeeping.unwatch(conn.io.fd)
    conn.ctx.log.diagnostic("warn", "upstream response broke off", request_id=conn.request_id,
                            peer=up.peer.label)
    if conn.response_started:
        conn.io.abort()  # the client must see the response end abnormally
        return False
    conn.begin_response(502)
    await conn.io.send_all(error_response(502, conn.request_id, conn.ctx.housekeeping.date,
                                          keep_alive=False,
                                          head_only=head.method == b"HEAD"))
    return False
