"""The circuit breaker in the shared segment: counted across worker slots, transitions
under the peer's lock, probe places freed by the master's cleanup, by their timeout and
by the kernel when a lock holder dies, state carried across a reload."""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from li_httpd.config.model import CircuitBreaker
from li_httpd.config.units import Millis
from li_httpd.shm.circuit import CLOSED, HALF_OPEN, OPEN, Policy
from li_httpd.shm.state import _LOCK_CIRCUITS, Layout, SharedState

NS = 1_000_000_000
POLICY = Policy.of(CircuitBreaker(window=Millis(10_000), min_requests=10, error_percent=50,
                                  open_duration=Millis(5_000), half_open_probes=1,
                                  probe_timeout=Millis(20_000)))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000 * NS

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(clock: FakeClock) -> Iterator[SharedState]:
    shared = SharedState.create(Layout(64, 4, 3), clock)
    yield shared
    shared.close()


def _record(state: SharedState, slot: int, peer: int, error: bool, count: int = 1,
            probe: bool = False) -> list[object]:
    state.slot = slot
    steps = [state.circuit_record(peer, POLICY, error, probe) for _ in range(count)]
    return [step for step in steps if step is not None]


def _open(state: SharedState, peer: int = 1) -> None:
    assert _record(state, 0, peer, True, 10)
    assert state.circuit(peer).state == OPEN


def test_errors_from_every_worker_open_the_circuit(state: SharedState) -> None:
    assert not _record(state, 0, 1, False, 5)
    assert not _record(state, 1, 1, True, 2)
    assert not _record(state, 2, 1, True, 2)  # 9 results: below min_requests
    assert state.circuit(1).state == CLOSED
    steps = _record(state, 3, 1, True)        # 10 results, 5 errors: 50 %
    assert len(steps) == 1 and state.circuit(1).state == OPEN
    assert state.circuit(1).transitions == 1
    assert state.circuit(0).state == CLOSED and state.circuit(2).state == CLOSED


def test_an_open_peer_is_skipped_by_both_pickers(state: SharedState,
                                                 clock: FakeClock) -> None:
    _open(state)
    assert not state.peer_usable(1, clock.now)
    picks = {state.pick_round_robin(0, [0, 1, 2], [1, 1, 1], ()) for _ in range(12)}
    assert picks == {0, 2}
    assert state.pick_least_conn([0, 1, 2], [1, 1, 1], (), 1) != 1
    assert state.pick_round_robin(0, [0, 1, 2], [1, 1, 1], (0, 2)) == -1
    clock.now += 5 * NS  # the open time is over: pickers may try it (as a probe)
    assert state.peer_usable(1, clock.now)


def test_the_healthy_path_takes_no_lock(state: SharedState) -> None:
    """Another process holds peer 0's circuit lock: successes, errors below the rate
    and admissions of a closed circuit still go through at once (no monkeypatching:
    the compiled build's methods cannot be replaced)."""
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        state._lock(_LOCK_CIRCUITS + 0)
        os.write(ready_write, b"x")
        time.sleep(60)
        os._exit(0)
    try:
        os.read(ready_read, 1)
        done = threading.Event()

        def healthy_path() -> None:
            _record(state, 0, 0, False, 100)
            _record(state, 1, 0, True, 3)  # errors below the rate: summed, no lock
            assert state.circuit_admit(0, POLICY).admission == "closed"
            assert state.peer_usable(0, state.clock())
            done.set()

        worker = threading.Thread(target=healthy_path, daemon=True)
        worker.start()
        assert done.wait(5), "the healthy path waited for the circuit lock"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready_read)
        os.close(ready_write)


def test_half_open_admits_one_probe_globally_and_a_success_closes(
        state: SharedState, clock: FakeClock) -> None:
    _open(state)
    state.slot = 0
    assert state.circuit_admit(1, POLICY).admission == "refused"
    clock.now += 5 * NS
    state.slot = 2
    step = state.circuit_admit(1, POLICY)
    assert (step.admission, step.before, step.after) == ("probe", OPEN, HALF_OPEN)
    state.slot = 0
    assert state.circuit_admit(1, POLICY).admission == "refused"
    assert not state.peer_usable(1, clock.now)  # the only place is taken
    steps = _record(state, 2, 1, False, probe=True)
    assert len(steps) == 1 and state.circuit(1).state == CLOSED
    assert state.circuit(1).transitions == 3
    # The errors that opened it are history: the fresh window starts empty.
    clock.now += NS
    assert not _record(state, 0, 1, True, 9)
    assert state.circuit(1).state == CLOSED


