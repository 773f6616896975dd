"""The crash policy (supervisor/reaper.py) as tables: pure functions of death times and
``now``, no processes and no clock.

The crash-loop rule counts only young deaths inside the window, on every slot (found by
review at 9447c3b: stale deaths on one slot plus fresh ones on another made the master
give up)."""

from __future__ import annotations

import pytest
from li_httpd.supervisor.reaper import (
    BACKOFF_MAX,
    CRASH_LIMIT,
    CRASH_WINDOW,
    YOUNG,
    Respawn,
    after_exit,
    crash_loop,
    recent,
)

NOW = 1000.0


@pytest.mark.parametrize(("started", "crashes", "expected"), [
    # ran for a while: replaced at once, counts nothing (earlier deaths still count)
    (NOW - 10 * YOUNG, (), Respawn(0.0, ())),
    (NOW - YOUNG, (NOW - 5,), Respawn(0.0, (NOW - 5,))),
    # died young: counted, backoff doubles with the slot's recent early deaths
    (NOW - 0.1, (), Respawn(0.1, (NOW,))),
    (NOW - 0.1, (NOW - 1,), Respawn(0.2, (NOW - 1, NOW))),
    (NOW - 0.1, (NOW - 2, NOW - 1), Respawn(0.4, (NOW - 2, NOW - 1, NOW))),
    # deaths older than the window are forgotten first
    (NOW - 0.1, (NOW - CRASH_WINDOW - 1, NOW - 1), Respawn(0.2, (NOW - 1, NOW))),
    # the backoff stops growing
    (NOW - 0.1, tuple(NOW - 1 - i for i in range(9)), Respawn(BACKOFF_MAX, (
        *(NOW - 1 - i for i in range(9)), NOW))),
])
def test_respawn_decision(started: float, crashes: tuple[float, ...],
                          expected: Respawn) -> None:
    assert after_exit(started, crashes, NOW) == expected


@pytest.mark.parametrize(("per_slot", "looping"), [
    ([[], []], False),
    ([[NOW - 1.0] * (CRASH_LIMIT - 1), []], False),
    ([[NOW - 1.0] * CRASH_LIMIT, []], True),
    # the limit counts every slot together
    ([[NOW - 1.0] * (CRASH_LIMIT // 2), [NOW - 2.0] * (CRASH_LIMIT - CRASH_LIMIT // 2)], True),
    # stale deaths on one slot plus a fresh one on another: no crash loop
    ([[NOW - CRASH_WINDOW - 10 - i for i in range(CRASH_LIMIT - 1)], [NOW - 1.0]], False),
    # exactly at the window's edge still counts
    ([[NOW - CRASH_WINDOW] * CRASH_LIMIT], True),
])
def test_crash_loop_rule(per_slot: list[list[float]], looping: bool) -> None:
    assert crash_loop(per_slot, NOW) is looping


def test_recent_keeps_only_the_window() -> None:
    assert recent((NOW - CRASH_WINDOW - 0.1, NOW - CRASH_WINDOW, NOW), NOW) == (
        NOW - CRASH_WINDOW, NOW)


def test_a_young_death_series_reaches_the_crash_loop() -> None:
    crashes: tuple[float, ...] = ()
    delays = []
    now = NOW
    for _ in range(CRASH_LIMIT):
        decision = after_exit(now - 0.01, crashes, now)
        crashes = decision.crashes
        delays.append(decision.delay)
        now += decision.delay + 0.01
    assert delays[0] < delays[3] <= BACKOFF_MAX
    assert crash_loop([crashes], now)
