"""When the master rotates the TLS session ticket keys, and who waits for a rotation.

OpenSSL makes ticket keys at random with each listener context and never changes them;
the workers of a generation share their generation's context (supervisor/tls.py). So
new keys need a new generation: every ``ticket_rotation``, or on ``ctl rotate-tickets``,
the master runs a reload with the running config (supervisor/reload.py). Any new
generation (a reload that changed the config too) has new keys, so the schedule restarts
from the moment a generation becomes current. A failed rotation is retried after
:data:`RETRY` (or the period, if shorter); the old keys keep serving meanwhile.

Pure bookkeeping on the clocks it is given; the master does the I/O.

May import: li_httpd.config, li_httpd.supervisor.control.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from li_httpd.config.model import Tls

from .control import PendingReply

RETRY = 300.0
"""Seconds before a failed rotation is tried again."""


def period_s(tls: Tls) -> float | None:
    """Seconds between rotations; None when there are no tickets to rotate."""
    if tls.mode == "off" or not tls.session_tickets:
        return None
    return tls.ticket_rotation / 1000


@dataclass
class TicketRotation:
    period: float | None = None
    due: float | None = None
    """Monotonic time of the next scheduled rotation (None: none scheduled)."""
    due_wall: float = 0.0
    """The same moment in Unix seconds (for ``ctl status``)."""
    generation: int = -1
    """The generation whose keys the schedule counts from."""
    asked: bool = False
    """``ctl rotate-tickets`` asked for one; it runs once no reload is in progress."""
    waiters: list[PendingReply] = field(default_factory=list)
    rotations: int = 0

    def follow(self, generation: int, tls: Tls, now: float, wall: float) -> None:
        """Generation ``generation`` is current (called on every turn that may have changed
        it): when it is new, its keys are new and the next rotation is a period away."""
        if generation == self.generation:
            return
        self.generation = generation
        self.period = period_s(tls)
        self._schedule(self.period, now, wall)

    def _schedule(self, delay: float | None, now: float, wall: float) -> None:
        self.due = None if delay is None else now + delay
        self.due_wall = 0.0 if delay is None else wall + delay

    def refusal(self) -> str | None:
        """Why ``ctl rotate-tickets`` cannot run, or None."""
        if self.period is None:
            return "no session tickets to rotate (TLS is off or session_tickets = false)"
        return None

    def wanted(self, now: float) -> bool:
        return self.asked or (self.due is not None and now >= self.due)

    def wake_in(self, now: float) -> float | None:
        return None if self.due is None else max(0.0, self.due - now)

    def started(self) -> list[PendingReply]:
        """A rotation begins: the waiters it will answer."""
        self.asked = False
        waiters, self.waiters = self.waiters, []
        return waiters

    def failed(self, now: float, wall: float) -> None:
        if self.period is not None:
            self._schedule(min(RETRY, self.period), now, wall)

    def status(self) -> dict[str, Any]:
        if self.period is None:
            return {"session_tickets": False, "rotation_s": 0, "next_rotation": "-",
                    "rotations": self.rotations}
        due = datetime.datetime.fromtimestamp(self.due_wall, datetime.UTC)
        return {"session_tickets": True, "rotation_s": int(self.period),
                "next_rotation": due.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "rotations": self.rotations}
