"""Reverse proxy for one request: upstream choice, retries, streaming both ways.

Request side: the upstream request head is built from the route's header policy (the
allowed client headers, literal injections, ``x-request-id``, the peer's Host and the
gateway's own framing). A body that has fully arrived with the head (the common small
JSON POST) is sent in the same write and stays replayable; a larger body is streamed
from the client to the upstream through one bounded buffer (one receive at a time) and
``Expect: 100-continue`` is answered just before it is read.

Retries and failover among a pool's peers, and the route's fallback chain across pools,
are decided by :mod:`.retry` (pure, table-tested): this module only classifies each
failure (connect, closed, protocol, retryable status, first-byte timeout) and carries
out the decision. A first-byte timeout that can only end in the 504 is left to the
connection's deadline; only when another attempt could follow does the wait for the
head run in a cancel scope of its own (``Deadline.soft``, ~6 us per scope), as it does
for a stream committed early (``early_stream_head``), whose wait gets heartbeats. The
handler sees the client only through :class:`~.port.ClientPort` and records what
happened on the request's :class:`~.exchange.Exchange`.

Response side: allowed headers pass, the gateway sets framing, ``date`` and
``x-request-id``; SSE responses get ``Cache-Control: no-cache`` and
``X-Accel-Buffering: no``. Bodies are forwarded as they arrive, one write per upstream
read (an SSE event reaches the client while the upstream is still generating), with
per-read idle deadlines (stall detector), a total stream deadline, and re-chunking when
the length is unknown. An SSE body that the gateway frames itself (re-chunked, or ended
by the close for an HTTP/1.0 client) goes through an :class:`~.sse.SseRelay`: only whole
events are written, and a failure after the head ends it with one terminal error event;
a close-delimited SSE body is complete only when the close falls between events. While
such a stream's upstream is silent, SSE heartbeat comments go out every
``heartbeat_interval``, only where the client stands between events. The upstream
connection returns to the pool only after a response read exactly to its end.
"""


from __future__ import annotations

import math
from collections.abc import Coroutine
from functools import partial
from typing import Any, Literal

import trio
import trio_parallel
from li_httpd.shm import BudgetDenied, BudgetLimits
from trio.lowlevel import checkpoint

from . import sockio
from .admission import Admitted
from .censor import (
    BodyCensor,
    ByteCensor,
    Hits,
    JsonBodyCensor,
    Rules,
    SseCensor,
    scrub_json,
    scrub_json_spec,
)
from .context import RoutePlan, WorkerContext
from .exchange import Exchange, Handled, Outcome, Phase
from .http1 import (
    END,
    NEED_DATA,
    RequestHead,
    ResponseHead,
    ResponseReader,
    UpstreamProtocolError,
)
from .json_fields import JsonScalar, top_level, with_stream_usage
from .json_redact import JsonRedactError
from .port import ClientPort
from .responses import error_response, render_head
from .retry import (
    FALLBACK_KIND,
    HEALTH_KIND,
    Attempts,
    Decision,
    FailureKind,
    Replay,
    falls_back,
    replay_of,
)
from .sockio import ClientGone, DeadlineReason, PeerGone
from .sse import SseRelay, SseScanner
from .upstream import (
    PeerPool,
    PeerTarget,
    Unavailable,
    UpstreamConn,
    UpstreamConnectError,
    UpstreamGroup,
)
from .usage import ApiShape, UsageScanner, shape_of
from .waitline import QueueEnd, WaitLine

REPLAYABLE_BODY = 64 * 1024
_SSE = b"text/event-stream"
HEARTBEAT = b": heartbeat\n\n"
"""The SSE comment sent while an event stream is silent (parsers ignore it)."""
_FAILURE_MESSAGES: dict[FailureKind, str] = {"connect": "upstream connection failed",
                                             "closed": "upstream failed",
                                             "protocol": "invalid upstream response",
                                             "status": "upstream failed",
                                             "ttfb": "upstream first byte timeout"}
_FAILURE_WORDS: dict[FailureKind, str] = {"connect": "connect", "closed": "closed",
                                          "protocol": "protocol", "ttfb": "ttfb_timeout",
                                          "status": "status"}
"""A failed attempt in metrics and the audit record (a status is ``status_NNN``)."""


class _Withheld(Exception):  # noqa: N818 - internal control flow
    """The leak censor found a secret and its mode is not ``redact``."""


class _FirstByteTimeout(Exception):  # noqa: N818 - internal control flow
    """No response head within the route's ``ttfb_timeout``."""


class _UpstreamFailed(Exception):  # noqa: N818 - internal control flow
    """The exchange with this upstream connection failed before any response byte."""

    def __init__(self, reason: str, request_sent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request_sent = request_sent


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _body_start(client: ClientPort, buffer_whole: bool) -> tuple[bytes, bool]:
    """Read the request body before any upstream is contacted: all of it when the route
    buffers bodies (the parser bounds it by ``limits.max_body``: 413 above), else until
    it is complete or REPLAYABLE_BODY bytes are in hand. Returns (bytes, complete). A
    complete body is replayable on retries; a malformed body fails here (400) and never
    reaches an upstream, even partly."""
    pieces: list[bytes] = []
    total = 0
    while True:
        piece = await client.receive_body()
        if piece is None:
            return b"".join(pieces), True
        pieces.append(piece)
        total += len(piece)
        if total >= REPLAYABLE_BODY and not buffer_whole:
            return b"".join(pieces), False


_FIELDS = (b"model", b"stream", b"max_tokens", b"max_completion_tokens",
           b"max_output_tokens")
_CAPS = (b"max_completion_tokens", b"max_tokens", b"max_output_tokens")
"""The request's cap on output tokens, in the names of the API shapes that have one."""
DEFAULT_MAX_TOKENS = 4096
"""What a budget reserves for a request with no cap, of a model not in ``[models]``."""
BYTES_PER_TOKEN = 1
"""The input a budget reserves: the body's size over this. A token is at least one byte
of the text it encodes, and JSON only adds bytes, so this bounds the input from above
whatever the text (English runs about four bytes a token; "a a a" two): the reservation
never falls short, and the settle gives the difference back."""
_USAGE_INJECTABLE: frozenset[ApiShape | None] = frozenset({"chat", "completions"})
"""The request body's top-level fields the proxy reads (the body itself passes as is)."""


def _models_of(head: RequestHead, fields: dict[bytes, JsonScalar]
               ) -> tuple[str | None, str | None]:
    """The model a request names in its ``x-model`` header and in its JSON body's
    top-level ``model`` (None where absent)."""
    header = None
    for name, value in head.headers:
        if name == b"x-model":
            header = value.decode("latin-1")
            break
    model = fields.get(b"model")
    return header, (model if isinstance(model, str) and model else None)


def _cap(fields: dict[bytes, JsonScalar]) -> int | None:
    """The request's cap on output tokens, read as leniently as the upstream's own
    validation might (an integral float, a numeric string): a budget must not reserve
    less than the upstream will allow."""
    for name in _CAPS:
        value = fields.get(name)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, int) and value > 0:
            return value
    return None


