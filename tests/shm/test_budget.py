"""Budget arithmetic (shm/budget.py): decision tables and properties of reserve/settle."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from li_httpd.shm import budget
from li_httpd.shm.budget import MINUTE_NS, NS_PER_SECOND, Denied, Grant, Limits, Usage

HOUR_NS = 3600 * NS_PER_SECOND
T0 = 1_000 * HOUR_NS  # the start of a minute window and of an hour window
LIMITS = Limits(tokens_per_minute=1000, micro_usd=5_000_000, window_ns=HOUR_NS)


def _reserve(usage: Usage, limits: Limits, tokens: int, usd: int,
             now: int) -> tuple[Usage, Grant] | Denied:
    return budget.reserve(usage, limits, tokens, usd, now)


@pytest.mark.parametrize(("used_tokens", "used_usd", "tokens", "usd", "at", "expect"), [
    # fits exactly
    (0, 0, 1000, 5_000_000, 0, "grant"),
    (999, 4_999_999, 1, 1, 0, "grant"),
    # one over, in each dimension; Retry-After = seconds left in the blocking window
    (999, 0, 2, 0, 0, ("tokens", 60, "over the budget")),
    (0, 4_999_999, 0, 2, 0, ("usd", 3600, "over the budget")),
    (999, 0, 2, 0, 59 * NS_PER_SECOND + 1, ("tokens", 1, "over the budget")),
    (999, 0, 2, 0, 30 * NS_PER_SECOND + 1, ("tokens", 30, "over the budget")),
    # both refuse: the one whose window ends last decides the Retry-After
    (1000, 5_000_000, 1, 1, 0, ("usd", 3600, "over the budget")),
    # larger than the whole limit: the window's length, whatever is used
    (0, 0, 1001, 0, 10 * NS_PER_SECOND, ("tokens", 60, "larger than the budget")),
    (0, 0, 0, 5_000_001, 0, ("usd", 3600, "larger than the budget")),
    (0, 0, 1001, 5_000_001, 0, ("usd", 3600, "larger than the budget")),
    # "larger than" wins over "over" (retrying later never helps it)
    (0, 5_000_000, 1001, 1, 0, ("tokens", 60, "larger than the budget")),
])
def test_reserve_table(used_tokens: int, used_usd: int, tokens: int, usd: int, at: int,
                       expect: object) -> None:
    usage = Usage(T0 // MINUTE_NS, used_tokens, T0 // HOUR_NS, used_usd)
    decision = _reserve(usage, LIMITS, tokens, usd, T0 + at)
    if expect == "grant":
        assert not isinstance(decision, Denied)
        after, grant = decision
        assert after == Usage(usage.token_window, used_tokens + tokens, usage.usd_window,
                              used_usd + usd)
        assert grant == Grant(usage.token_window, tokens, usage.usd_window, usd)
    else:
        assert isinstance(decision, Denied)
        assert (decision.limit, decision.retry_after_s, decision.reason) == expect


def test_zero_limits_are_unlimited_but_counted() -> None:
    limits = Limits(0, 0, HOUR_NS)
    decision = _reserve(Usage(), limits, 10**12, 10**15, T0)
    assert not isinstance(decision, Denied)
    assert decision[0].tokens == 10**12 and decision[0].micro_usd == 10**15
    only_tokens = Limits(100, 0, HOUR_NS)
    assert not isinstance(_reserve(Usage(), only_tokens, 100, 10**15, T0), Denied)
    assert isinstance(_reserve(Usage(), only_tokens, 101, 0, T0), Denied)


def test_windows_roll_over_independently() -> None:
    usage = Usage(T0 // MINUTE_NS, 1000, T0 // HOUR_NS, 5_000_000)
    assert isinstance(_reserve(usage, LIMITS, 1, 0, T0 + MINUTE_NS - 1), Denied)
    tokens_only = _reserve(usage, LIMITS, 1000, 0, T0 + MINUTE_NS)  # a new minute
    assert not isinstance(tokens_only, Denied)
    assert tokens_only[0] == Usage(T0 // MINUTE_NS + 1, 1000, T0 // HOUR_NS, 5_000_000)
    assert isinstance(_reserve(usage, LIMITS, 1, 1, T0 + MINUTE_NS), Denied)  # same hour
    assert not isinstance(_reserve(usage, LIMITS, 1, 1, T0 + HOUR_NS), Denied)


def test_settle_table() -> None:
    start = Usage(T0 // MINUTE_NS, 0, T0 // HOUR_NS, 0)
    reserved = _reserve(start, LIMITS, 600, 3_000_000, T0)
    assert not isinstance(reserved, Denied)
    usage, grant = reserved
    # actual below the reservation: the difference comes back
    assert budget.settle(usage, grant, 100, 500_000) == Usage(
        usage.token_window, 100, usage.usd_window, 500_000)
    # a cut stream settles with the reservation itself: unchanged
    assert budget.settle(usage, grant, grant.tokens, grant.micro_usd) == usage
    # actual above the reservation (an estimate that was low): charged
    assert budget.settle(usage, grant, 700, 3_000_000).tokens == 700
    # the minute rolled (another request reserved in the next one): tokens untouched,
    # dollars (same hour) settled
    later = _reserve(usage, LIMITS, 50, 0, T0 + MINUTE_NS)
    assert not isinstance(later, Denied)
    settled = budget.settle(later[0], grant, 0, 0)
    assert settled.tokens == 50 and settled.micro_usd == 0
    with pytest.raises(ValueError, match="negative"):
        budget.settle(usage, grant, -1, 0)
    with pytest.raises(ValueError, match="negative"):
        budget.reserve(usage, LIMITS, 0, -1, T0)


def test_limits_from_config_units() -> None:
    limits = Limits.of(500, 12.345678, 86_400_000)
    assert limits == Limits(500, 12_345_678, 86_400 * NS_PER_SECOND)
    assert budget.micro_usd(0.1 + 0.2) == 300_000
    assert Limits.of(0, 0.0, 60_000).any is False and limits.any
    assert budget.micro_usd(1e-9) == 1  # a tiny budget is not "unlimited"


def test_a_clock_stepped_back_keeps_the_later_window() -> None:
    usage = Usage(T0 // MINUTE_NS + 1, 990, T0 // HOUR_NS, 0)  # charged in the next minute
    decision = _reserve(usage, LIMITS, 20, 0, T0 + 5 * NS_PER_SECOND)
    assert isinstance(decision, Denied) and decision.retry_after_s == 115
    assert usage.current(LIMITS, T0).tokens == 990


# -- properties -----------------------------------------------------------------------------

_ops = st.lists(st.tuples(st.sampled_from(["reserve", "settle", "tick"]),
                          st.integers(0, 400), st.integers(0, 2_000_000),
                          st.integers(0, 30 * NS_PER_SECOND), st.integers(0, 10**6)),
                max_size=120)


@settings(max_examples=300)
@given(tokens_limit=st.integers(0, 1000), usd_limit=st.integers(0, 5_000_000), ops=_ops)
def test_charges_never_exceed_a_window_and_counters_never_go_negative(
        tokens_limit: int, usd_limit: int,
        ops: list[tuple[str, int, int, int, int]]) -> None:
    """Any sequence of reserves, settles (actual ≤ reserved, like a real response or a
    cut stream) and clock ticks against a model that charges each window what was
    granted in it, minus what settles in that same window gave back: the counter of
    the current window always equals the model, never exceeds its limit and never goes
    below 0, and no window was ever charged more than the limit."""
    limits = Limits(tokens_limit, usd_limit, 2 * MINUTE_NS)
    usage = Usage()
    now = T0
    open_grants: list[Grant] = []
    charged_tokens: dict[int, int] = {}
    charged_usd: dict[int, int] = {}
    for op, tokens, usd, tick, pick in ops:
        if op == "tick":
            now += tick
        elif op == "reserve":
            decision = budget.reserve(usage, limits, tokens, usd, now)
            if isinstance(decision, Denied):
                assert decision.retry_after_s >= 1
                assert decision == budget.reserve(usage, limits, tokens, usd, now)
                continue
            usage, grant = decision
            open_grants.append(grant)
            charged_tokens[grant.token_window] = charged_tokens.get(grant.token_window,
                                                                    0) + tokens
            charged_usd[grant.usd_window] = charged_usd.get(grant.usd_window, 0) + usd
        elif open_grants:
            grant = open_grants.pop(pick % len(open_grants))
            actual_tokens = tokens % (grant.tokens + 1)
            actual_usd = usd % (grant.micro_usd + 1)
            before = usage
            usage = budget.settle(usage, grant, actual_tokens, actual_usd)
            if before.token_window == grant.token_window:
                charged_tokens[grant.token_window] += actual_tokens - grant.tokens
            else:
                assert usage.tokens == before.tokens  # a rolled window is not touched
            if before.usd_window == grant.usd_window:
                charged_usd[grant.usd_window] += actual_usd - grant.micro_usd
            else:
                assert usage.micro_usd == before.micro_usd
        assert usage.tokens == charged_tokens.get(usage.token_window, 0)
        assert usage.micro_usd == charged_usd.get(usage.usd_window, 0)
        assert usage.tokens >= 0 and usage.micro_usd >= 0
        if tokens_limit:
            assert all(0 <= total <= tokens_limit for total in charged_tokens.values())
        if usd_limit:
            assert all(0 <= total <= usd_limit for total in charged_usd.values())


@given(used=st.integers(0, 10**6), reserved=st.integers(0, 10**6),
       actual=st.integers(0, 2 * 10**6), shift=st.integers(1, 10))
def test_settle_into_a_rolled_window_does_nothing(used: int, reserved: int, actual: int,
                                                  shift: int) -> None:
    grant = Grant(5, reserved, 7, reserved)
    usage = Usage(5 + shift, used, 7 + shift, used)
    assert budget.settle(usage, grant, actual, actual) == usage


@given(used=st.integers(0, 10**6), reserved=st.integers(0, 10**6),
       actual=st.integers(0, 2 * 10**6))
def test_settle_never_goes_below_zero(used: int, reserved: int, actual: int) -> None:
    settled = budget.settle(Usage(1, used, 1, used), Grant(1, reserved, 1, reserved), actual,
                            actual)
    assert settled.tokens == max(0, used + actual - reserved) == settled.micro_usd


@given(limit=st.integers(1, 10**6), amounts=st.lists(st.integers(0, 10**5), max_size=60))
def test_a_denial_reserves_nothing_and_a_full_window_is_used(limit: int,
                                                             amounts: list[int]) -> None:
    """Greedy reservations in one window: each denial leaves the counters as they were,
    and a request is denied only when it really does not fit."""
    limits = Limits(limit, 0, HOUR_NS)
    usage = Usage()
    for amount in amounts:
        decision = budget.reserve(usage, limits, amount, 0, T0)
        if isinstance(decision, Denied):
            assert usage.current(limits, T0).tokens + amount > limit
        else:
            usage = decision[0]
    assert usage.tokens <= limit


@pytest.mark.parametrize(("target", "before", "after", "expect"), [
    # the other copy charged 30 more / gave 20 back, in the same windows
    (Usage(5, 100, 1, 100), Usage(5, 40, 1, 40), Usage(5, 70, 1, 20), Usage(5, 130, 1, 80)),
    # given back more than the target holds: 0, never negative
    (Usage(5, 10, 1, 10), Usage(5, 40, 1, 40), Usage(5, 0, 1, 0), Usage(5, 0, 1, 0)),
    # the other copy moved to a window the target has not seen: its use there is new
    (Usage(5, 100, 1, 100), Usage(5, 40, 1, 40), Usage(6, 25, 1, 40), Usage(6, 25, 1, 100)),
    # the target moved on already: the other copy's change in an older window is history
    (Usage(7, 3, 2, 3), Usage(5, 40, 1, 40), Usage(5, 90, 1, 90), Usage(7, 3, 2, 3)),
    # and a target in the new window adds what the other copy charged there
    (Usage(6, 3, 1, 3), Usage(5, 40, 1, 40), Usage(6, 10, 1, 40), Usage(6, 13, 1, 3)),
])
def test_fold_table(target: Usage, before: Usage, after: Usage, expect: Usage) -> None:
    assert budget.fold(target, before, after) == expect


@given(start=st.integers(0, 10**6), old_ops=st.lists(st.integers(-1000, 1000), max_size=20),
       new_ops=st.lists(st.integers(0, 1000), max_size=20))
def test_fold_equals_one_shared_counter_within_a_window(start: int, old_ops: list[int],
                                                       new_ops: list[int]) -> None:
    """Within one window and without clamping, folding the old copy's changes into the
    new copy gives what a single counter seeing every change would hold."""
    old = new = Usage(3, start, 3, start)
    for change in old_ops:
        old = Usage(3, max(0, old.tokens + change), 3, max(0, old.micro_usd + change))
    for change in new_ops:
        new = Usage(3, new.tokens + change, 3, new.micro_usd + change)
    folded = budget.fold(new, Usage(3, start, 3, start), old)
    assert folded.tokens == old.tokens - start + new.tokens - start + start
