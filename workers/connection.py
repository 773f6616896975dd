"""The connection actor: one task per client connection, requests in order.

Life of a connection: read a request head (header timeout for the first request, idle
keep-alive timeout between requests), make an :class:`~.exchange.Exchange` for it, run
:func:`~.admission.admit` (route, header policy, auth, limits), then hand the exchange to
the healthcheck, static or proxy handler, which answers through this connection's
:class:`~.port.ClientPort` methods and returns how it ended and whether the connection
may be kept alive. Any protocol error is answered (400, 408, 413, 414, 431, ...) and the
connection closed.

This actor owns the loop, the connection's state and the end of every request: each
request is logged exactly once from its exchange, however it ends (access line, an
audit record on proxy routes, and one error-log line when the outcome is abnormal), and
an upstream connection still held is closed.

All of a connection's work runs inside one cancel scope. Timeouts and client
disconnects cancel that scope (see :mod:`.housekeeping`), after which :meth:`run` knows
from the deadline's reason and the exchange's response :class:`~.exchange.Phase` what it
may still send: a 408, 503 or 504 when no response byte was sent yet, the terminal SSE error
event on an SSE stream (:meth:`~.sse.SseRelay.error_end`), or nothing but the close.
The upstream connection in use, if any, is reset, so the upstream sees the request go
away.
"""

from __future__ import annotations

import contextlib
import math
import socket
import time
import traceback
from collections.abc import Awaitable

import orjson
import trio
from li_httpd.config.acme_paths import ACME_CHALLENGE_PATH
from li_httpd.ops.log.records import Decision, TokenUsage
from li_httpd.ops.log.redact import logged_path
from li_httpd.shm import gcra
from trio.lowlevel import checkpoint

from .acme_responder import challenge_response
from .admission import Admitted, Limited, Reject, admit, settle
from .censor import Hits
from .client_cert import client_identity
from .context import WorkerContext
from .exchange import NORMAL_OUTCOMES, Exchange, Handled, Outcome, Phase, deadline_outcome
from .http1 import CLOSED, END, NEED_DATA, Header, HttpError, RequestHead, RequestReader
from .proxy import proxy_request
from .responses import CONTINUE, error_response, json_response
from .sockio import ClientGone, Deadline, DeadlineReason, PeerGone, SocketIO
from .static_response import serve_static
from .tls_io import StreamIO, TlsHandshakeError, TlsSocketIO

_HEALTH_BODY = orjson.dumps({"status": "ok"})
_ACME_PREFIX = ACME_CHALLENGE_PATH.encode()
_AFTER_TIMEOUT_SEND = 1.0
_QUIET_REASONS: frozenset[DeadlineReason] = frozenset({"idle", "client_gone", "send",
                                                       "handshake"})
_CLIENT_TIMEOUTS: frozenset[DeadlineReason] = frozenset({"header", "body"})
_LIMIT_REASONS = frozenset({"rate", "streams", "table_full"})
_SSE_ERRORS: dict[DeadlineReason, tuple[int, str]] = {
    "upstream_idle": (504, "upstream stream stalled"),
    "stream_max": (504, "stream exceeded its maximum duration"),
    "shutdown": (503, "the gateway shut down before the stream ended"),
}
"""The terminal SSE error event's status and message when a deadline ends a stream."""
_ABNORMAL_MESSAGES: dict[Outcome, str] = {
    "upstream_error": "upstream failed before responding",
    "upstream_cut": "upstream response broke off",
    "ttfb_timeout": "upstream first byte timeout",
    "idle_timeout": "upstream stream stalled",
    "max_duration": "stream exceeded its maximum duration",
    "client_gone": "client went away",
    "shutdown": "request cut by shutdown",
    "timeout": "client timed out",
    "internal_error": "connection error",  # the name crash checks look for
    "censored": "leak censor withheld the response",
}
"""The error-log message of each abnormal end (any outcome but completed/rejected)."""


