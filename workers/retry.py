"""Retry and failover decisions for one proxied request (pure, no I/O).

When an attempt on an upstream peer fails, :func:`decide` says what happens next:

- ``retry``: try again without blaming the peer. Only for a *stale pooled
  connection*: a reused keep-alive connection that failed before any response byte is
  the pool's problem (the peer closed it while idle), not the peer's; one such retry
  per request.
- ``next_peer``: count a failure against the peer (passive health), exclude it, and try
  another; this spends one of the upstream's ``max_retries``.
- ``fail``: no further attempt. For a failure this is a 502; for a retryable status
  (``retry_statuses``) it means the upstream's own answer goes to the client.

Whether a request may be sent again depends on its body and method (:data:`Replay`):
a body streamed to the first peer is consumed (``never``); a buffered body may be sent
again when no byte of it can have been processed (``if_unsent``: the write failed), or
always when the method is idempotent (``always``). A failed connect sent nothing.

When the route's own pool has failed (``fail``), :func:`falls_back` says whether the
route's fallback chain takes over: only before any response byte reached the client
(the caller only asks then), only with a replayable body, and only for the failures the
route's ``[route.fallback] on`` names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

FailureKind = Literal[
    "connect",   # could not connect (refused, unreachable, connect timeout, TLS)
    "closed",    # the connection failed before any response byte (write failed, or EOF)
    "protocol",  # the upstream's response was malformed
    "status",    # a complete response head with a status in ``retry_statuses``
    "ttfb",      # no response head within the route's first-byte timeout
]
HealthFailure = Literal["connect", "reset", "malformed", "5xx", "ttfb_timeout"]
"""The names ``[upstreams.NAME] health_failures`` gives failures (config.model)."""
HEALTH_KIND: dict[FailureKind, HealthFailure] = {
    "connect": "connect", "closed": "reset", "protocol": "malformed", "status": "5xx",
    "ttfb": "ttfb_timeout"}
FallbackTrigger = Literal["connect", "reset", "status", "ttfb_timeout"]
"""The names ``[route.fallback] on`` gives failures (config.model.FALLBACK_TRIGGERS)."""
FALLBACK_KIND: Final[dict[FailureKind, FallbackTrigger | None]] = {
    "connect": "connect", "closed": "reset", "protocol": None, "status": "status",
    "ttfb": "ttfb_timeout"}
"""Which trigger a failed attempt is; a malformed response never falls back (the
upstream answered, wrongly: another pool would hide a bug)."""
Replay = Literal["never", "if_unsent", "always"]
Action = Literal["retry", "next_peer", "fail"]

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS"})


class Decision(NamedTuple):
    action: Action
    blame_peer: bool
    """Whether the failure counts against the peer's passive health."""


def replay_of(method: bytes, body_buffered: bool) -> Replay:
    if not body_buffered:
        return "never"
    return "always" if method in IDEMPOTENT else "if_unsent"


def decide(failure: FailureKind, *, reused: bool, request_sent: bool, replay: Replay,
           stale_retry_left: bool, failovers_left: int) -> Decision:
    """What to do after an attempt failed; see the module docstring."""
    if failure == "protocol":
        return Decision("fail", True)
    if failure == "status":
        if replay == "always" and failovers_left > 0:
            return Decision("next_peer", True)
        return Decision("fail", True)
    if failure == "connect":
        request_sent = False
        reused = False
    elif failure == "ttfb":
        request_sent = True  # the upstream may be working on it: replay only idempotent
    safe = replay != "never" and (not request_sent or replay == "always")
    if failure == "closed" and reused and stale_retry_left and safe:
        return Decision("retry", False)
    if safe and failovers_left > 0:
        return Decision("next_peer", True)
    return Decision("fail", True)


@dataclass(frozen=True, slots=True)
class FallbackPolicy:
    """A route's ``[route.fallback]``, compiled: what moves on to its next pool."""

    on: frozenset[FallbackTrigger]
    statuses: frozenset[int]


def falls_back(trigger: FallbackTrigger | None, *, status: int = 0, replay: Replay,
               policy: FallbackPolicy | None, pools_left: int) -> bool:
    """Whether a pool's final failure ``trigger`` (with the response ``status`` for
    ``status``) moves the request on to the next pool of its route's chain."""
    if policy is None or trigger is None or pools_left <= 0 or replay == "never":
        return False
    if trigger not in policy.on:
        return False
    return trigger != "status" or status in policy.statuses


@dataclass(slots=True)
class Attempts:
    """What a request has left to try: the state :func:`decide` reads, changed only by
    :meth:`record`."""

    replay: Replay
    failovers_left: int
    stale_retry_left: bool = True
    tried: list[int] | None = None

    def decide(self, failure: FailureKind, *, reused: bool = False,
               request_sent: bool = False) -> Decision:
        return decide(failure, reused=reused, request_sent=request_sent, replay=self.replay,
                      stale_retry_left=self.stale_retry_left,
                      failovers_left=self.failovers_left)

    def record(self, decision: Decision, peer_index: int) -> None:
        """Account for ``decision`` taken after an attempt on the peer at ``peer_index``."""
        if decision.action == "retry":
            self.stale_retry_left = False
        if decision.blame_peer:
            if self.tried is None:
                self.tried = []
            self.tried.append(peer_index)
        if decision.action == "next_peer":
            self.failovers_left -= 1

    @property
    def excluded(self) -> list[int]:
        return self.tried or []


__all__ = ["FALLBACK_KIND", "HEALTH_KIND", "IDEMPOTENT", "Action", "Attempts", "Decision",
           "FailureKind", "FallbackPolicy", "FallbackTrigger", "Replay", "decide", "falls_back",
           "replay_of"]