def test_a_probe_failure_opens_again(state: SharedState, clock: FakeClock) -> None:
    _open(state)
    clock.now += 5 * NS
    state.slot = 1
    assert state.circuit_admit(1, POLICY).admission == "probe"
    assert _record(state, 1, 1, True, probe=True)
    circuit = state.circuit(1)
    assert circuit.state == OPEN and circuit.until_ns == clock.now + 5 * NS


def test_an_abandoned_probe_frees_its_place(state: SharedState, clock: FakeClock) -> None:
    _open(state)
    clock.now += 5 * NS
    state.slot = 1
    assert state.circuit_admit(1, POLICY).admission == "probe"
    state.circuit_probe_abandoned(1, POLICY)
    assert state.peer_usable(1, clock.now)
    state.slot = 3
    assert state.circuit_admit(1, POLICY).admission == "probe"


def test_a_probe_without_answer_frees_its_place_after_probe_timeout(
        state: SharedState, clock: FakeClock) -> None:
    _open(state)
    clock.now += 5 * NS
    state.slot = 1
    assert state.circuit_admit(1, POLICY).admission == "probe"
    state.slot = 0
    clock.now += 20 * NS - 1
    assert not state.peer_usable(1, clock.now)
    assert state.circuit_admit(1, POLICY).admission == "refused"
    clock.now += 1
    assert state.peer_usable(1, clock.now)
    assert state.circuit_admit(1, POLICY).admission == "probe"


def test_the_masters_cleanup_frees_a_dead_workers_probe(state: SharedState,
                                                        clock: FakeClock) -> None:
    _open(state)
    clock.now += 5 * NS
    state.slot = 2
    assert state.circuit_admit(1, POLICY).admission == "probe"
    state.clear_worker(2)
    assert state.peer_usable(1, clock.now)
    state.slot = 0
    assert state.circuit_admit(1, POLICY).admission == "probe"


def test_a_worker_killed_holding_a_probe_or_the_lock_leaves_nothing_stuck() -> None:
    """Real processes: a child takes the probe place and dies by SIGKILL; another child
    dies holding the circuit lock. The survivor is refused only until the master's
    cleanup, and never blocks on the lock."""
    clock = FakeClock()
    state = SharedState.create(Layout(64, 4, 2), clock)
    try:
        policy = Policy.of(CircuitBreaker(open_duration=Millis(1000), min_requests=1))
        state.circuit_record(0, policy, True, False)
        assert state.circuit(0).state == OPEN
        clock.now += 2 * NS  # the open time is over (the children inherit this clock)
        pid = os.fork()
        if pid == 0:  # never returns into pytest, whatever happens
            try:
                state.slot = 1
                if state.circuit_admit(0, policy).admission == "probe":
                    os.kill(os.getpid(), signal.SIGKILL)
            finally:
                os._exit(3)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status)
        assert state.circuit_admit(0, policy).admission == "refused"
        ready_read, ready_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(ready_read)
                state._lock(_LOCK_CIRCUITS + 0)
                os.write(ready_write, b"x")
                time.sleep(60)
            finally:
                os._exit(0)
        os.close(ready_write)  # a child that dies before signalling reads as EOF
        try:
            # The child holds the lock now (bounded: a child stuck before it fails here).
            assert select.select([ready_read], [], [], 10)[0], "the child never signalled"
            assert os.read(ready_read, 1) == b"x"
        finally:
            os.close(ready_read)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        state.clear_worker(1)
        started = time.monotonic()
        assert state.circuit_admit(0, policy).admission == "probe"
        assert time.monotonic() - started < 1
    finally:
        state.close()


def test_reload_carries_the_circuit(state: SharedState, clock: FakeClock) -> None:
    _open(state, peer=2)
    new = SharedState.create(Layout(64, 4, 2), clock)
    try:
        new.inherit(state, {2: 0, 0: 1})
        carried = new.circuit(0)
        assert carried.state == OPEN and carried.until_ns == state.circuit(2).until_ns
        assert carried.transitions == 1 and new.circuit(1).state == CLOSED
        assert not new.peer_usable(0, clock.now)
    finally:
        new.close()


