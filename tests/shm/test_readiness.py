"""Active health: the rise/fall machine (tables and properties) and its shared-memory
region (single writer: the health actor; workers read ``peer_ready``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from li_httpd.shm.readiness import NOT_READY, READY, UNKNOWN, Readiness, observe
from li_httpd.shm.state import Layout, SharedState


def run(results: str, rise: int, fall: int, start: Readiness | None = None) -> list[str]:
    """The state name after each result ('+' success, '-' failure)."""
    state, names = start or Readiness(), []
    for result in results:
        state = observe(state, result == "+", rise, fall)
        names.append(state.name)
    return names


R, N = "ready", "not_ready"


@pytest.mark.parametrize(("results", "rise", "fall", "expected"), [
    # The first probe decides at once, whatever rise and fall say.
    ("+", 3, 3, [R]),
    ("-", 3, 3, [N]),
    # A ready peer needs `fall` failures in a row to go out.
    ("+--", 2, 2, [R, R, N]),
    ("+-+-", 2, 2, [R, R, R, R]),
    ("+---", 1, 3, [R, R, R, N]),
    # A not-ready peer needs `rise` successes in a row to come back.
    ("-++", 2, 2, [N, N, R]),
    ("-+-+", 2, 2, [N, N, N, N]),
    ("-+++", 3, 1, [N, N, N, R]),
    # rise = fall = 1 follows every result.
    ("+-+-", 1, 1, [R, N, R, N]),
])
def test_rise_and_fall(results: str, rise: int, fall: int, expected: list[str]) -> None:
    assert run(results, rise, fall) == expected


def test_a_stored_streak_carries_on() -> None:
    """A restarted actor continues the count the killed one left in shared memory."""
    assert run("-", 1, 3, Readiness(READY, 2)) == [N]
    assert run("+", 3, 1, Readiness(NOT_READY, 2)) == [R]


def test_unknown_values_read_as_unknown() -> None:
    assert Readiness(UNKNOWN).name == "unknown"
    assert Readiness(7).name == "unknown"


@given(st.lists(st.booleans(), max_size=40), st.integers(1, 5), st.integers(1, 5))
def test_changes_only_after_enough_agreeing_results(results: list[bool], rise: int,
                                                   fall: int) -> None:
    state = Readiness()
    run_length, last = 0, None
    for index, ok in enumerate(results):
        run_length = run_length + 1 if ok == last else 1
        last = ok
        before = state
        state = observe(state, ok, rise, fall)
        assert state.state in (READY, NOT_READY)
        assert 0 <= state.streak < max(rise, fall)
        if index == 0:
            assert state.state == (READY if ok else NOT_READY)
        elif state.state != before.state:
            # A change needs `rise` (or `fall`) results in a row, all agreeing.
            assert run_length >= (rise if ok else fall)
            assert state.state == (READY if ok else NOT_READY)
        if index > 0 and run_length >= (rise if ok else fall):
            assert state.state == (READY if ok else NOT_READY)


def test_the_segment_stores_probe_state_per_peer() -> None:
    shared = SharedState.create(Layout(64, 4, 3, (11, 12)))
    try:
        assert not any(shared.peer_ready(p) for p in range(3))  # unknown: no traffic
        shared.store_probe(1, Readiness(READY, 0), Readiness(NOT_READY, 1))
        assert [shared.peer_ready(p) for p in range(3)] == [False, True, False]
        assert shared.probe_state(1) == (Readiness(READY, 0), Readiness(NOT_READY, 1))
        assert shared.probe_state(2) == (Readiness(), Readiness())
        # The region comes after every other one: the budgets are untouched.
        assert list(shared.budgets[::5]) == [11, 12]
        assert shared.layout.readiness_offset + 3 * 32 <= shared.layout.size
    finally:
        shared.close()


def test_inherit_carries_probe_state_of_kept_peers() -> None:
    old = SharedState.create(Layout(64, 4, 3))
    new = SharedState.create(Layout(64, 4, 2))
    try:
        old.store_probe(0, Readiness(NOT_READY, 1), Readiness(READY, 0))
        old.store_probe(2, Readiness(READY, 1), Readiness())
        new.inherit(old, {2: 0})
        assert new.probe_state(0) == (Readiness(READY, 1), Readiness())
        assert new.probe_state(1) == (Readiness(), Readiness())
        assert new.peer_ready(0) and not new.peer_ready(1)
    finally:
        old.close()
        new.close()


def _health_config(check: str, peers: int = 2) -> str:
    urls = ", ".join(f'"http://127.0.0.1:{9100 + i}"' for i in range(peers))
    return ('[server]\nlisten = "127.0.0.1:0"\nprofile = "dev"\nworkers = 1\n'
            f'[upstreams.main]\npeers = [{urls}]\n{check}'
            '[routes]\n"/" = "proxy:main"\n')


@pytest.mark.parametrize("peers_after", [2, 3])  # the same segment, a new one
def test_a_reload_that_adds_a_health_check_keeps_serving_until_the_first_probe(
        peers_after: int) -> None:
    """Without a check every peer counts as ready: a reload that adds one must not take
    a serving pool out (all 503) until the actor's first round; instead the first failed
    probe takes a peer out. A peer the reload adds is unknown until probed."""
    from li_httpd.config import load_text
    from li_httpd.shm import layout_for, peer_ids
    from li_httpd.supervisor.generations import Generation, WorkerSlot, next_generation
    from li_httpd.supervisor.listeners import Listeners

    check = '[upstreams.main.health_check]\nready = "/ready"\nfall = 3\n'
    old_loaded = load_text(_health_config(""), "gw.toml")
    shared = SharedState.create(layout_for(old_loaded.config, 1))
    listeners = Listeners()
    listeners.bind("127.0.0.1:0")
    try:
        current = Generation(0, old_loaded, shared, None, [], [WorkerSlot(0)])
        new_loaded = load_text(_health_config(check, peers_after), "gw.toml")
        following = next_generation(current, [], new_loaded, None, listeners)
        ids = peer_ids(new_loaded.config)["main"]
        assert [following.shared.peer_ready(p) for p in ids] == [True, True, False][
            :peers_after]
        ready, _ = following.shared.probe_state(ids[0])
        assert observe(ready, False, 2, 3).state == NOT_READY  # the first probe decides
        assert observe(ready, True, 2, 3) == Readiness(READY, 0)
        # A later reload that keeps the check keeps what the probes found.
        following.shared.store_probe(ids[0], Readiness(NOT_READY), Readiness())
        again = next_generation(following, [current], new_loaded, None, listeners)
        assert not again.shared.peer_ready(ids[0])
    finally:
        listeners.close_all()
        shared.close()
