"""The circuit breaker's pure state machine (shm/circuit.py): tables and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from li_httpd.config.model import CircuitBreaker
from li_httpd.config.units import Millis
from li_httpd.shm import circuit
from li_httpd.shm.circuit import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    Circuit,
    Policy,
    Probes,
    admit,
    live_probes,
    on_probe_abandoned,
    on_probe_result,
    on_trip,
    passable,
    shown_state,
    trips,
    window_totals,
)

NS = 1_000_000_000
POLICY = Policy.of(CircuitBreaker(window=Millis(10_000), min_requests=10, error_percent=50,
                                  open_duration=Millis(15_000), half_open_probes=1,
                                  probe_timeout=Millis(30_000)))
TWO_PROBES = Policy.of(CircuitBreaker(half_open_probes=2))
NONE = Probes(0, 0)


def test_defaults_are_the_documented_ones() -> None:
    policy = Policy.of(CircuitBreaker())
    assert policy.enabled and policy.bucket_ns == NS  # 10 s window in 10 buckets
    assert (policy.min_requests, policy.error_percent, policy.probes) == (10, 50, 1)
    assert policy.open_ns == 15 * NS and policy.probe_timeout_ns == 30 * NS
    assert policy.failures == {"connect", "reset", "malformed", "5xx"}


@pytest.mark.parametrize(("results", "errors", "opens"), [
    (9, 9, False),     # below min_requests: never, whatever the rate
    (10, 4, False),    # 40 %
    (10, 5, True),     # exactly the threshold
    (10, 10, True),
    (100, 49, False),
    (100, 50, True),
    (0, 0, False),
])
def test_trips_table(results: int, errors: int, opens: bool) -> None:
    assert trips(results, errors, POLICY) is opens


@pytest.mark.parametrize(("start", "now", "in_flight", "admission", "state", "until"), [
    # closed: every request goes, nothing changes
    (Circuit(CLOSED, 0, 3, 0), 5 * NS, 0, "closed", CLOSED, 0),
    # open before its time: refused
    (Circuit(OPEN, 20 * NS, 0, 1), 19 * NS, 0, "refused", OPEN, 20 * NS),
    # open at its time: the step to half-open, and the first probe (the only place)
    (Circuit(OPEN, 20 * NS, 0, 1), 20 * NS, 0, "probe", HALF_OPEN, 50 * NS),
    # half-open with its place taken: refused until the place may be free
    (Circuit(HALF_OPEN, 50 * NS, 0, 2), 21 * NS, 1, "refused", HALF_OPEN, 50 * NS),
    # half-open with a place free (the last probe was abandoned)
    (Circuit(HALF_OPEN, 21 * NS, 0, 2), 22 * NS, 0, "probe", HALF_OPEN, 52 * NS),
])
def test_admit_table(start: Circuit, now: int, in_flight: int, admission: str, state: int,
                     until: int) -> None:
    free_at = 50 * NS if in_flight else now + POLICY.probe_timeout_ns
    after, given_ = admit(start, now, Probes(in_flight, free_at), POLICY)
    assert (given_, after.state, after.until_ns) == (admission, state, until)
    assert after.transitions == start.transitions + (after.state != start.state)


def test_two_probe_places_keep_the_hint_open_until_both_are_taken() -> None:
    start = Circuit(OPEN, 10 * NS, 0, 1)
    first, what = admit(start, 10 * NS, NONE, TWO_PROBES)
    assert what == "probe" and passable(first.state, first.until_ns, 10 * NS)
    second, what = admit(first, 11 * NS, Probes(1, 40 * NS), TWO_PROBES)
    assert what == "probe" and second.until_ns == 40 * NS  # the older probe's expiry
    assert not passable(second.state, second.until_ns, 39 * NS)


@pytest.mark.parametrize(("start", "error", "state", "until", "floor"), [
    (Circuit(HALF_OPEN, 0, 0, 2), False, CLOSED, 0, 31),     # closes; fresh window
    (Circuit(HALF_OPEN, 0, 0, 2), True, OPEN, 45 * NS, 0),   # opens for open_duration
    (Circuit(CLOSED, 0, 7, 4), True, CLOSED, 0, 7),          # a late result: no change
    (Circuit(OPEN, 9, 0, 3), False, OPEN, 9, 0),
])
def test_probe_result_table(start: Circuit, error: bool, state: int, until: int,
                            floor: int) -> None:
    after = on_probe_result(start, 30 * NS, error, POLICY)
    assert (after.state, after.until_ns, after.floor) == (state, until, floor)


def test_trip_opens_only_a_closed_circuit() -> None:
    opened = on_trip(Circuit(), 3 * NS, POLICY)
    assert (opened.state, opened.until_ns, opened.transitions) == (OPEN, 18 * NS, 1)
    assert on_trip(opened, 4 * NS, POLICY) == opened


def test_shown_state_calls_a_due_open_circuit_half_open() -> None:
    opened = Circuit(OPEN, 10 * NS, 0, 1)
    assert shown_state(opened, 9 * NS) == "open"
    assert shown_state(opened, 10 * NS) == "half_open"
    assert shown_state(Circuit(), 0) == "closed"
    assert on_probe_abandoned(Circuit(HALF_OPEN, 99, 0, 2), 5).until_ns == 5


def test_window_counts_only_recent_buckets_after_the_floor() -> None:
    buckets = [100, 5, 5,   # the current bucket
               91, 3, 3,    # the oldest bucket still in the window
               90, 7, 7,    # one lap ago: out
               95, 1, 0]
    assert window_totals(buckets, 100, 0) == (17, 8)
    assert window_totals(buckets, 100, 96) == (10, 5)  # closed at epoch 95
    assert window_totals(buckets, 101, 0) == (11, 5)  # 91 left the window


def test_live_probes_ignores_expired_and_empty_columns() -> None:
    columns = [1, 10 * NS,   # live until 40 s
               2, 0,         # expired at 30 s
               0, 29 * NS]   # no probe
    assert live_probes(columns, 31 * NS, 30 * NS) == Probes(1, 40 * NS)
    assert live_probes(columns, 40 * NS, 30 * NS) == Probes(0, 70 * NS)


# -- properties --------------------------------------------------------------------------

_EVENT = st.tuples(st.sampled_from(["admit", "success", "error", "abandon", "trip"]),
                   st.integers(min_value=0, max_value=20 * NS))


@given(st.lists(_EVENT, max_size=60), st.integers(min_value=1, max_value=3))
def test_probes_in_flight_never_exceed_the_places(events: list[tuple[str, int]],
                                                  places: int) -> None:
    """Whatever happens, no more than ``half_open_probes`` requests are admitted as
    probes and unanswered at once; every state change counts one transition; an open
    circuit admits nothing before its time."""
    policy = Policy.of(CircuitBreaker(half_open_probes=places, open_duration=Millis(2000),
                                      probe_timeout=Millis(600_000)))
    state = Circuit()
    now = 0
    in_flight = 0
    for kind, step in events:
        now += step
        before = state
        if kind == "admit":
            state, what = admit(state, now, Probes(in_flight, now + policy.probe_timeout_ns),
                                policy)
            if before.state == OPEN and now < before.until_ns:
                assert what == "refused"
            if what == "probe":
                in_flight += 1
            assert what != "closed" or before.state == CLOSED
        elif kind == "trip":
            state = on_trip(state, now, policy)
        elif in_flight:
            in_flight -= 1
            state = (on_probe_abandoned(state, now) if kind == "abandon" else
                     on_probe_result(state, now, kind == "error", policy))
        if state.state == CLOSED:
            in_flight = 0  # any later result of those probes changes nothing
        assert in_flight <= places
        assert state.transitions == before.transitions + (state.state != before.state)
        assert state.state in (CLOSED, OPEN, HALF_OPEN)


@given(st.integers(min_value=0, max_value=1000), st.integers(min_value=0, max_value=1000),
       st.integers(min_value=1, max_value=100))
def test_trips_is_monotonic_in_errors(results: int, errors: int, percent: int) -> None:
    policy = Policy.of(CircuitBreaker(error_percent=percent, min_requests=1))
    errors = min(errors, results)
    if trips(results, errors, policy) and errors < results:
        assert trips(results, errors + 1, policy)
    assert not trips(results, 0, policy)


def test_bucket_count_is_a_tenth_of_the_window() -> None:
    assert circuit.BUCKETS == 10
    assert Policy.of(CircuitBreaker(window=Millis(1000))).bucket_ns == NS // 10


def test_a_floor_from_wider_buckets_does_not_blind_the_window() -> None:
    """A floor is at most the bucket after now; one further ahead was set in the units
    of another window (an old-generation worker closed the circuit after a reload made
    the window wider) and would keep every result out for ever: it is ignored."""
    buckets = [100, 5, 5, 99, 1, 1]
    assert window_totals(buckets, 100, 101) == (0, 0)  # just closed: nothing counts
    assert window_totals(buckets, 100, 100) == (10, 5)
    assert window_totals(buckets, 100, 6_000) == (12, 6)


@pytest.mark.parametrize(("before", "after"), [
    (Circuit(CLOSED, 0, 7, 2), Circuit(OPEN, 500, 7, 3)),
    (Circuit(OPEN, 100, 7, 3), Circuit(OPEN, 100, 7, 3)),
    (Circuit(HALF_OPEN, 100, 7, 4), Circuit(HALF_OPEN, 100, 7, 4)),
])
def test_adopt_open(before: Circuit, after: Circuit) -> None:
    assert circuit.adopt_open(before, 500) == after
