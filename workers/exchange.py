"""One request and what it did: the :class:`Exchange`.

The connection actor makes an exchange for every request head it reads and owns it:
it runs admission, hands the exchange to a handler (healthcheck, static or proxy),
and when the request ends, however it ends, logs it once from the exchange. Handlers
record what happened through the exchange's methods: which upstream connection is in
use (so a timeout or a disconnect can close it), how far the response got (its
:class:`Phase`, so the actor knows what it may still send after a failure), the
upstream's time to first byte, the model a request names.

Nothing here does I/O; the module imports no trio.
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

from li_httpd.shm import BudgetGrant, gcra

from .censor import Hits
from .http1 import RequestHead
from .identity import Caller
from .sse import SseRelay
from .upstream import PeerTarget, UpstreamConn, UpstreamGroup
from .usage import UsageScanner

if TYPE_CHECKING:
    from .sockio import DeadlineReason


class Phase(enum.Enum):
    """How far the response to the client has got."""

    UNSENT = "unsent"
    """No byte written: a failure can still be answered with a status (408, 502, 504)."""
    FRAMED = "framed"
    """Head written; the body is framed by Content-Length or by the close: a failure can
    only cut it short, which the client can tell by the length (or cannot, on a close-
    delimited body to an HTTP/1.0 client)."""
    CHUNKED = "chunked"
    """Head written, chunked body under way: a failure ends it without the last chunk."""
    SSE = "sse"
    """Head written, ``text/event-stream`` under way, chunked or (to an HTTP/1.0 client)
    ended by the close: a failure drops the held half event and sends one terminal SSE
    error event (:attr:`Exchange.sse`), then the last chunk or the close."""


Outcome = Literal[
    "completed",       # the response was written to its end
    "rejected",        # the gateway answered itself: routing, auth, limits, bad request
    "upstream_error",  # no usable upstream answer before any response byte (connect
                       # failure, peers down, invalid head, a retryable 5xx after retries)
    "upstream_cut",    # the upstream broke off, reset or sent garbage after its head
    "ttfb_timeout",    # the upstream's response head did not come in time (504)
    "idle_timeout",    # the upstream's body stalled longer than stream_idle_timeout
    "max_duration",    # the response outlived stream_max_duration
    "client_gone",     # the client hung up or broke its TLS stream
    "shutdown",        # the worker's drain deadline ended the request
    "timeout",         # a client-side timer: request head, request body, or a client
                       # that stops reading its response
    "internal_error",  # a bug in the gateway cost this request (500 or a cut)
    "censored",        # the leak censor withheld the response (block_502 / abort_stream)
]
"""How a request ended: the closed vocabulary of access lines, audit records, metrics."""

NORMAL_OUTCOMES: Final = frozenset({"completed", "rejected"})
"""Outcomes that are not an abnormal end (no error-log line)."""

_DEADLINE_OUTCOMES: Final[dict[str, Outcome]] = {
    "": "internal_error",  # a deadline fired without a reason: cannot happen
    "handshake": "timeout",
    "header": "timeout",
    "idle": "timeout",
    "body": "timeout",
    "send": "timeout",
    "upstream_ttfb": "ttfb_timeout",
    "upstream_idle": "idle_timeout",
    "stream_max": "max_duration",
    "client_gone": "client_gone",
    "shutdown": "shutdown",  # the drain deadline, where it fires as a deadline reason
    # The relay handles a heartbeat wake-up itself (it sends the SSE comment); if one
    # ever reached the connection it would be the gateway's own failure.
    "heartbeat": "internal_error",
}


def deadline_outcome(reason: DeadlineReason) -> Outcome:
    """The outcome of a request ended by the connection deadline firing for ``reason``
    (the one place that maps the two vocabularies)."""
    return _DEADLINE_OUTCOMES.get(reason, "internal_error")


class Handled(NamedTuple):
    """What a handler returns: how the request ended, and whether the client connection
    may serve another request."""

    outcome: Outcome
    keep_alive: bool


class ByteMeter(NamedTuple):
    """Where the caller's request-body bytes are charged (``bytes_in_per_sec``)."""

    entry: int
    key: int
    rate: gcra.Rate


