"""Active health of one upstream peer, as the health actor sees it: a small state
machine over probe results. Pure.

A peer starts *unknown* (nothing probed yet: it gets no traffic). Its first probe
decides at once: a success makes it *ready*, a failure *not ready*, so a gateway that
starts beside loaded models serves after one probe round instead of ``rise`` rounds,
and a peer still loading its model never gets a request before it says it can serve.
After that ``fall`` consecutive failures take a ready peer out and ``rise`` consecutive
successes bring a not-ready one back; a result that agrees with the state resets the
count toward a change.

The same machine tracks the ``ready`` and the ``live`` probe of a peer; the values are
what the shared segment stores (single writer: the health actor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

UNKNOWN: Final = 0
READY: Final = 1
NOT_READY: Final = 2

StateName = Literal["unknown", "ready", "not_ready"]
LiveName = Literal["unknown", "live", "not_live"]
_NAMES: Final[tuple[StateName, StateName, StateName]] = ("unknown", "ready", "not_ready")
_LIVE_NAMES: Final[tuple[LiveName, LiveName, LiveName]] = ("unknown", "live", "not_live")


@dataclass(frozen=True, slots=True)
class Readiness:
    state: int = UNKNOWN
    """:data:`UNKNOWN`, :data:`READY` or :data:`NOT_READY`."""
    streak: int = 0
    """Consecutive results that disagree with ``state`` (counting toward a change)."""

    @property
    def name(self) -> StateName:
        return _NAMES[self.state] if 0 <= self.state < len(_NAMES) else "unknown"

    @property
    def live_name(self) -> LiveName:
        """The name of the state of a ``live`` probe."""
        return _LIVE_NAMES[self.state] if 0 <= self.state < len(_LIVE_NAMES) else "unknown"


def observe(before: Readiness, ok: bool, rise: int, fall: int) -> Readiness:
    """The state after one probe result (``ok``: the probe succeeded)."""
    state = before.state
    if state == READY:
        if ok:
            return Readiness(READY, 0)
        return Readiness(NOT_READY, 0) if before.streak + 1 >= fall else Readiness(
            READY, before.streak + 1)
    if state == NOT_READY:
        if not ok:
            return Readiness(NOT_READY, 0)
        return Readiness(READY, 0) if before.streak + 1 >= rise else Readiness(
            NOT_READY, before.streak + 1)
    return Readiness(READY if ok else NOT_READY, 0)
