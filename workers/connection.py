"""The connection actor: one task per client connection, requests in order.

Life of a connection: read a request head (header timeout for the first request, idle
keep-alive timeout between requests), route it, apply the route's header policy, then
hand it to the healthcheck, static or proxy handler, which writes the whole response and
says whether the connection may be kept alive. Any protocol error is answered (400, 408,
413, 414, 431, ...) and the connection closed.

Every request is logged once, however it ends (access line, and an audit record on
proxy routes): :class:`Exchange` collects what the log needs while the request runs.

All of a connection's work runs inside one cancel scope. Timeouts and client
disconnects cancel that scope (see :mod:`.housekeeping`), after which :meth:`run` knows
from the deadline's reason what was going on and finishes as well as it still can: a
408 or 504 when no response byte was sent yet, an SSE error event on a stream, or just
closing. The upstream connection in use, if any, is closed, so the upstream sees the
request go away.
"""

from __future__ import annotations

import contextlib
import socket
import time
import traceback

import orjson
import trio
from li_httpd.config import Found, PathError, normalize_path
from li_httpd.config.matching import normalize_host
from li_httpd.shm import gcra

from .context import RoutePlan, WorkerContext
from .http1 import CLOSED, END, NEED_DATA, HttpError, RequestHead, RequestReader
from .identity import Caller, key_hash, limit_key_value
from .policy import request_id_from
from .proxy import proxy_request
from .responses import error_response, json_response
from .sockio import Deadline, PeerGone, SocketIO
from .static_response import serve_static
from .tls_io import StreamIO, TlsHandshakeError, TlsSocketIO
from .upstream import UpstreamConn, UpstreamGroup

_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE",
                                    "OPTIONS")}
_HEALTH_BODY = orjson.dumps({"status": "ok"})
_AFTER_TIMEOUT_SEND = 1.0
_QUIET_REASONS = frozenset({"idle", "client_gone", "send", "drain", "handshake"})
_CLIENT_TIMEOUTS = frozenset({"header", "body"})
_NOBODY = Caller(None, False)
_LIMIT_MESSAGES = {"rate": "rate limit exceeded",
                   "streams": "too many concurrent streams for this key",
                   "table_full": "rate limit state is full; retry shortly"}


class Exchange:
    """What one request did, for its access line and audit record."""

    __slots__ = ("audited", "key_id", "method", "model", "path", "peer", "route",
                 "sent_mark", "started", "status", "ttfb_ms")

    def __init__(self, head: RequestHead, sent_mark: int) -> None:
        self.started = time.monotonic()
        self.method = head.method
        self.path = head.path
        self.sent_mark = sent_mark
        self.status = 0
        self.route: bytes | None = None
        self.peer: str | None = None
        self.ttfb_ms: float | None = None
        self.key_id: str | None = None
        self.model: str | None = None
        self.audited = False


