"""Per-key token and dollar budgets: the pure arithmetic on one key's counters.

A key may have two limits, each over *fixed* windows counted from the Unix epoch (so
every worker and every host agrees on where a window starts without talking to each
other): tokens per minute, and micro-dollars per ``budget_window``. A limit of 0 means
that dimension is unlimited; it is still counted, so the operator view can show usage.

All amounts are integers (tokens; dollars as integer micro-USD): float sums drift and
two workers adding the same amounts in a different order must agree exactly.

The request path reserves a request's worst case before calling upstream
(:func:`reserve`), and replaces the reservation with the actual usage afterwards
(:func:`settle`). A reservation is only ever charged to the window it was made in:
once that window has ended, settling it does nothing (the old window is history, and
the new window never pays for a request it did not admit). A reservation that is never
settled (a worker killed in between) stays charged until its window ends, which loses
no charge and leaks nothing past the window.

The shared-memory wrapper (:mod:`.state`) stores :class:`Usage` per key and calls these
functions under the key's lock; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NS_PER_SECOND = 1_000_000_000
MINUTE_NS = 60 * NS_PER_SECOND
MICRO_PER_USD = 1_000_000
COUNTER_MAX = (1 << 63) - 1
"""Counters saturate here (they live in signed 64-bit shared-memory fields)."""

Limit = Literal["tokens", "usd"]


def micro_usd(usd: float) -> int:
    """Dollars (as configured, a float) to integer micro-dollars, rounded to nearest;
    a positive amount is at least 1 (a tiny budget must not round to 0 = unlimited)."""
    return max(1, round(usd * MICRO_PER_USD)) if usd > 0 else 0


def window_index(now_ns: int, window_ns: int) -> int:
    """The fixed window (counted from the epoch) that ``now_ns`` falls in."""
    return now_ns // window_ns


def window_end_ns(index: int, window_ns: int) -> int:
    return (index + 1) * window_ns


def _seconds_until(end_ns: int, now_ns: int) -> int:
    """Whole seconds until ``end_ns``, rounded up, at least 1 (a Retry-After of 0
    invites an immediate retry that would be refused again)."""
    return max(1, -(-(end_ns - now_ns) // NS_PER_SECOND))


@dataclass(frozen=True, slots=True)
class Limits:
    """One key's limits; 0 = that dimension unlimited."""

    tokens_per_minute: int
    micro_usd: int
    """Micro-dollars per window of ``window_ns``."""
    window_ns: int
    """The dollar window's length (the token window is always one minute)."""

    @classmethod
    def of(cls, tokens_per_minute: int, usd_budget: float, budget_window_ms: int) -> Limits:
        """From the config's units (``ApiKey.tokens_per_minute``, ``usd_budget``,
        ``budget_window`` in milliseconds)."""
        return cls(tokens_per_minute, micro_usd(usd_budget), budget_window_ms * 1_000_000)

    @property
    def any(self) -> bool:
        return self.tokens_per_minute > 0 or self.micro_usd > 0


@dataclass(frozen=True, slots=True)
class Usage:
    """One key's counters: which window each counter belongs to, and its total."""

    token_window: int = 0
    tokens: int = 0
    usd_window: int = 0
    micro_usd: int = 0

    def current(self, limits: Limits, now_ns: int) -> Usage:
        """The counters as of ``now_ns``: a counter whose window has ended reads 0. A
        counter already in a *later* window (the wall clock was stepped back) stays in
        it: what was charged there is not forgotten, and nothing new is charged to a
        window that was already left."""
        token_window = max(self.token_window, window_index(now_ns, MINUTE_NS))
        usd_window = max(self.usd_window, window_index(now_ns, limits.window_ns))
        return Usage(token_window, self.tokens if self.token_window == token_window else 0,
                     usd_window, self.micro_usd if self.usd_window == usd_window else 0)


@dataclass(frozen=True, slots=True)
class Grant:
    """A reservation: the amounts charged and the windows they were charged to (what
    :func:`settle` needs to replace them with the actual usage)."""

    token_window: int
    tokens: int
    usd_window: int
    micro_usd: int


