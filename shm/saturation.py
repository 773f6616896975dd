"""Per-peer concurrency caps (``max_concurrent``): which peers may take a request. Pure.

A capped pool's choice is made under its lock in shared memory (:mod:`.state`), from the
requests in flight summed over every worker, so that the cap holds across workers; this
module is the decision itself, with no I/O, so it is table- and property-tested. A cap
of 0 means no cap.

The verdict tells two empty answers apart, because the gateway says different things:
``down`` (no usable peer at all: a 503 with the time until one is tried again) and
``saturated`` (usable peers exist but each is at its cap: the pool's
``saturated_status`` with ``Retry-After: 1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Verdict = Literal["ok", "saturated", "down"]

NO_PEER = -1
""":func:`choose` found no usable peer (``down``)."""
SATURATED = -2
""":func:`choose` found usable peers, each at its cap."""


def has_room(active: int, cap: int) -> bool:
    return cap == 0 or active < cap


def eligible(usable: Sequence[bool], active: Sequence[int],
             caps: Sequence[int]) -> tuple[tuple[int, ...], Verdict]:
    """The positions that may take one more request, and the verdict."""
    room = tuple(position for position, ok in enumerate(usable)
                 if ok and has_room(active[position], caps[position]))
    if room:
        return room, "ok"
    return room, "saturated" if any(usable) else "down"


def round_robin(current: list[int], weights: Sequence[int],
                candidates: Sequence[int]) -> int:
    """Smooth weighted round robin among ``candidates`` (positions), updating the
    running weights in ``current`` in place (as the uncapped shared pick does)."""
    best = -1
    total = 0
    for position in candidates:
        current[position] += weights[position]
        total += weights[position]
        if best < 0 or current[position] > current[best]:
            best = position
    if best >= 0:
        current[best] -= total
    return best


def least_loaded(active: Sequence[int], weights: Sequence[int], candidates: Sequence[int],
                 start: int) -> int:
    """The candidate with the fewest requests in flight per weight; ties go to the first
    one at or after ``start`` going round (so equal peers take turns)."""
    count = len(active)
    best = -1
    best_load = 0.0
    for step in range(count):
        position = (start + step) % count
        if position not in candidates:
            continue
        load = active[position] / weights[position]
        if best < 0 or load < best_load:
            best, best_load = position, load
    return best


def choose(usable: Sequence[bool], active: Sequence[int], caps: Sequence[int],
           weights: Sequence[int], current: list[int], least_conn: bool, start: int) -> int:
    """The position to send the next request to, or :data:`NO_PEER` / :data:`SATURATED`."""
    room, verdict = eligible(usable, active, caps)
    if verdict != "ok":
        return SATURATED if verdict == "saturated" else NO_PEER
    if least_conn:
        return least_loaded(active, weights, room, start)
    return round_robin(current, weights, room)
