"""Passive health of one upstream peer: a small state machine. Pure.

A peer is *up* until ``max_fails`` failures fall within one ``fail_timeout`` window;
then it is *down* until ``fail_timeout`` has passed, after which it is tried again
(another failure inside the new window counts from one). A success resets the count.
``max_fails = 0`` disables passive health: the peer is always up. Times are
nanoseconds on the shared monotonic clock, so every worker reads the same state.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PeerHealth:
    fails: int = 0
    window_start_ns: int = 0
    down_until_ns: int = 0


def on_failure(state: PeerHealth, now: int, max_fails: int, fail_timeout_ns: int) -> PeerHealth:
    if max_fails == 0:
        return state
    fails = state.fails
    window_start = state.window_start_ns
    if fails == 0 or now - window_start > fail_timeout_ns:
        fails, window_start = 0, now
    fails += 1
    if fails >= max_fails:
        return PeerHealth(0, now, now + fail_timeout_ns)
    return PeerHealth(fails, window_start, state.down_until_ns)


def on_success(state: PeerHealth, now: int = 0) -> PeerHealth:
    """A success resets the count; once the down time is over (``down_until_ns`` at or
    before ``now``) it also clears the mark, so the peer counts as up again (a success
    that raced with the mark, seen while the peer is still down, does not)."""
    down_until = state.down_until_ns
    if down_until and down_until <= now:
        return PeerHealth(0, 0, 0)
    if state.fails == 0:
        return state
    return PeerHealth(0, 0, down_until)