@dataclass(frozen=True, slots=True)
class Denied:
    """Not admitted; nothing was reserved."""

    limit: Limit
    """Which limit refused (the one whose window ends last when both do)."""
    retry_after_s: int
    """Seconds until the refusing window ends (a Retry-After value). For a request
    larger than the whole limit no window will ever admit it; it gets the length of
    the limit's window, so a client honouring Retry-After backs off a full window."""
    reason: str
    """"over the budget" or "larger than the budget" (for logs and the 429 body)."""


def reserve(usage: Usage, limits: Limits, tokens: int, micro_usd: int,
            now_ns: int) -> tuple[Usage, Grant] | Denied:
    """Reserve ``tokens`` and ``micro_usd`` if both fit in what is left of their current
    windows: the new counters and the grant, else the denial (counters unchanged)."""
    if tokens < 0 or micro_usd < 0:
        raise ValueError("a reservation cannot be negative")
    now = usage.current(limits, now_ns)
    too_large: list[tuple[int, Limit]] = []
    over: list[tuple[int, Limit]] = []
    if limits.tokens_per_minute:
        end = window_end_ns(now.token_window, MINUTE_NS)
        if tokens > limits.tokens_per_minute:
            too_large.append((MINUTE_NS // NS_PER_SECOND, "tokens"))
        elif now.tokens + tokens > limits.tokens_per_minute:
            over.append((_seconds_until(end, now_ns), "tokens"))
    if limits.micro_usd:
        end = window_end_ns(now.usd_window, limits.window_ns)
        if micro_usd > limits.micro_usd:
            too_large.append((-(-limits.window_ns // NS_PER_SECOND), "usd"))
        elif now.micro_usd + micro_usd > limits.micro_usd:
            over.append((_seconds_until(end, now_ns), "usd"))
    if too_large:
        seconds, limit = max(too_large)
        return Denied(limit, seconds, "larger than the budget")
    if over:
        seconds, limit = max(over)
        return Denied(limit, seconds, "over the budget")
    grant = Grant(now.token_window, tokens, now.usd_window, micro_usd)
    return Usage(now.token_window, min(COUNTER_MAX, now.tokens + tokens),
                 now.usd_window, min(COUNTER_MAX, now.micro_usd + micro_usd)), grant


def settle(usage: Usage, grant: Grant, tokens: int, micro_usd: int) -> Usage:
    """Replace ``grant``'s reservation by the actual ``tokens`` and ``micro_usd``: each
    counter still in the grant's window gets the difference (never going below 0); a
    counter that has moved on to a later window is left alone."""
    if tokens < 0 or micro_usd < 0:
        raise ValueError("actual usage cannot be negative")
    new_tokens = usage.tokens
    if usage.token_window == grant.token_window:
        new_tokens = min(COUNTER_MAX, max(0, usage.tokens + tokens - grant.tokens))
    new_usd = usage.micro_usd
    if usage.usd_window == grant.usd_window:
        new_usd = min(COUNTER_MAX, max(0, usage.micro_usd + micro_usd - grant.micro_usd))
    return Usage(usage.token_window, new_tokens, usage.usd_window, new_usd)


def fold(target: Usage, before: Usage, after: Usage) -> Usage:
    """``target`` plus what another copy of the same counters changed from ``before`` to
    ``after``: after a reload the old generation's workers still reserve and settle in
    the old segment, and the master adds their changes to the new one. A change in a
    window ``target`` has moved past is history and is dropped; never below 0."""
    token_window, tokens = _fold_one(target.token_window, target.tokens, before.token_window,
                                     before.tokens, after.token_window, after.tokens)
    usd_window, usd = _fold_one(target.usd_window, target.micro_usd, before.usd_window,
                                before.micro_usd, after.usd_window, after.micro_usd)
    return Usage(token_window, tokens, usd_window, usd)


def _fold_one(window: int, value: int, before_window: int, before: int, after_window: int,
              after: int) -> tuple[int, int]:
    delta = after - (before if before_window == after_window else 0)
    if window == after_window:
        return window, min(COUNTER_MAX, max(0, value + delta))
    if window < after_window:
        return after_window, min(COUNTER_MAX, max(0, delta))
    return window, value