class ClientConnection:
    """State of one client connection; see the module docstring."""

    __slots__ = ("client", "ctx", "deadline", "exchange", "io", "metered", "peer", "reader",
                 "request_id", "requests", "response_chunked", "response_sse",
                 "response_started", "scope", "upstream", "upstream_group")

    def __init__(self, ctx: WorkerContext, sock: socket.socket, peer: object) -> None:
        self.ctx = ctx
        self.scope = trio.CancelScope()
        self.deadline = Deadline(self.scope)
        raw = SocketIO(sock, self.deadline, ctx.timeouts.send)
        self.io: StreamIO = TlsSocketIO(raw, ctx.server_tls) if ctx.server_tls else raw
        self.reader = RequestReader(ctx.limits)
        self.peer = peer
        self.client = (f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2
                       else "-")
        self.exchange: Exchange | None = None
        self.upstream: UpstreamConn | None = None
        self.upstream_group: UpstreamGroup | None = None
        self.metered: tuple[int, int, gcra.Rate] | None = None
        """(entry, key, byte rate) when the route meters request-body bytes."""
        self.request_id = b""
        self.requests = 0
        self.response_started = False
        self.response_chunked = False
        self.response_sse = False

    async def run(self) -> None:
        housekeeping = self.ctx.housekeeping
        housekeeping.deadlines.add(self.deadline)
        shared = self.ctx.shared
        shared.add_connection(1)
        self.ctx.metrics.connection(1)
        try:
            with self.scope:
                if isinstance(self.io, TlsSocketIO):
                    self.deadline.set(self.ctx.timeouts.header, "handshake")
                    await self.io.handshake()
                await self._serve()
            if self.scope.cancelled_caught:
                await self._after_deadline(self.deadline.fired)
        except (PeerGone, TlsHandshakeError):
            pass  # the client went away or failed the TLS handshake
        except Exception as exc:  # a bug must cost one connection, never the worker
            self.ctx.log.diagnostic("error", "connection error", request_id=self.request_id,
                                    error="".join(traceback.format_exception(exc)[-4:]))
            if not self.response_started:
                self.begin_response(500)
                with trio.move_on_after(_AFTER_TIMEOUT_SEND), contextlib.suppress(Exception):
                    await self.io.send_all(error_response(
                        500, self.request_id or b"-", self.ctx.housekeeping.date,
                        keep_alive=False))
        finally:
            if self.exchange is not None:
                self._finish()
            shared.add_connection(-1)
            self.ctx.metrics.connection(-1)
            housekeeping.deadlines.discard(self.deadline)
            housekeeping.unwatch(self.io.fd)
            if self.upstream is not None:
                self.upstream.close()
                self.upstream = None
            self.io.close()

    async def _serve(self) -> None:
        ctx = self.ctx
        timeouts = ctx.timeouts
        reader = self.reader
        io = self.io
        deadline = self.deadline
        housekeeping = ctx.housekeeping
        keepalive_requests = ctx.config.config.limits.keepalive_requests
        first = True
        while True:
            if first:
                deadline.set(timeouts.header, "header")
            else:
                deadline.set(timeouts.keepalive, "idle")
            try:
                event = reader.next_event()
                if event is END:  # the end of a previous request that had no body
                    event = reader.next_event()
                while event is NEED_DATA:
                    if first or reader.buffered:
                        data = await io.recv()
                    else:
                        data = await io.recv_after_wait()
                    if data and deadline.reason == "idle":
                        deadline.set(timeouts.header, "header")
                    reader.feed(data)
                    event = reader.next_event()
            except HttpError as exc:
                self.request_id = ctx.request_ids.next()
                ctx.log.diagnostic("info", "bad request", request_id=self.request_id,
                                   client=self.client, status=exc.status, detail=exc.detail)
                await self.io.send_all(error_response(
                    exc.status, self.request_id, housekeeping.date, keep_alive=False,
                    message=exc.message))
                return
            if event is CLOSED or not isinstance(event, RequestHead):
                return
            first = False
            deadline.clear()  # each phase of the exchange sets its own timer from here
            self.requests += 1
            ctx.shared.count_request()
            if self.requests >= keepalive_requests or housekeeping.draining:
                event.keep_alive = False  # the response says Connection: close
            self.response_started = self.response_chunked = self.response_sse = False
            self.exchange = Exchange(event, io.sent)
            try:
                keep = await self._handle(event)
            except HttpError as exc:  # the request body broke the protocol
                if not self.response_started:
                    self.begin_response(exc.status)
                    await self.io.send_all(error_response(
                        exc.status, self.request_id, housekeeping.date, keep_alive=False,
                        message=exc.message))
                keep = False
            self._finish()
            # Between requests no response is in flight: a timeout now gets a 408, not
            # the last response's SSE error chunk.
            self.response_started = self.response_chunked = self.response_sse = False
            if not keep or self.requests >= keepalive_requests:
                return

    async def _handle(self, head: RequestHead) -> bool:
        """Answer one request; True when the connection may serve another."""
        ctx = self.ctx
        self.request_id = ctx.request_ids.next()
        if head.content_length is not None and head.content_length > ctx.limits.max_body:
            return await self.reject(head, 413, keep=False)
        try:
            path = normalize_path(head.path.decode("latin-1"))
        except PathError as exc:
            return await self.reject(head, 400, message=f"invalid path: {exc}")
        host = normalize_host(head.host.decode("latin-1")) if head.host else ""
        method = _METHODS.get(head.method) or head.method.decode("latin-1")
        headers = ({n.decode("latin-1"): v.decode("latin-1") for n, v in head.headers}
                   if ctx.router.needs_headers else {})
        result = ctx.router.lookup(method, host, path, headers)
        if not isinstance(result, Found):
            extra = [(b"allow", ", ".join(result.allow).encode())] if result.allow else []
            return await self.reject(head, result.status, extra=extra)
        plan = ctx.plans[result.route.name]
        exchange = self.exchange
        if exchange is not None:
            exchange.route = plan.name_bytes
            exchange.audited = plan.group is not None
        missing = plan.policy.missing_required(head.headers)
        if missing is not None:
            return await self.reject(head, 400,
                                     message=f"missing required header {missing.decode()}")
        if plan.policy.accepts_request_id:
            self.request_id = request_id_from(head.headers) or self.request_id
        caller = ctx.keyring.identify(head.headers) if ctx.keyring else _NOBODY
        if exchange is not None:
            exchange.key_id = caller.key_id
        if plan.requires_key and caller.key_id is None:
            challenge = b'Bearer realm="li-httpd", error="invalid_token"' \
                if caller.presented else b'Bearer realm="li-httpd"'
            return await self.reject(head, 401, extra=[(b"www-authenticate", challenge)],
                                     message="a valid API key is required"
                                     if caller.presented else "an API key is required")
        limit = plan.limit
        if limit is None:
            return await self._dispatch(head, plan, result.upstream_path, path)
        client_ip = self.peer[0] if isinstance(self.peer, tuple) else ""
        key = key_hash(plan.name_bytes,
                       limit_key_value(limit.key_kind, caller, head.headers, client_ip,
                                       agent_header_allowed=plan.policy.accepts_agent_id),
                       ctx.shared.key_secret)
        admission = ctx.shared.admit(key, limit.rate, limit.max_streams)
        if not admission.allowed:
            ctx.metrics.rate_limited(plan.name_bytes)
            retry = b"%d" % gcra.retry_after_seconds(admission.retry_after_ns)
            return await self.reject(head, 429, extra=[(b"retry-after", retry)],
                                     message=_LIMIT_MESSAGES[admission.reason])
        self.metered = (admission.index, key, limit.byte_rate)
        try:
            return await self._dispatch(head, plan, result.upstream_path, path)
        finally:
            self.metered = None
            ctx.shared.release_stream(admission.index)

    async def _dispatch(self, head: RequestHead, plan: RoutePlan, upstream_path: str,
                        path: str) -> bool:
        ctx = self.ctx
        keep = head.keep_alive
        if plan.healthcheck:
            self.begin_response(200)
            await self.io.send_all(json_response(
                200, _HEALTH_BODY, self.request_id, ctx.housekeeping.date,
                keep_alive=keep and not head.has_body, head_only=head.method == b"HEAD"))
            return keep and not head.has_body
        if plan.static is not None:
            return await serve_static(self, head, plan, upstream_path, path)
        metrics = ctx.metrics
        metrics.stream(plan.name_bytes, 1)
        try:
            return await proxy_request(self, head, plan, upstream_path)
        finally:
            metrics.stream(plan.name_bytes, -1)

    async def meter_body(self, count: int) -> None:
        """Charge request-body bytes to the caller's byte rate, pausing (backpressure on
        the client) when it sends faster than ``bytes_in_per_sec``."""
        metered = self.metered
        if metered is None:
            return
        index, key, rate = metered
        delay = self.ctx.shared.consume_bytes(index, key, rate, count)
        if delay:
            saved = self.deadline.at
            self.deadline.clear()
            await trio.sleep(delay / gcra.NS_PER_SECOND)
            self.deadline.at = saved

    async def reject(self, head: RequestHead, status: int, *, message: str | None = None,
                     keep: bool = True, extra: list[tuple[bytes, bytes]] | None = None) -> bool:
        """Answer with a JSON error without reading the request body. A connection
        whose request body was not read cannot be reused."""
        keep = keep and head.keep_alive and not head.has_body
        self.begin_response(status)
        await self.io.send_all(error_response(
            status, self.request_id, self.ctx.housekeeping.date, keep_alive=keep,
            message=message, extra=extra or (), head_only=head.method == b"HEAD"))
        return keep

    def begin_response(self, status: int) -> None:
        """Called just before a response head is written."""
        self.response_started = True
        if self.exchange is not None:
            self.exchange.status = status

    def _finish(self) -> None:
        """Log the request that just ended (normally or not) exactly once."""
        exchange = self.exchange
        if exchange is None:
            return
        self.exchange = None
        log = self.ctx.log
        latency_ms = (time.monotonic() - exchange.started) * 1000
        bytes_in = self.reader.body_bytes
        bytes_out = self.io.sent - exchange.sent_mark
        status = exchange.status
        log.access(self.request_id, exchange.route, exchange.peer or "-", status, latency_ms,
                   bytes_in, bytes_out, exchange.method, exchange.path)
        self.ctx.metrics.request_done(exchange.route, exchange.method, status,
                                      latency_ms / 1000, exchange.ttfb_ms, exchange.peer)
        if exchange.audited:
            decision = ("rate_limited" if status == 429 else "deny" if status in (401, 403)
                        else "error" if status >= 500 or status == 0 else "allow")
            log.audit(self.request_id, exchange.key_id, exchange.route, exchange.model,
                      exchange.method, exchange.path, status, decision, exchange.peer,
                      latency_ms, exchange.ttfb_ms, bytes_in, bytes_out)

    async def _after_deadline(self, reason: str) -> None:
        """The connection scope was cancelled by a timeout or a disconnect."""
        if self.upstream is not None:
            if reason == "upstream_ttfb" and self.upstream_group is not None:
                self.upstream_group.failed(self.upstream.peer)
            self.upstream.io.abort()
            self.upstream = None
        if reason in _QUIET_REASONS:
            return
        with trio.move_on_after(_AFTER_TIMEOUT_SEND):
            try:
                if not self.response_started:
                    status = 408 if reason in _CLIENT_TIMEOUTS else 504
                    self.begin_response(status)
                    await self.io.send_all(error_response(
                        status, self.request_id or self.ctx.request_ids.next(),
                        self.ctx.housekeeping.date, keep_alive=False))
                elif self.response_sse and self.response_chunked:
                    await self.io.send_all(sse_error_chunk(reason, self.request_id))
            except PeerGone:
                pass


def sse_error_chunk(reason: str, request_id: bytes) -> bytes:
    """A final SSE event telling the client why its stream ended, then the last chunk."""
    message = {"upstream_idle": "upstream stream stalled",
               "stream_max": "stream exceeded its maximum duration",
               "upstream_ttfb": "upstream did not start in time"}.get(reason, "stream aborted")
    event = b"data: " + orjson.dumps({"error": {
        "message": message, "type": "gateway_timeout", "code": 504,
        "request_id": request_id.decode("ascii", "replace")}}) + b"\n\n"
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event)


async def handle_connection(ctx: WorkerContext, sock: socket.socket, peer: object) -> None:
    """Entry point for the accept loop."""
    await ClientConnection(ctx, sock, peer).run()


__all__ = ["ClientConnection", "Deadline", "handle_connection"]
