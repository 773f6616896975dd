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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

FailureKind = Literal[
    "connect",   # could not connect (refused, unreachable, connect timeout, TLS)
    "closed",    # the connection failed before any response byte (write failed, or EOF)
    "protocol",  # the upstream's response was malformed
    "status",    # a complete response head with a status in ``retry_statuses``
]
HealthFailure = Literal["connect", "reset", "malformed", "5xx", "ttfb_timeout"]
"""The names ``[upstreams.NAME] health_failures`` gives failures (config.model)."""
HEALTH_KIND: dict[FailureKind, HealthFailure] = {
    "connect": "connect", "closed": "reset", "protocol": "malformed", "status": "5xx"}
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
    safe = replay != "never" and (not request_sent or replay == "always")
    if failure == "closed" and reused and stale_retry_left and safe:
        return Decision("retry", False)
    if safe and failovers_left > 0:
        return Decision("next_peer", True)
    return Decision("fail", True)


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


__all__ = ["IDEMPOTENT", "Action", "Attempts", "Decision", "FailureKind", "Replay", "decide",
           "replay_of"]