class Exchange:
    """What one request is and did. Created by the connection actor per request head."""

    __slots__ = ("attempts", "audited", "budget", "caller", "censor_hits", "continue_sent",
                 "detail", "group", "head", "meter", "model", "outcome", "path_invalid", "peer",
                 "phase", "request_id", "route", "sent_mark", "sse", "started", "status",
                 "ttfb_ms", "upstream", "upstream_status", "usage")

    def __init__(self, head: RequestHead, request_id: bytes, sent_mark: int) -> None:
        self.head = head
        self.request_id = request_id
        self.started = time.monotonic()
        self.sent_mark = sent_mark
        """The client connection's byte count when the request began (for bytes_out)."""
        self.status = 0
        self.phase = Phase.UNSENT
        self.outcome: Outcome | None = None
        """Set when the request ends; still None when the worker's shutdown cancelled it."""
        self.detail: str | None = None
        """Why an abnormal end happened, in words, for its error-log line."""
        self.path_invalid = False
        """The path failed normalization: the logs show ``<invalid>``, not its bytes (an
        undecodable path can hide a secret from the log redactor's detectors)."""
        self.route: bytes | None = None
        self.audited = False
        self.caller: Caller | None = None
        self.meter: ByteMeter | None = None
        self.continue_sent = False
        self.peer: str | None = None
        self.ttfb_ms: float | None = None
        self.upstream_status = 0
        """The status of the last upstream response head (0: none came)."""
        self.model: str | None = None
        self.upstream: UpstreamConn | None = None
        self.group: UpstreamGroup | None = None
        self.attempts: list[tuple[str, str, str | None]] | None = None
        """Every upstream attempt (pool, peer, failure), kept only once one failed: the
        audit record's ``attempts``. None for the common single clean attempt."""
        self.budget: BudgetGrant | None = None
        """The caller's budget reservation, settled when the request ends."""
        self.usage: UsageScanner | None = None
        """Reads the token usage of the response being relayed (``usage_accounting``)."""
        self.censor_hits: Hits | None = None
        """What the leak censor found in the response body (for the audit record,
        metrics and the error log); None when the censor did not look."""
        self.sse: SseRelay | None = None
        """The SSE relay of a response in :attr:`Phase.SSE`: what ends it on a failure,
        and its scanner's event count for the error-log line of an abnormal end."""

    @property
    def key_id(self) -> str | None:
        return self.caller.key_id if self.caller is not None else None

    def admitted(self, request_id: bytes, route: bytes | None, audited: bool,
                 caller: Caller | None, meter: ByteMeter | None) -> None:
        """What admission found out, whether it let the request through or not."""
        self.request_id = request_id
        if route is not None:
            self.route = route
            self.audited = audited
        self.caller = caller
        self.meter = meter

    def responding(self, status: int, phase: Phase) -> None:
        """A response head with ``status`` is about to be written."""
        self.status = status
        self.phase = phase

    def ended(self, outcome: Outcome, detail: str | None = None) -> None:
        self.outcome = outcome
        if detail is not None:
            self.detail = detail

    def attempt(self, group: UpstreamGroup, peer: PeerTarget) -> None:
        """An attempt on ``peer`` begins (the log names the last peer tried)."""
        self.group = group
        self.peer = peer.label
        if self.attempts is not None:
            self.attempts.append((group.name, peer.label, None))

    def attempt_failed(self, failure: str) -> None:
        """The attempt begun last failed with ``failure`` (the audit record's words:
        connect, closed, protocol, ttfb_timeout, status_NNN)."""
        assert self.group is not None and self.peer is not None
        entry = (self.group.name, self.peer, failure)
        if self.attempts is None:
            self.attempts = [entry]
        else:
            self.attempts[-1] = entry

    def pool_down(self, group: UpstreamGroup, reason: str = "down") -> None:
        """``group`` had no peer to try: ``down`` (every one marked down), ``saturated``
        (each usable one at its ``max_concurrent`` cap), ``queued`` (the request waited
        in the route's queue), ``queue_full`` or ``queue_timeout``."""
        entry = (group.name, "-", reason)
        if self.attempts is None:
            self.attempts = [entry]
        else:
            self.attempts.append(entry)

    def connected(self, upstream: UpstreamConn) -> None:
        """``upstream`` carries the request now: a timeout or disconnect closes it."""
        self.upstream = upstream

    def first_byte(self, status: int) -> None:
        """The upstream's response head (``status``) arrived."""
        self.ttfb_ms = (time.monotonic() - self.started) * 1000
        self.upstream_status = status

    def take_upstream(self) -> UpstreamConn | None:
        """The upstream connection in use, which the caller now closes or pools."""
        upstream, self.upstream = self.upstream, None
        return upstream


__all__ = ["NORMAL_OUTCOMES", "ByteMeter", "Exchange", "Handled", "Outcome", "Phase",
           "deadline_outcome"]
