"""GCRA (generic cell rate algorithm): a rate limit as one timestamp per key. Pure.

State: the *theoretical arrival time* ``tat`` (nanoseconds on the shared monotonic
clock) of the next request if requests arrived exactly at the configured rate. With
emission interval ``T = 1 s / rate`` and burst tolerance ``tau = burst * T``, a request
at ``now`` is admitted iff ``max(tat, now) + T - now <= tau``; admitting stores
``max(tat, now) + T``. Consequences (property-tested):

- at most ``burst`` requests are admitted at one instant;
- over any window of length ``t`` at most ``burst + rate * t`` requests are admitted;
- a denied request learns exactly when it would be admitted (``retry_after``).

The same arithmetic meters bytes (``cost`` > 1): :func:`consume` with a byte count gives
the delay after which that many bytes fit the per-second budget.
"""

from __future__ import annotations

from dataclasses import dataclass

NS_PER_SECOND = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Rate:
    """A compiled limit: ``per_second`` units per second, ``burst`` units at once."""

    interval_ns: int
    tolerance_ns: int

    @classmethod
    def of(cls, per_second: int, burst: int) -> Rate:
        if per_second <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        interval = max(1, NS_PER_SECOND // per_second)
        return cls(interval, burst * interval)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    new_tat: int
    """The state to store (unchanged when denied)."""
    retry_after_ns: int
    """When denied: how long until the same request would be admitted."""


def decide(rate: Rate, tat: int, now: int, cost: int = 1) -> Decision:
    """Admit ``cost`` units at ``now`` given the stored ``tat``?"""
    base = tat if tat > now else now
    new_tat = base + rate.interval_ns * cost
    excess = new_tat - now - rate.tolerance_ns
    if excess <= 0:
        return Decision(True, new_tat, 0)
    return Decision(False, tat, excess)


def consume(rate: Rate, tat: int, now: int, cost: int) -> tuple[int, int]:
    """Charge ``cost`` units unconditionally; returns (new tat, delay in ns the caller
    should wait before going on so the flow stays within the rate)."""
    base = tat if tat > now else now
    new_tat = base + rate.interval_ns * cost
    delay = new_tat - now - rate.tolerance_ns
    return new_tat, delay if delay > 0 else 0


def is_idle(tat: int, now: int) -> bool:
    """True when the key has its full burst available: forgetting it loses nothing."""
    return tat <= now


def retry_after_seconds(retry_after_ns: int) -> int:
    """Whole seconds for a Retry-After header: rounded up, at least 1."""
    return max(1, -(-retry_after_ns // NS_PER_SECOND))