class ClientConnection:
    """One client connection; see the module docstring. Implements
    :class:`~.port.ClientPort` for the request being handled."""

    __slots__ = ("client", "client_cert", "client_ip", "ctx", "deadline", "exchange", "io",
                 "reader", "requests", "scope")

    def __init__(self, ctx: WorkerContext, sock: socket.socket, peer: object) -> None:
        self.ctx = ctx
        self.scope = trio.CancelScope()
        self.deadline = Deadline(self.scope)
        raw = SocketIO(sock, self.deadline, ctx.timeouts.send)
        self.io: StreamIO = TlsSocketIO(raw, ctx.server_tls) if ctx.server_tls else raw
        self.reader = RequestReader(ctx.limits)
        is_inet = isinstance(peer, tuple) and len(peer) >= 2
        self.client = f"{peer[0]}:{peer[1]}" if is_inet else "-"  # type: ignore[index]
        self.client_ip: str = peer[0] if is_inet else ""  # type: ignore[index]
        self.client_cert: str | None = None
        """The verified client certificate's identity (mTLS), set after the handshake."""
        self.exchange: Exchange | None = None
        """The request being handled; None between requests."""
        self.requests = 0

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
                    if self.ctx.client_identity is not None:
                        parsed, der = self.io.peer_certificate()
                        self.client_cert = client_identity(self.ctx.client_identity,
                                                           parsed, der)
                await self._serve()
            if self.scope.cancelled_caught:
                await self._after_deadline(self.deadline.fired)
            elif self.reader.buffered or self.io.readable_now():
                await self.io.linger()  # the client is still sending: let it read first
        except (PeerGone, TlsHandshakeError):
            self._ended("client_gone")  # the client went away or failed the handshake
        except Exception as exc:  # a bug must cost one connection, never the worker
            exchange = self.exchange
            error = "".join(traceback.format_exception(exc)[-4:])
            if exchange is not None:  # the request's one error line carries the traceback
                exchange.ended("internal_error", error)
            else:
                self.ctx.log.diagnostic("error", "connection error", request_id=b"-",
                                        error=error)
            if exchange is None or exchange.phase is Phase.UNSENT:
                with trio.move_on_after(_AFTER_TIMEOUT_SEND), contextlib.suppress(Exception):
                    await self._send_error(500, keep_alive=False)
        finally:
            self._finish()
            shared.add_connection(-1)
            self.ctx.metrics.connection(-1)
            housekeeping.deadlines.discard(self.deadline)
            housekeeping.unwatch(self.io.fd)
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
                if not first and isinstance(event, RequestHead):
                    # A pipelined request, already buffered: let the worker's other
                    # connections run first, so a flood of requests in one read costs
                    # this connection its turn, not its neighbours theirs.
                    await checkpoint()
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
                request_id = ctx.request_ids.next()
                ctx.log.diagnostic("info", "bad request", request_id=request_id,
                                   client=self.client, status=exc.status, detail=exc.detail)
                await io.send_all(error_response(exc.status, request_id, housekeeping.date,
                                                 keep_alive=False, message=exc.message))
                return
            if event is CLOSED or not isinstance(event, RequestHead):
                return
            first = False
            deadline.clear()  # each phase of the exchange sets its own timer from here
            self.requests += 1
            ctx.shared.count_request()
            if self.requests >= keepalive_requests or housekeeping.draining:
                event.keep_alive = False  # the response says Connection: close
            exchange = self.exchange = Exchange(event, ctx.request_ids.next(), io.sent)
            try:
                handled = await self._handle(exchange)
            except HttpError as exc:  # the request body broke the protocol
                if exchange.phase is Phase.UNSENT:
                    await self._send_error(exc.status, keep_alive=False, message=exc.message)
                handled = Handled("rejected", False)
            exchange.ended(handled.outcome)
            self._finish()
            if not handled.keep_alive or self.requests >= keepalive_requests:
                return

    async def _handle(self, exchange: Exchange) -> Handled:
        """Admit and answer one request."""
        ctx = self.ctx
        head = exchange.head
        if ctx.acme_challenges and head.path.startswith(_ACME_PREFIX):
            # Reserved for ACME HTTP-01 (config rule acme_reserved): never routed.
            keep = head.keep_alive and not head.has_body
            status, response = challenge_response(ctx.acme_challenges, head.method,
                                                  head.path, exchange.request_id,
                                                  ctx.housekeeping.date, keep)
            await self.respond(status, response, Phase.FRAMED)
            return Handled("completed" if status == 200 else "rejected", keep)
        pending = admit(exchange.head, self.client_ip, exchange.request_id, ctx,
                        self.client_cert)
        if isinstance(pending, Limited):  # only with [state] backend = "redis"
            verdict = await self._limit_remote(pending)
        else:
            verdict = pending
        plan = verdict.plan
        exchange.admitted(verdict.request_id, plan.name_bytes if plan else None,
                          plan is not None and plan.group is not None, verdict.caller,
                          verdict.meter if isinstance(verdict, Admitted) else None)
        if isinstance(verdict, Reject):
            exchange.path_invalid = verdict.reason == "bad_path"
            if plan is not None and verdict.reason in _LIMIT_REASONS:
                ctx.metrics.rate_limited(plan.name_bytes)
            return await self.reject(verdict.status, message=verdict.message,
                                     headers=verdict.headers, keep_alive=verdict.keep_alive)
        try:
            return await self._dispatch(exchange, verdict)
        finally:
            exchange.meter = None
            verdict.release(ctx)

    async def _limit_remote(self, pending: Limited) -> Admitted | Reject:
        """Ask Redis for the limit decision (at most ``[state] timeout``)."""
        ctx = self.ctx
        remote = ctx.remote
        assert remote is not None
        limit = pending.plan.limit
        assert limit is not None
        verdict = await remote.admit(pending.digest, limit.rate.interval_ns,
                                     limit.rate.tolerance_ns, limit.max_streams)
        if remote.transitions:
            ctx.report_backend()
        if verdict.fallback:
            ctx.metrics.state_backend("limits", verdict.fallback)
        return settle(pending, verdict, ctx)

    async def _dispatch(self, exchange: Exchange, admitted: Admitted) -> Handled:
        ctx = self.ctx
        plan = admitted.plan
        head = exchange.head
        if plan.healthcheck:
            keep = head.keep_alive and not head.has_body
            await self.respond(200, json_response(
                200, _HEALTH_BODY, exchange.request_id, ctx.housekeeping.date,
                keep_alive=keep, head_only=head.method == b"HEAD"), Phase.FRAMED)
            return Handled("completed", keep)
        if plan.models_list:
            keep = head.keep_alive and not head.has_body
            await self.respond(200, json_response(
                200, ctx.model_lists.body(exchange.key_id), exchange.request_id,
                ctx.housekeeping.date, keep_alive=keep, head_only=head.method == b"HEAD"),
                Phase.FRAMED)
            return Handled("completed", keep)
        if plan.static is not None:
            return await serve_static(self, exchange, admitted, ctx.housekeeping.date)
        metrics = ctx.metrics
        metrics.stream(plan.name_bytes, 1)
        try:
            return await proxy_request(ctx, self, exchange, admitted)
        finally:
            metrics.stream(plan.name_bytes, -1)

    # -- ClientPort: what handlers may do with the client ------------------------------------

    async def receive_body(self) -> bytes | None:
        exchange = self.exchange
        assert exchange is not None, "only while a request is handled"
        reader = self.reader
        if reader.paused:
            await checkpoint()  # the last piece ended a turn's worth of chunks
        while True:
            event = reader.next_event()
            if event is END:
                return None
            if isinstance(event, bytes):
                await self._meter(exchange, len(event))
                return event
            if exchange.head.expect_continue and not exchange.continue_sent:
                exchange.continue_sent = True
                await self.io.send_all(CONTINUE)
            self.deadline.set(self.ctx.timeouts.body, "body")
            try:
                data = await self.io.recv()
            except PeerGone as exc:
                raise ClientGone(str(exc)) from None
            if not data:
                raise HttpError(400, "request body truncated")
            reader.feed(data)

    def respond(self, status: int, data: bytes, phase: Phase) -> Awaitable[None]:
        if self.exchange is not None:
            self.exchange.responding(status, phase)
        return self.io.send_all(data)

    def send(self, data: bytes) -> Awaitable[None]:
        return self.io.send_all(data)

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        await self.io.sendfile(fd, offset, count)

    async def reject(self, status: int, *, message: str | None = None,
                     headers: tuple[Header, ...] = (), keep_alive: bool = True,
                     outcome: Outcome = "rejected",
                     error_type: str | None = None) -> Handled:
        exchange = self.exchange
        assert exchange is not None, "only while a request is handled"
        head = exchange.head
        keep = keep_alive and head.keep_alive and not head.has_body
        await self._send_error(status, keep_alive=keep, message=message, headers=headers,
                               head_only=head.method == b"HEAD", error_type=error_type)
        return Handled(outcome, keep)

    def abort(self) -> None:
        self.io.abort()

    def watch_disconnect(self) -> None:
        self.ctx.housekeeping.watch(self.io.sock, self.io.fd, self.deadline)

    def unwatch_disconnect(self) -> None:
        self.ctx.housekeeping.unwatch(self.io.fd)

    # -- the end of a request ------------------------------------------------------------------

    async def _send_error(self, status: int, *, keep_alive: bool, message: str | None = None,
                          headers: tuple[Header, ...] = (), head_only: bool = False,
                          error_type: str | None = None) -> None:
        """The gateway's JSON error as the response to the current request (or to no
        request: a timeout between requests)."""
        exchange = self.exchange
        if exchange is not None:
            exchange.responding(status, Phase.FRAMED)
            request_id = exchange.request_id
        else:
            request_id = self.ctx.request_ids.next()
        await self.io.send_all(error_response(
            status, request_id, self.ctx.housekeeping.date, keep_alive=keep_alive,
            message=message, extra=headers, head_only=head_only, error_type=error_type))

    async def _meter(self, exchange: Exchange, count: int) -> None:
        """Charge request-body bytes to the caller's byte rate, pausing (backpressure on
        the client) when it sends faster than ``bytes_in_per_sec``."""
        meter = exchange.meter
        if meter is None:
            return
        delay = self.ctx.shared.consume_bytes(meter.entry, meter.key, meter.rate, count)
        if delay:
            with self.deadline.suspended():
                await trio.sleep(delay / gcra.NS_PER_SECOND)

    def _ended(self, outcome: Outcome) -> None:
        if self.exchange is not None:
            self.exchange.ended(outcome)

    def _finish(self) -> None:
        """Log the request that just ended (normally or not) exactly once, and close an
        upstream connection it still holds."""
        exchange = self.exchange
        if exchange is None:
            return
        self.exchange = None
        upstream = exchange.take_upstream()
        if upstream is not None:
            upstream.close()
        log = self.ctx.log
        latency_ms = (time.monotonic() - exchange.started) * 1000
        bytes_in = self.reader.body_bytes
        bytes_out = self.io.sent - exchange.sent_mark
        status = exchange.status
        head = exchange.head
        # No outcome yet: the worker's shutdown cancelled the connection mid-request.
        outcome: Outcome = exchange.outcome or "shutdown"
        path = b"<invalid>" if exchange.path_invalid else logged_path(head.path, head.query)
        key_id = exchange.key_id
        log.access(exchange.request_id, exchange.route, exchange.peer or "-", status, outcome,
                   latency_ms, bytes_in, bytes_out, head.method, path, self.client, key_id)
        metrics = self.ctx.metrics
        metrics.request_done(exchange.route, head.method, status, latency_ms / 1000,
                             exchange.ttfb_ms, exchange.peer)
        if outcome not in NORMAL_OUTCOMES:
            self._log_abnormal(exchange, outcome, bytes_out)
        usage = None
        scanner = exchange.usage
        if scanner is not None:
            used = scanner.finish()
            if used.found:
                model = exchange.model or ""
                plan = self.ctx.models.get(model)
                cost = used.cost(plan.price) if plan is not None else 0.0
                usage = (used.input_tokens, used.output_tokens, used.cache_read_tokens,
                         used.cache_write_tokens, cost)
                if exchange.route is not None:  # a label only for [models] names
                    metrics.usage(exchange.route, model if plan is not None else "other",
                                  usage[:4], cost)
        if exchange.budget is not None:
            self._settle(exchange, usage)
        censor = None
        hits = exchange.censor_hits
        if hits:
            censor = (hits.detectors, hits.paths)
            self._censored(exchange, hits)
        if exchange.audited:
            if exchange.route is not None:
                metrics.stream_outcome(exchange.route, outcome)
            decision: Decision = (
                "rate_limited" if status == 429 else "deny" if status in (401, 403)
                else "error" if status >= 500 or status == 0 else "allow")
            log.audit(exchange.request_id, key_id, exchange.route, exchange.model,
                      head.method, path, status, outcome, decision, exchange.peer,
                      latency_ms, exchange.ttfb_ms, bytes_in, bytes_out, exchange.attempts,
                      usage, censor, self.client_cert)

    def _censored(self, exchange: Exchange, hits: Hits) -> None:
        """Count what the leak censor found (metrics per detector and deny path) and say
        so in the error log: request id, route, what matched; never the secret."""
        route = exchange.route or b"-"
        metrics = self.ctx.metrics
        for kind, counts in (("detector", hits.detectors), ("path", hits.paths)):
            for name, count in counts.items():
                metrics.censored(route, kind, name, count)
        if exchange.outcome != "censored":  # a withheld response gets its own line
            self.ctx.log.diagnostic("warn", "leak censor redacted the response",
                                    request_id=exchange.request_id, route=exchange.route,
                                    detectors=",".join(hits.detectors) or None,
                                    paths=",".join(hits.paths) or None)

    def _settle(self, exchange: Exchange, usage: TokenUsage | None) -> None:
        """Replace the request's budget reservation by what it used: nothing when no
        upstream answered or it answered an error; the reported usage when the response
        completed; otherwise (cut, timed out, the client gone, or a response that
        reports no usage) at least the reservation, as the tokens may have been spent
        (an Anthropic stream reports its input and one output token first: a cut after
        that must not be charged one token)."""
        grant = exchange.budget
        if grant is None:
            return
        exchange.budget = None
        if exchange.upstream_status != 200:
            tokens = micro = 0
        elif usage is not None and exchange.outcome == "completed":
            tokens, micro = sum(usage[:4]), math.ceil(usage[4] * 1_000_000)
        elif usage is not None:
            tokens = max(grant.tokens, sum(usage[:4]))
            micro = max(grant.micro_usd, math.ceil(usage[4] * 1_000_000))
        else:
            tokens, micro = grant.tokens, grant.micro_usd
        remote = self.ctx.remote
        if grant.remote and remote is not None and exchange.key_id is not None:
            remote.settle_budget(exchange.key_id, grant, tokens, micro)
        else:
            self.ctx.shared.budget_settle(grant, tokens, micro)

    def _log_abnormal(self, exchange: Exchange, outcome: Outcome, bytes_out: int) -> None:
        """The one error-log line of a request that ended abnormally."""
        fields: dict[str, object] = {
            "request_id": exchange.request_id, "route": exchange.route,
            "peer": exchange.peer, "client": self.client, "status": exchange.status,
            "outcome": outcome, "bytes_out": bytes_out}
        events = exchange.sse.scanner.events if exchange.sse is not None else None
        if events is not None:
            fields["events"] = events
        if exchange.detail is not None:
            fields["detail"] = exchange.detail
        self.ctx.log.diagnostic("error" if outcome == "internal_error" else "warn",
                                _ABNORMAL_MESSAGES.get(outcome, outcome), **fields)

    async def _after_deadline(self, reason: DeadlineReason) -> None:
        """The connection scope was cancelled by a timeout or a disconnect."""
        exchange = self.exchange
        if exchange is not None:
            upstream = exchange.take_upstream()
            if upstream is not None:
                if reason == "upstream_ttfb" and exchange.group is not None:
                    # The proxy's last possible attempt timed out (see proxy._send_request).
                    exchange.group.failed(upstream.peer, "ttfb_timeout")
                    # The breaker counted it as the cancellation left the attempt
                    # (proxy._on_pool), with whether it was a half-open probe.
                    self.ctx.metrics.upstream_error(upstream.peer.label, "ttfb_timeout")
                    if exchange.attempts is not None:
                        exchange.attempt_failed("ttfb_timeout")
                upstream.io.abort()
        self._ended(deadline_outcome(reason))
        if reason in _QUIET_REASONS or (reason == "shutdown" and exchange is None):
            return
        phase = exchange.phase if exchange is not None else Phase.UNSENT
        with trio.move_on_after(_AFTER_TIMEOUT_SEND):
            try:
                if phase is Phase.UNSENT:
                    status = (408 if reason in _CLIENT_TIMEOUTS
                              else 503 if reason == "shutdown" else 504)
                    await self._send_error(status, keep_alive=False)
                elif phase is Phase.SSE and exchange is not None and exchange.sse is not None:
                    code, message = _SSE_ERRORS.get(reason, (504, "stream aborted"))
                    await self.io.send_all(exchange.sse.error_end(code, message,
                                                                  exchange.request_id))
            except PeerGone:
                pass


async def handle_connection(ctx: WorkerContext, sock: socket.socket, peer: object) -> None:
    """Entry point for the accept loop."""
    await ClientConnection(ctx, sock, peer).run()


__all__ = ["ClientConnection", "handle_connection"]