def _asks_for_stream(head: RequestHead, fields: dict[bytes, JsonScalar]) -> bool:
    """Whether the client asked for an event stream: ``"stream": true`` at the top of its
    JSON body, or ``Accept: text/event-stream``."""
    if head.method not in (b"GET", b"POST"):
        return False
    if fields.get(b"stream") is True:
        return True
    return any(name == b"accept" and _SSE in value for name, value in head.headers)


def _request_head(head: RequestHead, plan: RoutePlan, upstream_path: str, host: bytes,
                  request_id: bytes, body: bytes | None) -> bytes:
    target = upstream_path.encode()
    if head.query is not None:
        target += b"?" + head.query
    parts = [head.method, b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    policy = plan.policy
    censor = plan.censor is not None
    for name, value in policy.egress(head.headers, head.connection_tokens):
        if censor and name == b"accept-encoding":
            continue  # the censor reads bodies as sent: ask for them uncompressed
        parts += (name, b": ", value, b"\r\n")
    if censor:
        parts.append(b"accept-encoding: identity\r\n")
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


def _response_headers(plan: RoutePlan, response: ResponseHead,
                      head: RequestHead) -> tuple[list[tuple[bytes, bytes]], bool]:
    headers = plan.policy.response(response.headers, response.connection_tokens)
    sse = False
    for name, value in headers:
        if name == b"content-type" and value[:len(_SSE)].lower() == _SSE:
            sse = True
            break
    if sse:
        headers = [h for h in headers if h[0] != b"cache-control"]
        headers += ((b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"))
    if head.method == b"HEAD" and response.content_length is not None:
        headers.append((b"content-length", b"%d" % response.content_length))
    return headers, sse


def _collect(reader: ResponseReader, pieces: list[bytes]) -> bool:
    """Take the body pieces already buffered, up to one turn's worth (the reader pauses
    after a bounded number of chunks); True when the message is complete."""
    while True:
        event = reader.next_event()
        if event is END:
            return True
        if event is NEED_DATA:
            return False
        if isinstance(event, bytes):
            pieces.append(event)
            if reader.paused:
                return False
        else:
            raise UpstreamProtocolError(502, "unexpected data after the upstream response")


def _whole_events(pieces: list[bytes]) -> bool:
    """True when an event stream made of ``pieces`` ends between events."""
    scanner = SseScanner()
    for piece in pieces:
        scanner.feed(piece)
    return scanner.at_boundary


def _outgoing(pieces: list[bytes], complete: bool, chunked: bool, relay: SseRelay | None,
              until_close: bool, usage: UsageScanner | None,
              censor: BodyCensor | SseCensor | None) -> bytes:
    """What to write to the client for the body ``pieces`` just decoded: through
    ``relay`` for an SSE body (only whole events; the held rest once ``complete``, which
    for a body that ends ``until_close`` must fall between events), then through the
    leak ``censor``, chunk-framed when ``chunked``, with the last chunk once
    ``complete``. ``usage`` reads the upstream's bytes. Raises :class:`_Withheld` when
    the censor trips."""
    data = b"".join(pieces) if pieces else b""
    if usage is not None and data:
        usage.feed(data)
    if relay is not None:
        if data:
            data = relay.relay(data)
        if complete:
            if until_close and not relay.complete:
                raise UpstreamProtocolError(502, "upstream closed mid-event")
            data += relay.finish()
    if censor is not None:
        try:
            data = censor.feed(data) if data else b""
            if complete:
                data += censor.finish()
        except JsonRedactError:
            # The walker's message may quote bytes of the body: not for the error log.
            raise UpstreamProtocolError(502, "upstream JSON body is malformed") from None
        if censor.tripped:
            raise _Withheld
    out = (_chunk(data) if chunked else data) if data else b""
    if complete and chunked:
        out += b"0\r\n\r\n"
    return out


def _encoded(headers: list[tuple[bytes, bytes]]) -> bool:
    """A body with a content coding other than identity (gzip, br, ...)."""
    return any(name == b"content-encoding" and value.strip().lower() not in (b"", b"identity")
               for name, value in headers)


def _censor_headers(rules: Rules, headers: list[tuple[bytes, bytes]],
                    exchange: Exchange) -> list[tuple[bytes, bytes]]:
    """Response header values (only the allowed ones reach here) through the detectors:
    a ``Location`` with a key in its query is redacted like a body."""
    out = headers
    for index, (name, value) in enumerate(headers):
        found, _ = rules.scan(value, 0, True)
        if not found:
            continue
        if out is headers:
            out = list(headers)
        hits = exchange.censor_hits
        if hits is None:
            hits = exchange.censor_hits = Hits()
        for start, end, kind in reversed(found):
            hits.detector(kind)
            value = value[:start] + b"[REDACTED:" + kind.encode() + b"]" + value[end:]
        out[index] = (name, value)
    return out


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return False


INLINE_SCRUB = 64 * 1024
"""Whole JSON bodies larger than this are scrubbed in a worker process (trio-parallel),
not on the event loop."""


async def _scrub_whole(rules: Rules, pieces: list[bytes], sse: bool,
                       headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, Hits]:
    """A whole response body through the censor: ``(body, hits)``; the body is None when
    the censor tripped (a hit under ``block_502`` / ``abort_stream``)."""
    body = b"".join(pieces)
    if not body:
        return body, Hits()
    if sse:
        events = SseCensor(rules)
        out = events.feed(body) + events.finish()
        return (None if events.tripped else out), events.hits
    if _is_json(headers):
        if len(body) > INLINE_SCRUB:
            scrubbed = await trio_parallel.run_sync(scrub_json_spec, rules.spec, body,
                                                    cancellable=True)
        else:
            scrubbed = scrub_json(rules, body)
        if scrubbed is not None:
            out, hits = scrubbed
            return (None if hits and not rules.redacts else out), hits
    censor = ByteCensor(rules)
    out = censor.feed(body, True)
    return (None if censor.tripped else out), censor.hits


def proxy_request(ctx: WorkerContext, client: ClientPort, exchange: Exchange,
                  admitted: Admitted) -> Coroutine[Any, Any, Handled]:
    """Proxy one admitted request and write its response to ``client``. Returns the
    handler's coroutine itself (one await layer less on every proxied request)."""
    return _Proxy(ctx, client, exchange, admitted).run()


class _Proxy:
    """One proxied request: attempts on upstream peers, then the relay of the answer."""

    __slots__ = ("beat_at", "censor", "client", "ctx", "exchange", "head", "plan",
                 "queued_probe", "shape", "upstream_path")

    def __init__(self, ctx: WorkerContext, client: ClientPort, exchange: Exchange,
                 admitted: Admitted) -> None:
        self.ctx = ctx
        self.client = client
        self.exchange = exchange
        self.head = exchange.head
        self.plan = admitted.plan
        self.upstream_path = admitted.upstream_path
        self.beat_at = 0.0
        """When the next heartbeat is due on a stream committed early."""
        self.queued_probe = False
        """Whether the peer a wait in the route's queue ended with was admitted as a
        half-open probe (the group's own flag may be another request's by then)."""
        self.shape: ApiShape | None = None
        """The API shape whose token usage the response carries (``usage_accounting``)."""
        self.censor: BodyCensor | SseCensor | None = None
        """The leak censor following a body relayed as it arrives."""

    async def run(self) -> Handled:
        client, head, exchange, ctx, plan = (self.client, self.head, self.exchange, self.ctx,
                                            self.plan)
        group = plan.group
        if group is None:  # validation guarantees a target; stay total anyway
            return await client.reject(502, outcome="upstream_error")
        start, complete = await _body_start(client, plan.buffer_body) \
            if head.has_body else (b"", True)
        body = start if complete else None
        fields = top_level(start, _FIELDS, complete=complete) if start else {}
        header_model, body_model = _models_of(head, fields)
        if header_model is not None and body_model is not None and header_model != body_model:
            # The upstream reads the body: routing, access and price must not differ.
            return await client.reject(
                400, message="the x-model header and the body's model differ",
                error_type="model_mismatch")
        model = body_model if body_model is not None else header_model
        exchange.model = model[:128] if model is not None else None  # for the logs
        budget = ctx.budgets.get(exchange.key_id) if ctx.budgets and exchange.key_id else None
        if head.has_body and (budget is not None or ctx.model_lists.restricts(exchange.key_id)):
            # The model decides what this caller may do and pay: it must be the one the
            # upstream will read, so the whole body must have been read and parsed.
            if not complete:
                return await client.reject(
                    400, message="this key's requests are checked by model: the body "
                    "must fit the route's request buffering", error_type="model_unreadable")
            if body_model is None and header_model is None and start:
                return await client.reject(
                    400, message="the request's model cannot be read: the body is not a "
                    "JSON object naming one", error_type="model_unreadable")
        if model is not None:
            if plan.model_routing:
                entry = ctx.models.get(model)
                if entry is None:
                    return await client.reject(
                        404, message=f"model {model!r} does not exist", outcome="rejected",
                        error_type="model_not_found")
                group = entry.group
            if not ctx.model_lists.allows(exchange.key_id, model):
                return await client.reject(
                    403, message=f"this key may not use model {model!r}", outcome="rejected",
                    error_type="model_not_allowed")
        if plan.accounting or budget is not None:  # a budget is settled on the usage
            self.shape = shape_of(self.upstream_path)
        if budget is not None and self.shape is not None:
            refused = await self._reserve(budget, fields, len(start))
            if refused is not None:
                return refused
        if plan.accounting and body is not None and plan.inject_usage \
                and self.shape in _USAGE_INJECTABLE and fields.get(b"stream") is True:
            body = start = with_stream_usage(body)
        replay = replay_of(head.method, body is not None)
        if plan.early_head and _asks_for_stream(head, fields):
            await self._commit_stream()
        chain = plan.fallback
        policy = plan.fallback_policy
        pools_left = len(chain)
        while True:
            handled = await self._on_pool(group, replay, body, start,
                                          pools_left if policy is not None else 0)
            if handled is not None:
                return handled
            # The pool failed in a way the route's fallback takes over.
            failed = group
            group = chain[len(chain) - pools_left]
            pools_left -= 1
            attempts = exchange.attempts
            ctx.log.diagnostic("warn", "falling back to the next pool",
                               request_id=exchange.request_id, failed=failed.name,
                               after=attempts[-1][2] if attempts else None, pool=group.name)

    async def _reserve(self, budget: tuple[int, BudgetLimits],
                       fields: dict[bytes, JsonScalar], size: int) -> Handled | None:
        """Reserve the request's worst case against the caller's budget (settled when the
        request ends, see ``ClientConnection._finish``): None when it fits, else the 429
        (no upstream call)."""
        exchange, ctx = self.exchange, self.ctx
        model = ctx.models.get(exchange.model or "")
        output = 0 if self.shape == "embeddings" else _cap(fields) or (
            model.default_max_tokens if model is not None else DEFAULT_MAX_TOKENS)
        estimate = size // BYTES_PER_TOKEN + 1
        price = model.price if model is not None else None
        micro = 0 if price is None else math.ceil(estimate * price.input
                                                  + output * price.output)
        index, limits = budget
        remote = ctx.remote
        if remote is None:
            grant = ctx.shared.budget_reserve(index, limits, estimate + output, micro)
        else:  # [state] backend = "redis"
            key_id = exchange.key_id
            assert key_id is not None, "only a key with a budget reserves"
            shared = await remote.reserve_budget(key_id, limits, estimate + output, micro)
            if remote.transitions:
                ctx.report_backend()
            if shared is None:  # Redis could not decide: budgets_on_error
                policy = remote.budgets_on_error
                ctx.metrics.state_backend("budgets", policy)
                if policy == "allow":
                    return None
                if policy == "deny":
                    return await self.client.reject(
                        503, message="budget state is unavailable; retry shortly",
                        headers=((b"retry-after", b"1"),), error_type="budget_unavailable")
                shared = ctx.shared.budget_reserve(index, limits, estimate + output, micro)
            grant = shared
        if isinstance(grant, BudgetDenied):
            what = "token" if grant.limit == "tokens" else "dollar"
            return await self.client.reject(
                429, message=f"the key's {what} budget is exhausted ({grant.reason})",
                headers=((b"retry-after", b"%d" % grant.retry_after_s),),
                error_type="budget_exceeded")
        exchange.budget = grant
        return None

    async def _on_pool(self, group: UpstreamGroup, replay: Replay, body: bytes | None,
                       start: bytes, pools_left: int) -> Handled | None:
        """Attempts on the peers of ``group`` (retries and failover within it): the
        final answer, or None when the pool failed and the route's next pool takes over
        (``pools_left`` > 0 and :func:`~.retry.falls_back` says so)."""
        client, exchange, ctx = self.client, self.exchange, self.ctx
        policy = self.plan.fallback_policy
        attempts = Attempts(replay, group.settings.max_retries)
        shared = group.shared
        last: FailureKind | None = None
        while True:
            # Each attempt runs under its own timers (connect, TTFB, idle); none of an
            # earlier phase (the request head's, a failed attempt's TTFB) may fire now.
            client.deadline.clear()
            line = self.plan.queue
            taken: PeerPool | Unavailable | Literal["queued"]
            if line is not None and last is None and line.someone_waits() and not falls_back(
                    "connect", replay=replay, policy=policy, pools_left=pools_left):
                taken = "queued"  # others wait for this pool already: no overtaking
            else:
                taken = group.take(exclude=attempts.excluded)
            if isinstance(taken, str):
                found = await self._no_peer(group, taken, attempts, last, pools_left)
                if not isinstance(found, PeerPool):
                    return found
                pool, probe = found, self.queued_probe
            else:
                pool = taken
                probe = group.probe_taken  # a half-open probe reports its result below
            peer = pool.peer
            exchange.attempt(group, peer)  # take() counted it in flight
            failure: FailureKind
            reused = sent = retry_status = counted = False
            try:
                try:
                    up = await pool.acquire(client.deadline, ctx.timeouts.send)
                except UpstreamConnectError as exc:
                    ctx.log.diagnostic("warn", "upstream connect failed",
                                       request_id=exchange.request_id, peer=peer.label,
                                       error=str(exc))
                    failure = "connect"
                else:
                    exchange.connected(up)
                    try:
                        # Whether a first-byte timeout could lead to another attempt.
                        soft = (attempts.replay == "always" and attempts.failovers_left > 0
                                and len(group.pools) > 1) or falls_back(
                            "ttfb_timeout", replay=replay, policy=policy,
                            pools_left=pools_left)
                        response = await self._send_request(up, body, start, soft)
                    except _UpstreamFailed as failed:
                        self._drop_upstream()
                        ctx.log.diagnostic("warn", "upstream failed",
                                           request_id=exchange.request_id, peer=peer.label,
                                           error=failed.reason, reused=up.reused)
                        failure, reused, sent = "closed", up.reused, failed.request_sent
                    except UpstreamProtocolError as invalid:
                        # Not `as exc`: mypyc gives a name one type per function, and
                        # `exc` is the UpstreamConnectError above.
                        self._drop_upstream()
                        ctx.log.diagnostic("warn", "invalid upstream response",
                                           request_id=exchange.request_id, peer=peer.label,
                                           error=invalid.detail)
                        failure = "protocol"
                    except _FirstByteTimeout:
                        # No line of its own: the request's abnormal end, or the
                        # fallback's line, says it (the audit record lists the attempt).
                        self._drop_upstream()
                        failure = "ttfb"
                    else:
                        status = response.status
                        # The breaker decides at the head: any 5xx the peer answered.
                        group.circuit_result(peer, "5xx" if status >= 500 else None, probe)
                        counted = True
                        exhausted = status in group.settings.retry_statuses
                        if exhausted:
                            decision = self._decide(group, attempts, peer, "status",
                                                    f"status_{status}")
                            retry_status = decision.action != "fail"
                            if retry_status:
                                # Another attempt, after the finally below.
                                self._drop_upstream()
                            # No other attempt on this pool: the next pool, or the
                            # upstream's own answer goes to the client.
                            elif falls_back("status", status=status, replay=replay,
                                            policy=policy, pools_left=pools_left):
                                self._drop_upstream()
                                return None
                        elif falls_back("status", status=status, replay=replay,
                                        policy=policy, pools_left=pools_left):
                            # A status only the fallback names (429): not the peer's
                            # failure, but this pool's answer is not the one wanted.
                            self._note_failure(peer, f"status_{status}")
                            self._drop_upstream()
                            return None
                        else:
                            group.succeeded(peer)
                        if not retry_status:
                            handled = await self._relay(pool, up, response)
                            if exhausted and handled.outcome == "completed":
                                exchange.detail = f"status {status} after retries"
                                return Handled("upstream_error", handled.keep_alive)
                            return handled
                if not counted:  # a failure before any response head
                    group.circuit_result(peer, HEALTH_KIND[failure], probe)
                    counted = True
            finally:
                shared.add_active(peer.shared_id, -1)
                client.unwatch_disconnect()  # no disconnect watch outlives its attempt
                if not counted and client.deadline.fired == "upstream_ttfb":
                    # The last attempt's first-byte timeout: the connection answers
                    # the 504 (see _send_request). A result, for a probe too: a peer
                    # that hangs must open its half-open circuit again.
                    group.circuit_result(peer, "ttfb_timeout", probe)
                elif probe and not counted:  # cancelled: the probe's place is free again
                    group.circuit_abandoned(peer)
            if retry_status:
                # Not a `continue` inside the try: mypyc cannot compile one in try/finally.
                continue
            # A failure before any response byte.
            decision = self._decide(group, attempts, peer, failure, _FAILURE_WORDS[failure],
                                    reused=reused, request_sent=sent)
            last = failure
            if decision.action != "fail":
                continue
            # The connection survives when the request body was read to its end.
            keep = attempts.replay != "never" and failure != "protocol"
            return await self._pool_failed(failure, replay, pools_left, keep)

    async def _no_peer(self, group: UpstreamGroup, why: Unavailable | Literal["queued"],
                       attempts: Attempts, last: FailureKind | None,
                       pools_left: int) -> PeerPool | Handled | None:
        """``group`` has no peer to try now (``why``): a peer after a wait in the route's
        queue, else the answer (None: the route's next pool takes over)."""
        exchange, replay = self.exchange, attempts.replay
        keep = replay != "never"
        if last is not None:  # every peer failed; the last failure speaks
            return await self._pool_failed(last, replay, pools_left, keep)
        if why != "queued" and falls_back("connect", replay=replay,
                                          policy=self.plan.fallback_policy,
                                          pools_left=pools_left):
            exchange.pool_down(group, why)
            return None
        line = self.plan.queue
        if line is not None:
            waited = await self._wait_in_line(line, group, attempts)
            if isinstance(waited, PeerPool):
                exchange.pool_down(group, "queued")
                return waited
            exchange.pool_down(group, f"queue_{'full' if waited == 'overflow' else waited}")
            return await self._fail(
                503, "no upstream peer became available in time" if waited == "timeout"
                else "too many requests are waiting for an upstream peer", "rejected", keep,
                headers=((b"retry-after", b"%d" % group.seconds_until_a_peer_is_up()),))
        exchange.pool_down(group, why)
        if why == "saturated":
            self.ctx.metrics.saturated(group.name)
            return await self._fail(
                group.settings.saturated_status,
                "all upstream peers are at their concurrency limit", "rejected", keep,
                headers=((b"retry-after", b"1"),))
        # Nothing was tried: the pool is down. Say when to come back.
        return await self._fail(
            503, "all upstream peers are down", "upstream_error", keep,
            headers=((b"retry-after", b"%d" % group.seconds_until_a_peer_is_up()),))

    async def _wait_in_line(self, line: WaitLine, group: UpstreamGroup,
                            attempts: Attempts) -> PeerPool | QueueEnd:
        """Wait in the route's queue, watching for the client hanging up (which cancels
        the connection and with it the wait: the entry leaves the queue at once)."""
        client, metrics, route = self.client, self.ctx.metrics, self.plan.name_bytes
        excluded = attempts.excluded

        def take() -> PeerPool | Unavailable:
            got = group.take(exclude=excluded)
            self.queued_probe = group.probe_taken  # before any other task picks
            return got

        def give_back(pool: PeerPool) -> None:
            group.shared.add_active(pool.peer.shared_id, -1)
            if self.queued_probe:
                group.circuit_abandoned(pool.peer)

        committed = self.exchange.sse if self.exchange.phase is Phase.SSE else None
        waited: PeerPool | QueueEnd | None = None
        client.watch_disconnect()
        try:
            if committed is None:
                waited = await line.wait(take)
            else:
                # A stream committed early (early_stream_head) shows it is alive while
                # it waits, as it does while the upstream prepares its head.
                waited = await line.wait_beating(
                    take, partial(self._beat_while_queued, committed), give_back)
        finally:
            client.unwatch_disconnect()
            if waited is None:  # cancelled: the client hung up, or the worker stops
                metrics.queue_outcome(route, "disconnected" if client.deadline.fired
                                      == "client_gone" else "cancelled")
        metrics.queue_outcome(route, "released" if isinstance(waited, PeerPool) else waited)
        return waited

    async def _beat_while_queued(self, committed: SseRelay) -> None:
        """SSE heartbeats every ``heartbeat_interval`` until cancelled. A client gone is
        left to the disconnect watch (an error here would end the wait as a crash)."""
        chunk = _chunk(HEARTBEAT) if committed.chunked else HEARTBEAT
        while True:
            await trio.sleep(max(0.0, self.beat_at - sockio.now()))
            try:
                await self.client.send(chunk)
            except PeerGone:
                return
            self.beat_at = sockio.now() + self.plan.heartbeat

    async def _pool_failed(self, failure: FailureKind, replay: Replay, pools_left: int,
                           keep: bool) -> Handled | None:
        """The pool's last attempt failed with ``failure`` and it has nothing left to
        try: None when the route's next pool takes over, else the gateway's answer."""
        if falls_back(FALLBACK_KIND[failure], replay=replay, policy=self.plan.fallback_policy,
                      pools_left=pools_left):
            return None
        if failure == "ttfb":  # closes, as when the connection answers it (below)
            return await self._fail(504, _FAILURE_MESSAGES[failure], "ttfb_timeout", False)
        return await self._fail(502, _FAILURE_MESSAGES[failure], "upstream_error", keep)

    def _decide(self, group: UpstreamGroup, attempts: Attempts, peer: PeerTarget,
                failure: FailureKind, words: str, *, reused: bool = False,
                request_sent: bool = False) -> Decision:
        """Decide after a failed attempt and account for it (health, metrics, audit)."""
        decision = attempts.decide(failure, reused=reused, request_sent=request_sent)
        attempts.record(decision, peer.index)
        if decision.blame_peer:
            group.failed(peer, HEALTH_KIND[failure])
        self._note_failure(peer, words)
        return decision

    def _note_failure(self, peer: PeerTarget, words: str) -> None:
        self.ctx.metrics.upstream_error(peer.label, words)
        self.exchange.attempt_failed(words)

    async def _fail(self, status: int, message: str, outcome: Outcome, keep_alive: bool,
                    headers: tuple[tuple[bytes, bytes], ...] = ()) -> Handled:
        """The gateway's answer when no upstream answer can be relayed: its JSON error, or
        the terminal error event of a stream committed early."""
        exchange = self.exchange
        if exchange.phase is Phase.SSE and exchange.sse is not None:
            exchange.detail = message
            await self.client.send(exchange.sse.error_end(status, message,
                                                          exchange.request_id))
            return Handled(outcome, False)
        return await self.client.reject(status, message=message, outcome=outcome,
                                        keep_alive=keep_alive, headers=headers)

    async def _commit_stream(self) -> None:
        """Send the event-stream head before any upstream answered (``early_stream_head``):
        from here on a failure is a terminal error event, and the wait for the upstream's
        head gets heartbeats."""
        head, exchange = self.head, self.exchange
        chunked = head.version == b"1.1"
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                   (b"x-accel-buffering", b"no"), (b"x-request-id", exchange.request_id),
                   (b"date", self.ctx.housekeeping.date)]
        if chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        if not (chunked and head.keep_alive):
            headers.append((b"connection", b"close"))
        exchange.sse = SseRelay(chunked)
        self.beat_at = sockio.now() + self.plan.heartbeat
        await self.client.respond(200, render_head(200, headers), Phase.SSE)

    def _drop_upstream(self) -> None:
        up = self.exchange.take_upstream()
        if up is not None:
            up.close()

    async def _send_request(self, up: UpstreamConn, body: bytes | None, start: bytes,
                            soft_ttfb: bool) -> ResponseHead:
        """Send the request (the whole ``body``, or ``start`` then the streamed rest) and
        read the response head (skipping 1xx). ``soft_ttfb``: a first-byte timeout raises
        :class:`_FirstByteTimeout` (another attempt may follow) instead of ending the
        request through the connection's deadline."""
        head, client, exchange = self.head, self.client, self.exchange
        request_head = _request_head(head, self.plan, self.upstream_path,
                                     up.peer.host_header, exchange.request_id, body)
        io = up.io
        try:
            if body is not None:
                await io.send_all(request_head + body if body else request_head)
            else:
                await io.send_all(request_head + (_chunk(start) if head.chunked else start))
                await self._stream_request_body(up)
        except ClientGone:
            raise  # the connection ends quietly; the peer did nothing wrong
        except PeerGone as exc:
            raise _UpstreamFailed(str(exc), request_sent=False) from None
        up.reader.expect_response(head.method == b"HEAD")
        client.watch_disconnect()
        deadline = client.deadline
        ttfb_at = sockio.now() + self.plan.ttfb_timeout
        committed = exchange.sse if exchange.phase is Phase.SSE else None
        if committed is None and not soft_ttfb:
            # The common case: the timeout can only end in the 504, which the connection
            # answers when its deadline fires (no cancel scope of its own: ~6 us each).
            deadline.set_at(ttfb_at, "upstream_ttfb")
            return await self._read_head(up)
        while True:
            if committed is not None and self.beat_at < ttfb_at:
                deadline.set_at(self.beat_at, "heartbeat")
            else:
                deadline.set_at(ttfb_at, "upstream_ttfb")
            # Both deadlines cancel only this scope (Deadline.soft): the proxy decides.
            with trio.CancelScope() as scope:
                deadline.soft = scope
                try:
                    return await self._read_head(up)
                finally:
                    deadline.soft = None
            if deadline.reason == "upstream_ttfb" or committed is None:
                raise _FirstByteTimeout
            if committed.client_between_events:
                await client.send(_chunk(HEARTBEAT) if committed.chunked else HEARTBEAT)
            self.beat_at = sockio.now() + self.plan.heartbeat

    async def _read_head(self, up: UpstreamConn) -> ResponseHead:
        """Read the upstream's response head (after any 1xx). Cancelled by a deadline, it
        can be called again: what was read stays in the reader."""
        reader, io = up.reader, up.io
        waiting = True
        while True:
            event = reader.next_event()
            if event is NEED_DATA:
                reader.feed(await (io.recv_after_wait() if waiting else io.recv()))
                waiting = False
                continue
            if isinstance(event, ResponseHead):
                self.exchange.first_byte(event.status)
                return event
            raise _UpstreamFailed("closed before responding", request_sent=True)

    async def _stream_request_body(self, up: UpstreamConn) -> None:
        """Copy the rest of the request body to the upstream, one read at a time."""
        upstream = up.io
        chunked = self.head.chunked
        while True:
            piece = await self.client.receive_body()
            if piece is None:
                if chunked:
                    await upstream.send_all(b"0\r\n\r\n")
                return
            await upstream.send_all(_chunk(piece) if chunked else piece)

    async def _relay(self, pool: PeerPool, up: UpstreamConn, response: ResponseHead) -> Handled:
        """Forward the response head and body to the client."""
        head, client, exchange = self.head, self.client, self.exchange
        if exchange.phase is Phase.SSE and exchange.sse is not None:
            return await self._relay_committed(pool, up, response, exchange.sse)
        reader = up.reader
        headers, sse = _response_headers(self.plan, response, head)
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
            except UpstreamProtocolError as exc:
                return await self._upstream_broke(up, exc.detail)
        until_close = (sse and response.content_length is None and not response.chunked
                       and head.method != b"HEAD" and response.status not in (204, 304))
        if complete and until_close and not _whole_events(pieces):
            # The upstream closed mid-event before the head went out: a cut, not a body.
            return await self._upstream_broke(up, "upstream closed mid-event")
        plan = self.plan
        if response.status >= 400 and not plan.expose_errors:
            return await self._generic_error(pool, up, response, complete)
        rules = plan.censor
        has_body = head.method != b"HEAD" and response.status not in (204, 304)
        json_stream = False
        if rules is not None:
            headers = _censor_headers(rules, headers, exchange)
        if rules is not None and has_body and _encoded(headers):
            # Compressed bytes hide every secret from the censor: fail closed.
            return await self._withhold(pool, up, response, complete,
                                        "compressed body (content-encoding) under the censor")
        if rules is not None and has_body:
            length = response.content_length
            json = not sse and _is_json(headers)
            if not complete and not sse and (json or rules.on_detect == "block_502") \
                    and (length is None or length <= rules.max_scrub_bytes):
                # A JSON body is rewritten whole, and under block_502 a hit must become
                # a 502: read the body before the head goes out.
                try:
                    complete = await self._read_whole(up, pieces, rules.max_scrub_bytes)
                except UpstreamProtocolError as exc:
                    return await self._upstream_broke(up, exc.detail)
            if complete:
                try:
                    scrubbed = await _scrub_whole(rules, pieces, sse, headers)
                except JsonRedactError:
                    return await self._withhold(pool, up, response, complete,
                                                "JSON body the deny paths cannot read")
                if exchange.censor_hits:
                    scrubbed[1].merge(exchange.censor_hits)
                exchange.censor_hits = scrubbed[1]
                if scrubbed[0] is None:
                    return await self._withhold(pool, up, response, complete)
                pieces = [scrubbed[0]] if scrubbed[0] else []
            elif json and rules.deny is not None:
                if rules.oversize_json == "block":
                    return await self._withhold(pool, up, response, False,
                                                "JSON body over max_scrub_bytes")
                json_stream = rules.oversize_json == "stream"
        # Under the censor, a streamed body whose length changes (an event stream read
        # as events, a JSON body rewritten as it streams) is re-framed.
        reframe = json_stream or (rules is not None and sse and has_body and not complete)
        chunked = ends_on_close = False
        if not has_body:
            pass
        elif complete:
            headers.append((b"content-length", b"%d" % sum(map(len, pieces))))
        elif response.content_length is not None and not reframe:
            headers.append((b"content-length", b"%d" % response.content_length))
        elif head.version == b"1.1":
            headers.append((b"transfer-encoding", b"chunked"))
            chunked = True
        else:
            keep = False  # HTTP/1.0 client, unknown length: the close ends the body
            ends_on_close = True
        headers.append((b"x-request-id", exchange.request_id))
        headers.append((b"date", self.ctx.housekeeping.date))
        if not keep:
            headers.append((b"connection", b"close"))
        out = render_head(response.status, headers)
        relay = None
        if sse and not complete and (chunked or ends_on_close):
            # Only complete events go out; a failure ends the stream with an error event.
            relay = exchange.sse = SseRelay(chunked)
        censor: BodyCensor | SseCensor | None = None
        if rules is not None and has_body and not complete:
            # An SSE body the gateway frames arrives here as whole events; a JSON body over
            # max_scrub_bytes goes through the streaming walker (re-chunked); any other
            # body keeps its length if it has one (a mark of the secret's length).
            censor = self.censor = (
                SseCensor(rules) if relay is not None else JsonBodyCensor(rules)
                if json_stream else ByteCensor(rules, response.content_length is not None))
            if exchange.censor_hits:
                censor.hits.merge(exchange.censor_hits)  # what the headers held
            exchange.censor_hits = censor.hits
        if self.shape is not None and response.status == 200:
            usage = exchange.usage = UsageScanner(self.shape, sse)
        else:
            usage = None
        if pieces:
            data = b"".join(pieces)
            if usage is not None:
                usage.feed(data)
            if relay is not None:
                data = relay.relay(data)
            if censor is not None and data:
                try:
                    data = censor.feed(data)
                except JsonRedactError:
                    return await self._upstream_broke(up, "upstream JSON body is malformed")
                if censor.tripped:
                    return await self._withhold(pool, up, response, complete)
            if data:
                out += _chunk(data) if chunked else data
        if complete and chunked:
            out += b"0\r\n\r\n"
        phase = (Phase.SSE if relay is not None else Phase.CHUNKED if chunked
                 else Phase.FRAMED)
        await client.respond(response.status, out, phase)
        if not complete:
            framed = response.content_length is not None
            idle = plan.read_timeout if framed else plan.idle_timeout
            try:
                if relay is not None and plan.heartbeat:
                    await self._stream_with_heartbeats(up, relay, idle, until_close)
                else:
                    await self._stream_response_body(up, chunked, idle, relay, until_close)
            except UpstreamProtocolError as exc:
                return await self._upstream_broke(up, exc.detail)
            except _Withheld:
                return await self._withhold(pool, up, response, False)
        client.unwatch_disconnect()
        exchange.take_upstream()
        if response.keep_alive:
            pool.release(up)
        else:
            up.close()
        return Handled("completed", keep)

    async def _relay_committed(self, pool: PeerPool, up: UpstreamConn, response: ResponseHead,
                               relay: SseRelay) -> Handled:
        """Relay the upstream's event stream into a stream whose head went out early: its
        events follow the heartbeats. Any other answer (an error status, a body that is
        not an event stream) becomes the terminal error event, with the upstream's status
        when it is an error."""
        status = response.status
        _, sse = _response_headers(self.plan, response, self.head)
        if status != 200 or not sse:
            self._drop_upstream()
            code = status if status >= 400 else 502
            message = (f"upstream answered {status}" if status >= 400
                       else "upstream did not answer with an event stream")
            return await self._fail(code, message, "upstream_error", False)
        reader = up.reader
        until_close = response.content_length is None and not response.chunked
        if self.shape is not None:
            self.exchange.usage = UsageScanner(self.shape, True)
        if self.plan.censor is not None:
            self.censor = SseCensor(self.plan.censor)
            self.exchange.censor_hits = self.censor.hits
        pieces: list[bytes] = []
        whole = reader.take_whole_body()
        try:
            if whole is not None:
                complete = True
                pieces.append(whole)
            else:
                complete = _collect(reader, pieces)
            out = _outgoing(pieces, complete, relay.chunked, relay, until_close,
                            self.exchange.usage, self.censor)
            if out:
                await self.client.send(out)
            if not complete:
                plan = self.plan
                idle = plan.read_timeout if response.content_length is not None \
                    else plan.idle_timeout
                await self._stream_with_heartbeats(up, relay, idle, until_close)
        except UpstreamProtocolError as exc:
            return await self._upstream_broke(up, exc.detail)
        except _Withheld:
            return await self._withhold(pool, up, response, False)
        self.client.unwatch_disconnect()
        self.exchange.take_upstream()
        if response.keep_alive:
            pool.release(up)
        else:
            up.close()
        return Handled("completed", relay.chunked and self.head.keep_alive)

    async def _stream_response_body(self, up: UpstreamConn, chunked: bool,
                                    idle: float, relay: SseRelay | None,
                                    until_close: bool) -> None:
        """Forward body pieces as they arrive until the response is complete; ``idle``
        bounds each wait for the upstream (an SSE body goes through ``relay``, see
        :func:`_outgoing`)."""
        reader = up.reader
        io = up.io
        client = self.client
        deadline = client.deadline
        limit_at = sockio.now() + self.plan.max_duration
        usage = self.exchange.usage
        pieces: list[bytes] = []
        while True:
            now = sockio.now()
            if now + idle < limit_at:
                deadline.set_at(now + idle, "upstream_idle")
            else:
                deadline.set_at(limit_at, "stream_max")
            if reader.paused:
                await checkpoint()  # the rest is buffered: decode it on the next turn
            else:
                try:
                    reader.feed(await io.recv(reset_is_error=True))
                except PeerGone as exc:
                    # A reset is not an end: a close-delimited body would look complete.
                    raise UpstreamProtocolError(
                        502, f"upstream connection reset: {exc}") from None
            pieces.clear()
            complete = _collect(reader, pieces)
            out = _outgoing(pieces, complete, chunked, relay, until_close, usage,
                                        self.censor)
            if out:
                await client.send(out)
            if complete:
                return

    async def _stream_with_heartbeats(self, up: UpstreamConn, relay: SseRelay, idle: float,
                                      until_close: bool) -> None:
        """:meth:`_stream_response_body` for an event stream that gets heartbeats: while
        the upstream is silent, an SSE comment goes to the client every ``heartbeat``
        seconds. Silence still counts toward ``idle`` (a heartbeat does not reset it).

        The connection's one deadline is set to the earliest of the next heartbeat, the
        idle limit and the stream's end; a ``heartbeat`` deadline cancels only the scope
        in ``deadline.soft``, one per heartbeat period (none per read). A heartbeat is
        sent only where what the client has received ends between events
        (:attr:`~.sse.SseRelay.client_between_events`): inside an event its blank line
        would dispatch the half event. The body goes through ``relay`` as in
        :meth:`_stream_response_body` (half events held back; ``until_close``: complete
        only when the upstream's close falls between events)."""
        reader = up.reader
        io = up.io
        client = self.client
        deadline = client.deadline
        beat = self.plan.heartbeat
        chunked = relay.chunked
        beat_chunk = _chunk(HEARTBEAT) if chunked else HEARTBEAT
        last_data = sockio.now()
        limit_at = last_data + self.plan.max_duration
        beat_at = last_data + beat
        usage = self.exchange.usage
        pieces: list[bytes] = []
        held: bytes | None = None
        try:
            while True:
                with trio.CancelScope() as scope:
                    deadline.soft = scope
                    while True:
                        got, held = held, None
                        if got is None:
                            idle_at = last_data + idle
                            end_at = min(idle_at, limit_at)
                            reason: DeadlineReason = "upstream_idle" if idle_at < limit_at \
                                else "stream_max"
                            if beat_at < end_at:
                                deadline.set_at(beat_at, "heartbeat")
                            else:
                                deadline.set_at(end_at, reason)
                            if reader.paused:
                                await checkpoint()  # the rest is buffered: decode it next
                            else:
                                try:
                                    got = await io.recv(reset_is_error=True)
                                except PeerGone as exc:
                                    raise UpstreamProtocolError(
                                        502, f"upstream connection reset: {exc}") from None
                                last_data = sockio.now()
                                beat_at = last_data + beat
                            # No wait from here to the next read may end in a heartbeat.
                            idle_at = last_data + idle
                            deadline.set_at(min(idle_at, limit_at), "upstream_idle"
                                            if idle_at < limit_at else "stream_max")
                            if scope.cancel_called:
                                held = got  # woke for a heartbeat as data came: keep it
                                break
                        if got is not None:
                            reader.feed(got)
                        pieces.clear()
                        complete = _collect(reader, pieces)
                        out = _outgoing(pieces, complete, chunked, relay, until_close, usage,
                                        self.censor)
                        if out:
                            await client.send(out)
                        if complete:
                            return
                if held is None:  # the heartbeat's wake-up, no data with it
                    if relay.client_between_events:
                        await client.send(beat_chunk)
                    beat_at = sockio.now() + beat
        finally:
            deadline.soft = None

    async def _read_whole(self, up: UpstreamConn, pieces: list[bytes], cap: int) -> bool:
        """Read the rest of a body before the head goes out (the censor must see all of
        it); each wait bounded by the pool's read timeout. False once more than ``cap``
        bytes are in ``pieces`` and the body goes on (it is then relayed as a stream)."""
        reader = up.reader
        deadline = self.client.deadline
        idle = self.plan.read_timeout
        while sum(map(len, pieces)) <= cap:
            deadline.set_at(sockio.now() + idle, "upstream_idle")
            if reader.paused:
                await checkpoint()
            else:
                try:
                    reader.feed(await up.io.recv(reset_is_error=True))
                except PeerGone as exc:
                    raise UpstreamProtocolError(
                        502, f"upstream connection reset: {exc}") from None
            if _collect(reader, pieces):
                return True
        return False

    def _finish_upstream(self, pool: PeerPool, up: UpstreamConn, response: ResponseHead,
                         complete: bool) -> None:
        """Done with the upstream before its body was relayed: back to the pool when the
        response was read to its end, else closed."""
        self.client.unwatch_disconnect()
        if complete and response.keep_alive:
            self.exchange.take_upstream()
            pool.release(up)
        else:
            self._drop_upstream()

    async def _generic_error(self, pool: PeerPool, up: UpstreamConn, response: ResponseHead,
                             complete: bool) -> Handled:
        """An upstream 4xx/5xx answered with the gateway's own JSON error of the same
        status instead of the upstream's body (``expose_upstream_errors`` off): upstream
        error bodies can carry stack traces, internal hosts and keys. ``Retry-After``
        is kept. A short body still on its way is read and dropped, so the connection
        can go back to the pool."""
        length = response.content_length
        if not complete and length is not None and length <= REPLAYABLE_BODY:
            try:
                complete = await self._read_whole(up, [], REPLAYABLE_BODY)
            except UpstreamProtocolError:
                complete = False
        self._finish_upstream(pool, up, response, complete)
        status = response.status
        head, exchange = self.head, self.exchange
        keep = head.keep_alive and complete
        retry = tuple(h for h in response.headers if h[0] == b"retry-after")
        data = error_response(status, exchange.request_id, self.ctx.housekeeping.date,
                              keep_alive=keep, message=f"upstream answered {status}",
                              extra=retry, head_only=head.method == b"HEAD")
        await self.client.respond(status, data, Phase.FRAMED)
        return Handled("completed", keep)

    async def _withhold(self, pool: PeerPool, up: UpstreamConn, response: ResponseHead,
                        complete: bool, why: str | None = None) -> Handled:
        """The censor found a secret under ``block_502`` or ``abort_stream`` (or a body
        it must not pass, ``why``): a 502 before the head went out, else the stream's
        terminal error event, else a reset (the client sees the body end short)."""
        self._finish_upstream(pool, up, response, complete)
        client, exchange = self.client, self.exchange
        hits = exchange.censor_hits
        exchange.detail = why or (f"secret found: {hits.first()}" if hits else "secret found")
        message = "response withheld by the leak censor"
        if exchange.phase is Phase.UNSENT:
            return await client.reject(502, message=message, outcome="censored")
        if exchange.phase is Phase.SSE and exchange.sse is not None:
            client.deadline.clear()
            await client.send(exchange.sse.error_end(502, message, exchange.request_id))
        else:
            client.abort()
        return Handled("censored", False)

    async def _upstream_broke(self, up: UpstreamConn, detail: str) -> Handled:
        """The upstream sent a malformed or truncated response: a 502 before the head,
        the terminal error event on an SSE stream, else a reset (the client sees the
        body end short of its length or of its last chunk). The connection actor writes
        its error-log line, with ``detail``."""
        self._drop_upstream()
        client = self.client
        client.unwatch_disconnect()
        exchange = self.exchange
        exchange.detail = detail
        if exchange.phase is Phase.SSE and exchange.sse is not None:
            client.deadline.clear()  # the send is bounded by the send timeout alone
            await client.send(exchange.sse.error_end(502, "upstream stream broke off",
                                                     exchange.request_id))
            return Handled("upstream_cut", False)
        if exchange.phase is not Phase.UNSENT:
            client.abort()  # the client must see the response end abnormally
            return Handled("upstream_cut", False)
        return await client.reject(502, outcome="upstream_error", keep_alive=False)
