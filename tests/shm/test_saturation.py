"""The max_concurrent decision: tables and properties, no shared memory."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from li_httpd.shm import saturation
from li_httpd.shm.saturation import NO_PEER, SATURATED


@pytest.mark.parametrize(("usable", "active", "caps", "room", "verdict"), [
    ((True, True), (0, 0), (1, 1), (0, 1), "ok"),
    ((True, True), (1, 0), (1, 1), (1,), "ok"),
    ((True, True), (1, 1), (1, 1), (), "saturated"),
    ((True, True), (5, 9), (0, 2), (0,), "ok"),               # 0 = no cap
    ((False, True), (0, 3), (4, 3), (), "saturated"),         # the usable one is full
    ((False, False), (0, 0), (4, 4), (), "down"),             # room, but nobody usable
    ((True, False), (2, 0), (2, 2), (), "saturated"),
    ((), (), (), (), "down"),
])
def test_eligible_table(usable: tuple[bool, ...], active: tuple[int, ...],
                        caps: tuple[int, ...], room: tuple[int, ...], verdict: str) -> None:
    assert saturation.eligible(usable, active, caps) == (room, verdict)


def test_choose_codes() -> None:
    current = [0, 0]
    assert saturation.choose((True, True), (1, 1), (1, 1), (1, 1), current, False, 0) \
        == SATURATED
    assert saturation.choose((False, False), (0, 0), (1, 1), (1, 1), current, False, 0) \
        == NO_PEER
    assert current == [0, 0]  # no choice, no change to the round robin


def test_round_robin_among_free_peers_keeps_weights() -> None:
    current = [0, 0, 0]
    picks = [saturation.round_robin(current, (1, 2, 1), (0, 1, 2)) for _ in range(8)]
    assert sorted(picks) == [0, 0, 1, 1, 1, 1, 2, 2]
    assert sum(current) == 0


def test_least_loaded_prefers_the_emptier_and_rotates_ties() -> None:
    assert saturation.least_loaded((3, 1, 2), (1, 1, 1), (0, 1, 2), 0) == 1
    assert saturation.least_loaded((1, 1, 1), (1, 1, 1), (0, 2), 1) == 2
    assert saturation.least_loaded((4, 1), (4, 1), (0, 1), 0) == 0  # 1 per weight each: start


peers = st.integers(min_value=1, max_value=6)


@given(peers.flatmap(lambda n: st.tuples(
    st.lists(st.booleans(), min_size=n, max_size=n),
    st.lists(st.integers(0, 5), min_size=n, max_size=n),
    st.lists(st.integers(0, 4), min_size=n, max_size=n),
    st.lists(st.integers(1, 5), min_size=n, max_size=n),
    st.booleans(), st.integers(0, 10))))
def test_choice_never_breaks_a_cap(case: tuple[list[bool], list[int], list[int], list[int],
                                                bool, int]) -> None:
    usable, active, caps, weights, least_conn, start = case
    current = [0] * len(usable)
    position = saturation.choose(usable, active, caps, weights, current, least_conn, start)
    if position >= 0:
        assert usable[position]
        assert caps[position] == 0 or active[position] < caps[position]
    elif position == SATURATED:
        assert any(usable)
        assert all(caps[i] and active[i] >= caps[i] for i, ok in enumerate(usable) if ok)
    else:
        assert position == NO_PEER and not any(usable)


@given(st.lists(st.integers(0, 3), min_size=1, max_size=5), st.integers(1, 60))
def test_filling_up_ends_saturated_with_every_cap_exact(caps: list[int], requests: int) -> None:
    """Requests arriving one after the other (none finishing) fill each capped peer to
    exactly its cap, then the pool answers SATURATED; uncapped peers never fill."""
    active = [0] * len(caps)
    current = [0] * len(caps)
    usable = [True] * len(caps)
    for _ in range(requests):
        position = saturation.choose(usable, active, caps, [1] * len(caps), current,
                                     False, 0)
        if position < 0:
            assert position == SATURATED and all(caps)
            assert active == caps
            break
        active[position] += 1
    assert all(cap == 0 or count <= cap for count, cap in zip(active, caps, strict=True))
