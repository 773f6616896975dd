"""The master's crash-loop rule counts only young deaths inside the window, on every slot
(found by review at 9447c3b: stale deaths on one slot plus fresh ones on another made
the master give up)."""

from __future__ import annotations

import time
from collections import deque

from li_httpd.config import load_text
from li_httpd.shm.state import Layout, SharedState
from li_httpd.supervisor.master import CRASH_LIMIT, CRASH_WINDOW, Generation, Master, WorkerSlot

CONFIG = ('[server]\nlisten = "127.0.0.1:0"\nprofile = "dev"\nworkers = 2\n'
          '[routes]\n"GET /health" = "static:healthcheck"\n')


def _master_with(crashes: list[list[float]]) -> Master:
    loaded = load_text(CONFIG, "crash.toml")
    master = Master(loaded)
    slots = [WorkerSlot(index, crashes=deque(times)) for index, times in enumerate(crashes)]
    master.current = Generation(0, loaded, SharedState.create(Layout(16, 2, 1)), None, [],
                                slots)
    return master


def test_old_deaths_on_another_slot_do_not_count() -> None:
    now = time.monotonic()
    stale = [now - CRASH_WINDOW - 10 - i for i in range(CRASH_LIMIT - 1)]
    fresh = [now - 1.0]
    master = _master_with([stale, fresh])
    assert not master._crash_loop()
    assert not master.slots[0].crashes  # pruned


def test_deaths_inside_the_window_on_all_slots_add_up() -> None:
    now = time.monotonic()
    half = CRASH_LIMIT // 2
    master = _master_with([[now - 1.0] * half, [now - 2.0] * (CRASH_LIMIT - half)])
    assert master._crash_loop()
