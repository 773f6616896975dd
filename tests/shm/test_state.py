"""The shared segment across real processes: exact limits, crash safety, balancing."""

from __future__ import annotations

import os
import signal
import time

from li_httpd.shm import gcra
from li_httpd.shm.state import Layout, SharedState

NS = gcra.NS_PER_SECOND


class FakeClock:
    def __init__(self) -> None:
        self.now = 100 * NS

    def __call__(self) -> int:
        return self.now


def _state(capacity: int = 64, slots: int = 4, peers: int = 3, clock: object = None) -> SharedState:
    return SharedState.create(Layout(capacity, slots, peers),
                              clock if clock is not None else time.monotonic_ns)  # type: ignore[arg-type]


def test_burst_and_streams_on_one_key() -> None:
    clock = FakeClock()
    state = _state(clock=clock)
    rate = gcra.Rate.of(10, 3)
    results = [state.admit(12345, rate, max_streams=100) for _ in range(5)]
    assert [r.allowed for r in results] == [True, True, True, False, False]
    assert results[3].reason == "rate" and results[3].retry_after_ns > 0
    clock.now += results[3].retry_after_ns
    assert state.admit(12345, rate, 100).allowed
    capped = _state(clock=clock)
    loose = gcra.Rate.of(1000, 1000)
    admitted = [capped.admit(7, loose, max_streams=2) for _ in range(3)]
    assert [a.allowed for a in admitted] == [True, True, False]
    assert admitted[2].reason == "streams"
    capped.release_stream(admitted[0].index)
    assert capped.admit(7, loose, 2).allowed


def test_table_full_refuses_new_keys_but_keeps_old_state() -> None:
    clock = FakeClock()
    state = _state(capacity=8, clock=clock)  # one bucket of 8
    rate = gcra.Rate.of(1, 1)
    for key in range(1, 9):
        assert state.admit(key, rate, 10).allowed  # each now limited for 1 s
    flood = state.admit(999, rate, 10)
    assert not flood.allowed and flood.reason == "table_full"
    assert not state.admit(1, rate, 10).allowed  # key 1 was not reset by the flood
    clock.now += NS  # every key is idle again, but key 1..8 hold streams
    assert state.admit(999, rate, 10).reason == "table_full"
    for index in range(8):
        state.release_stream(index)
    assert state.admit(999, rate, 10).allowed  # an idle entry was reused


def test_counters_hold_across_processes_and_survive_a_kill() -> None:
    state = _state(slots=4)
    rate = gcra.Rate.of(100_000, 100_000)
    children = []
    for slot in range(1, 4):
        pid = os.fork()
        if pid == 0:
            state.slot = slot
            for _ in range(50):
                state.admit(42, rate, max_streams=10_000)
            if slot == 3:
                os.kill(os.getpid(), signal.SIGKILL)  # dies holding its streams
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    index = state.admit(42, rate, 10_000).index  # slot 0 (this process) opens one more
    assert state.streams_of(index) == 151
    state.clear_worker(3)
    assert state.streams_of(index) == 101


def test_a_killed_lock_holder_does_not_block_others() -> None:
    state = _state()
    pid = os.fork()
    if pid == 0:
        state._lock(1 << 40)  # holds a bucket lock forever
        time.sleep(60)
        os._exit(0)
    time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    started = time.monotonic()
    assert state.admit(0, gcra.Rate.of(10, 10), 10).allowed  # bucket 0's lock is free
    assert time.monotonic() - started < 1


def test_round_robin_is_global_and_skips_down_peers() -> None:
    state = _state(peers=3)
    peers, weights = [0, 1, 2], [1, 1, 1]
    picks = []
    for _ in range(30):
        pid_pick = state.pick_round_robin(0, peers, weights, ())
        picks.append(pid_pick)
    assert picks.count(0) == picks.count(1) == picks.count(2) == 10
    for _ in range(2):
        state.peer_failed(1, max_fails=2, fail_timeout_ns=10 * NS)
    picks = [state.pick_round_robin(0, peers, weights, ()) for _ in range(10)]
    assert 1 not in picks
    assert state.pick_round_robin(0, peers, weights, (0, 2)) == -1


