"""The master applies the respawn policy (supervisor/reaper.py) to the exits it reaps:
young deaths back off and add up to a crash loop; a worker that ran is replaced at once."""

from __future__ import annotations

import time

from li_httpd.config import load
from li_httpd.shm import SharedState, layout_for
from li_httpd.supervisor import reaper
from li_httpd.supervisor.master import Generation, Master, WorkerSlot


def _master() -> Master:
    loaded = load(":embedded:")
    m = Master(loaded)
    shared = SharedState.create(layout_for(loaded.config, 1))
    m.current = Generation(0, loaded, shared, None, [], [WorkerSlot(0)])
    return m


def test_young_deaths_back_off_and_add_up_to_a_crash_loop() -> None:
    m = _master()
    generation = m.current
    assert generation is not None
    slot = generation.slots[0]
    delays = []
    now = time.monotonic()
    for _ in range(reaper.CRASH_LIMIT):
        slot.started = now  # it dies right after starting
        m._worker_exited(generation, slot, reaper.Exited(0, 256), now)
        delays.append(slot.respawn_at - now)
    assert delays[0] < delays[3] <= 5.0
    assert m._crash_loop(now)


def test_a_worker_killed_after_running_is_replaced_at_once() -> None:
    m = _master()
    generation = m.current
    assert generation is not None
    slot = generation.slots[0]
    now = time.monotonic()
    for _ in range(reaper.CRASH_LIMIT * 2):
        slot.started = now - 10 * reaper.YOUNG
        m._worker_exited(generation, slot, reaper.Exited(0, 9), now)
        assert slot.respawn_at <= now
    assert not m._crash_loop(now)
