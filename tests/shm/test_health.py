"""The passive-health state machine: the pure transitions, and the shared-memory path the
workers use (``SharedState.peer_failed`` / ``peer_succeeded`` / ``peer_up``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from li_httpd.shm.health import PeerHealth, on_failure, on_success
from li_httpd.shm.state import Layout, SharedState

NS = 1_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def test_max_fails_within_window_marks_down_until_timeout() -> None:
    state = PeerHealth()
    state = on_failure(state, 1 * NS, max_fails=3, fail_timeout_ns=10 * NS)
    state = on_failure(state, 2 * NS, max_fails=3, fail_timeout_ns=10 * NS)
    assert state.down_until_ns == 0
    state = on_failure(state, 3 * NS, max_fails=3, fail_timeout_ns=10 * NS)
    assert state.down_until_ns == 13 * NS


def test_shared_state_marks_a_peer_down_until_the_timeout() -> None:
    clock = FakeClock()
    shared = SharedState.create(Layout(8, 2, 2), clock)
    try:
        for second in (1, 2):
            clock.now = second * NS
            assert not shared.peer_failed(1, max_fails=3, fail_timeout_ns=10 * NS)
            assert shared.peer_up(1, clock.now)
        clock.now = 3 * NS
        assert shared.peer_failed(1, max_fails=3, fail_timeout_ns=10 * NS)
        assert not shared.peer_up(1, 3 * NS) and not shared.peer_up(1, 13 * NS - 1)
        assert shared.peer_up(1, 13 * NS) and shared.peer_up(0, 3 * NS)
        assert not shared.peer_succeeded(1)  # still down: a late success does not count
        assert shared.health(1).fails == 0 and not shared.peer_up(1, clock.now)
        clock.now = 13 * NS
        assert shared.peer_succeeded(1)  # tried again after the timeout: marked up
        assert shared.health(1).down_until_ns == 0
        assert not shared.peer_succeeded(1)  # once
    finally:
        shared.close()


def test_failures_outside_the_window_do_not_add_up() -> None:
    state = PeerHealth()
    for second in (1, 12, 23):
        state = on_failure(state, second * NS, max_fails=2, fail_timeout_ns=10 * NS)
    assert state.down_until_ns == 0


def test_success_resets_and_zero_disables() -> None:
    state = on_failure(PeerHealth(), NS, max_fails=2, fail_timeout_ns=10 * NS)
    assert on_success(state).fails == 0
    down = PeerHealth(0, NS, 11 * NS)
    assert on_success(down, 10 * NS) == down
    assert on_success(down, 11 * NS) == PeerHealth()
    disabled = PeerHealth()
    for second in range(10):
        disabled = on_failure(disabled, second * NS, max_fails=0, fail_timeout_ns=NS)
    assert disabled == PeerHealth()


@given(events=st.lists(st.tuples(st.booleans(), st.integers(0, 5 * NS)), max_size=60),
       max_fails=st.integers(1, 5), timeout=st.integers(1, 5))
def test_down_only_after_max_fails_within_a_window(events: list[tuple[bool, int]],
                                                   max_fails: int, timeout: int) -> None:
    """Through the shared segment, as the workers use it."""
    clock = FakeClock()
    shared = SharedState.create(Layout(8, 2, 1), clock)
    try:
        recent: list[int] = []  # failure times since the last reset
        for failed, gap in events:
            clock.now += gap
            now = clock.now
            before_up = shared.peer_up(0, now)
            if failed:
                went_down = shared.peer_failed(0, max_fails, timeout * NS)
                recent = [t for t in recent if now - t <= timeout * NS] + [now]
                if before_up and not shared.peer_up(0, now):
                    assert went_down
                    # it went down: there were max_fails failures within one window
                    assert len(recent) >= max_fails or max_fails == 1
                    recent = []
            else:
                shared.peer_succeeded(0)
                recent = []
            # a peer never stays down longer than fail_timeout after its last failure
            assert shared.health(0).down_until_ns <= now + timeout * NS
            assert shared.peer_up(0, now + timeout * NS)
    finally:
        shared.close()
