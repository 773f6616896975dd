"""Reaping children, and the crash policy as pure functions of times.

Owns: collecting exited children (:func:`reap`, the one ``waitpid`` of the master; only
the master's main loop calls it), describing an exit status, the respawn backoff and the
crash-loop rule.

Policy. A worker that dies *young* (within :data:`YOUNG` seconds of its start) counts as
an early death of its slot, and its respawn waits :data:`BACKOFF_FIRST` seconds, doubled
for each other early death of the slot still inside :data:`CRASH_WINDOW`, at most
:data:`BACKOFF_MAX`. A worker that ran for a while and was killed (OOM killer, an
operator) is replaced at once and counts nothing. When :data:`CRASH_LIMIT` early deaths,
summed over every slot of the current generation, fall inside the window, the gateway is
in a crash loop and the master gives up (exit status 2) instead of spinning.

The policy functions take ``now`` and plain tuples of death times, so tests drive them
with tables and no processes or clocks.

May import: nothing else.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable
from typing import NamedTuple

CRASH_WINDOW = 30.0
CRASH_LIMIT = 10
YOUNG = 1.0
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0


class Exited(NamedTuple):
    pid: int
    status: int
    """As returned by ``waitpid``."""

    def describe(self) -> str:
        return describe_status(self.status)


def reap(waitpid: Callable[[int, int], tuple[int, int]] = os.waitpid) -> list[Exited]:
    """Every child that has exited since the last call (never blocks)."""
    exits: list[Exited] = []
    while True:
        try:
            pid, status = waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return exits
        if pid == 0:
            return exits
        exits.append(Exited(pid, status))


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


class Respawn(NamedTuple):
    """What to do with a slot whose worker died."""

    delay: float
    """Seconds to wait before starting its replacement."""
    crashes: tuple[float, ...]
    """The slot's early deaths inside the window, this one included when it counts."""


def recent(crashes: Iterable[float], now: float) -> tuple[float, ...]:
    """The death times that still fall inside the crash window."""
    return tuple(t for t in crashes if now - t <= CRASH_WINDOW)


def after_exit(started: float, crashes: Iterable[float], now: float) -> Respawn:
    """The respawn decision for a worker started at ``started`` that died at ``now``,
    given its slot's earlier early deaths."""
    kept = recent(crashes, now)
    if now - started >= YOUNG:
        return Respawn(0.0, kept)
    kept = (*kept, now)
    return Respawn(min(BACKOFF_FIRST * 2 ** (len(kept) - 1), BACKOFF_MAX), kept)


def crash_loop(crashes_per_slot: Iterable[Iterable[float]], now: float) -> bool:
    """Whether the early deaths inside the window, summed over slots, reach the limit."""
    return sum(len(recent(crashes, now)) for crashes in crashes_per_slot) >= CRASH_LIMIT