def test_reload_frees_the_places_of_a_half_open_circuit(state: SharedState,
                                                        clock: FakeClock) -> None:
    """The old workers keep their probe (in the old segment); the new ones may probe."""
    _open(state)
    clock.now += 5 * NS
    assert state.circuit_admit(1, POLICY).admission == "probe"
    assert not state.peer_usable(1, clock.now)
    new = SharedState.create(Layout(64, 4, 3), clock)
    try:
        new.inherit(state, {1: 1})
        assert new.circuit(1).state == HALF_OPEN and new.peer_usable(1, clock.now)
        assert new.circuit_admit(1, POLICY).admission == "probe"
        new.reset_circuit(1)  # a reload that turns the breaker off
        assert new.circuit(1).state == CLOSED and new.circuit(1).transitions == 3
    finally:
        new.close()


@pytest.mark.parametrize(("before", "after"), [("1s", "60s"), ("60s", "1s")])
def test_a_reload_that_changes_the_window_keeps_the_breaker_working(
        clock: FakeClock, before: str, after: str) -> None:
    """A reload that keeps the peers keeps the very segment, so the circuit's floor (a
    bucket number in the old window's units) stays: with a wider window it lay far in
    the new buckets' future, and no error counted again for that peer, ever."""
    from li_httpd.config import load_text
    from li_httpd.shm import layout_for, peer_ids
    from li_httpd.supervisor.generations import Generation, WorkerSlot, next_generation
    from li_httpd.supervisor.listeners import Listeners

    def config(window: str) -> str:
        return ('[server]\nlisten = "127.0.0.1:0"\nprofile = "dev"\nworkers = 1\n'
                '[upstreams.main]\npeers = ["http://127.0.0.1:9100"]\n'
                f'[upstreams.main.circuit_breaker]\nwindow = "{window}"\nmin_requests = 2\n'
                'open_duration = "1s"\n[routes]\n"/" = "proxy:main"\n')

    old_loaded = load_text(config(before), "gw.toml")
    shared = SharedState.create(layout_for(old_loaded.config, 1), clock)
    peer = peer_ids(old_loaded.config)["main"][0]
    policy = Policy.of(old_loaded.config.upstreams["main"].circuit_breaker)
    for _ in range(2):
        shared.circuit_record(peer, policy, True, False)
    assert shared.circuit(peer).state == OPEN
    clock.now += 2 * NS
    assert shared.circuit_admit(peer, policy).admission == "probe"
    shared.circuit_record(peer, policy, False, True)
    assert shared.circuit(peer).state == CLOSED
    listeners = Listeners()
    listeners.bind("127.0.0.1:0")
    try:
        current = Generation(0, old_loaded, shared, None, [], [WorkerSlot(0)])
        new_loaded = load_text(config(after), "gw.toml")
        following = next_generation(current, [], new_loaded, None, listeners)
    finally:
        listeners.close_all()
    assert following.shared is shared  # same peers, same layout: the same segment
    policy = Policy.of(new_loaded.config.upstreams["main"].circuit_breaker)
    clock.now += 7 * NS  # into a later bucket of either width
    for _ in range(2):
        shared.circuit_record(peer, policy, True, False)
    assert shared.circuit(peer).state == OPEN
    shared.close()


def test_a_stale_probe_ending_late_frees_no_place_of_a_newer_one(
        state: SharedState, clock: FakeClock) -> None:
    """Same worker: probe 1 has no answer for probe_timeout, so its place goes to probe
    2; when probe 1 then ends (the route's first-byte timeout is longer by default), the
    place it gives back is not probe 2's: one probe at a time still."""
    _open(state)
    clock.now += 5 * NS
    state.slot = 1
    assert state.circuit_admit(1, POLICY).admission == "probe"
    clock.now += 20 * NS
    assert state.circuit_admit(1, POLICY).admission == "probe"  # probe 2, same worker
    clock.now += 10 * NS
    state.circuit_probe_abandoned(1, POLICY)  # probe 1 ends at last, no verdict
    for slot in (1, 2):
        state.slot = slot
        assert state.circuit_admit(1, POLICY).admission == "refused"
    state.slot = 1
    state.circuit_probe_abandoned(1, POLICY)  # probe 2 ends too: the place is free
    assert state.circuit_admit(1, POLICY).admission == "probe"


def test_an_opening_from_another_instance_opens_only_a_closed_circuit(
        state: SharedState, clock: FakeClock) -> None:
    step = state.circuit_adopt_open(0, 3 * NS)
    assert step is not None and step.changed and state.circuit(0).state == OPEN
    assert state.circuit(0).until_ns == clock.now + 3 * NS
    assert state.circuit_adopt_open(0, 9 * NS) is None  # already open: left alone
    assert state.circuit(0).until_ns == clock.now + 3 * NS
    _open(state, 1)
    until = state.circuit(1).until_ns
    assert state.circuit_adopt_open(1, 1) is None and state.circuit(1).until_ns == until
