"""The master's respawn policy: young deaths back off and count toward giving up."""

from __future__ import annotations

import time

from li_httpd.config import load
from li_httpd.shm import SharedState, layout_for
from li_httpd.supervisor import master
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
    for _ in range(master.CRASH_LIMIT):
        slot.started = time.monotonic()  # it dies right after starting
        m._worker_exited(generation, slot, 256)
        delays.append(slot.respawn_at - time.monotonic())
    assert delays[0] < delays[3] <= 5.0
    assert m._crash_loop()


def test_a_worker_killed_after_running_is_replaced_at_once() -> None:
    m = _master()
    generation = m.current
    assert generation is not None
    slot = generation.slots[0]
    for _ in range(master.CRASH_LIMIT * 2):
        slot.started = time.monotonic() - 10 * master.YOUNG
        m._worker_exited(generation, slot, 9)
        assert slot.respawn_at <= time.monotonic()
    assert not m._crash_loop()