def test_least_conn_reads_every_worker() -> None:
    state = _state(slots=2, peers=3)
    state.slot = 1
    state.add_active(0, 5)
    state.slot = 0
    state.add_active(1, 2)
    assert state.pick_least_conn([0, 1, 2], [1, 1, 1], (), 0) == 2
    state.add_active(2, 3)
    assert state.pick_least_conn([0, 1, 2], [1, 1, 1], (), 0) == 1
    assert state.pick_least_conn([0, 1, 2], [1, 4, 1], (), 0) == 1


def test_key_secret_is_random_per_gateway_and_carried_across_reloads() -> None:
    """Rate-limit keys are hashed with a secret: a reload keeps it (the carried key
    table was hashed with it), a new gateway draws a new one."""
    first = _state()
    second = _state()
    assert len(first.key_secret) == 16 and first.key_secret != second.key_secret
    reloaded = _state()
    reloaded.inherit(first, {})
    assert reloaded.key_secret == first.key_secret


def _queued(slots: int = 4, sizes: tuple[int, ...] = (3,)) -> SharedState:
    return SharedState.create(Layout(64, slots, 3, (), tuple((i + 1, s)
                                                             for i, s in enumerate(sizes))))


def test_queue_is_fifo_across_worker_slots_and_bounded() -> None:
    state = _queued(sizes=(3, 2))
    tickets = []
    for slot in (2, 0, 3):  # three workers in this arrival order
        state.slot = slot
        tickets.append(state.queue_join(0))
    assert state.queue_join(0) == 0  # the fourth overflows
    assert state.queue_depth(0) == 3 and state.queue_depth(1) == 0  # queues are separate
    order = []
    while state.queue_depth(0):
        head = state.queue_head(0)
        order.append(head)
        state.queue_leave(0, head)
    assert order == tickets
    assert state.queue_head(0) == 0


def test_a_dead_slots_queue_entries_are_cleared() -> None:
    state = _queued()
    for slot in (1, 2, 1):
        state.slot = slot
        state.queue_join(0)
    state.clear_worker(1)
    assert state.queue_depth(0) == 1 and state.queue_head(0) == 2
    state.slot = 3
    assert state.queue_join(0) == 4


def test_queue_of_a_killed_process_is_cleared_by_the_master() -> None:
    state = _queued()
    pid = os.fork()
    if pid == 0:  # a worker in slot 1 joins, then dies holding its place
        state.slot = 1
        state.queue_join(0)
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    assert state.queue_depth(0) == 1
    state.clear_worker(1)
    assert state.queue_depth(0) == 0 and state.queue_head(0) == 0


def test_capped_pick_counts_every_slot_and_tells_saturated_from_down() -> None:
    from li_httpd.shm.saturation import NO_PEER, SATURATED

    clock = FakeClock()
    state = _state(clock=clock)
    ids, weights, caps = (0, 1), (1, 1), (1, 2)
    taken = []
    for slot in (0, 1, 2):
        state.slot = slot
        taken.append(state.pick_capped(0, ids, weights, caps, (), False, 0))
    assert sorted(taken) == [0, 1, 1]
    assert state.active_of(0) == 1 and state.active_of(1) == 2
    state.slot = 3
    assert state.pick_capped(0, ids, weights, caps, (), False, 0) == SATURATED
    state.peer_failed(0, 1, 10 * NS)
    state.peer_failed(1, 1, 10 * NS)
    assert state.pick_capped(0, ids, weights, caps, (), False, 0) == NO_PEER
    clock.now += 11 * NS
    state.clear_worker(1)  # a dead worker's places come back
    assert state.pick_capped(0, ids, weights, caps, (), True, 0) >= 0
