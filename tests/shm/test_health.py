"""The passive-health state machine."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from li_httpd.shm.health import PeerHealth, on_failure, on_success

NS = 1_000_000_000


def test_max_fails_within_window_marks_down_until_timeout() -> None:
    state = PeerHealth()
    state = on_failure(state, 1 * NS, max_fails=3, fail_timeout_ns=10 * NS)
    state = on_failure(state, 2 * NS, max_fails=3, fail_timeout_ns=10 * NS)
    assert state.is_up(2 * NS)
    state = on_failure(state, 3 * NS, max_fails=3, fail_timeout_ns=10 * NS)
    assert not state.is_up(3 * NS) and not state.is_up(13 * NS - 1)
    assert state.is_up(13 * NS)


def test_failures_outside_the_window_do_not_add_up() -> None:
    state = PeerHealth()
    for second in (1, 12, 23):
        state = on_failure(state, second * NS, max_fails=2, fail_timeout_ns=10 * NS)
    assert state.is_up(23 * NS)


def test_success_resets_and_zero_disables() -> None:
    state = on_failure(PeerHealth(), NS, max_fails=2, fail_timeout_ns=10 * NS)
    assert on_success(state).fails == 0
    disabled = PeerHealth()
    for second in range(10):
        disabled = on_failure(disabled, second * NS, max_fails=0, fail_timeout_ns=NS)
    assert disabled.is_up(10 * NS)


@given(events=st.lists(st.tuples(st.booleans(), st.integers(0, 5 * NS)), max_size=60),
       max_fails=st.integers(1, 5), timeout=st.integers(1, 5))
def test_down_only_after_max_fails_within_a_window(events: list[tuple[bool, int]],
                                                   max_fails: int, timeout: int) -> None:
    state = PeerHealth()
    now = 0
    recent: list[int] = []  # failure times since the last reset
    for failed, gap in events:
        now += gap
        before_up = state.is_up(now)
        if failed:
            state = on_failure(state, now, max_fails, timeout * NS)
            recent = [t for t in recent if now - t <= timeout * NS] + [now]
            if not state.is_up(now) and before_up:
                # it went down: there were max_fails failures within one window
                assert len(recent) >= max_fails or max_fails == 1
                recent = []
        else:
            state = on_success(state)
            recent = []
        # a peer never stays down longer than fail_timeout after its last failure
        assert state.down_until_ns <= now + timeout * NS
