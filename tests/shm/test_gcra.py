"""GCRA properties: never more than burst + rate × t in any window; exact refill."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from li_httpd.shm import gcra

NS = gcra.NS_PER_SECOND


def _run(rate: gcra.Rate, arrivals: list[int]) -> list[int]:
    """Admitted arrival times, feeding requests in time order."""
    tat = 0
    admitted = []
    for now in arrivals:
        decision = gcra.decide(rate, tat, now)
        if decision.allowed:
            tat = decision.new_tat
            admitted.append(now)
    return admitted


@settings(max_examples=300)
@given(per_second=st.integers(1, 1000), burst=st.integers(1, 100),
       gaps=st.lists(st.integers(0, NS // 5), min_size=1, max_size=300))
def test_never_more_than_burst_plus_rate_times_window(per_second: int, burst: int,
                                                      gaps: list[int]) -> None:
    rate = gcra.Rate.of(per_second, burst)
    arrivals = []
    now = 10 * NS
    for gap in gaps:
        now += gap
        arrivals.append(now)
    admitted = _run(rate, arrivals)
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            window = admitted[j] - start
            count = j - i + 1
            assert count <= burst + window // rate.interval_ns, (count, window)


@given(per_second=st.integers(1, 1000), burst=st.integers(1, 100))
def test_full_burst_at_once_then_one_per_interval(per_second: int, burst: int) -> None:
    rate = gcra.Rate.of(per_second, burst)
    now = 5 * NS
    assert len(_run(rate, [now] * (burst + 5))) == burst


@given(per_second=st.integers(1, 1000), burst=st.integers(1, 50),
       extra=st.integers(1, 20))
def test_retry_after_is_exact(per_second: int, burst: int, extra: int) -> None:
    rate = gcra.Rate.of(per_second, burst)
    now = 7 * NS
    tat = 0
    for _ in range(burst):
        tat = gcra.decide(rate, tat, now).new_tat
    denied = gcra.decide(rate, tat, now)
    assert not denied.allowed and denied.new_tat == tat
    # One nanosecond early is still too early; at retry_after it is admitted.
    assert not gcra.decide(rate, tat, now + denied.retry_after_ns - 1).allowed
    assert gcra.decide(rate, tat, now + denied.retry_after_ns).allowed


@given(per_second=st.integers(1, 1000), burst=st.integers(1, 50))
def test_refills_completely_after_burst_over_rate(per_second: int, burst: int) -> None:
    rate = gcra.Rate.of(per_second, burst)
    now = NS
    tat = 0
    for _ in range(burst):
        tat = gcra.decide(rate, tat, now).new_tat
    later = now + rate.tolerance_ns
    assert gcra.is_idle(tat, later)
    assert len(_run(rate, [later] * (burst + 1))) == burst


def test_retry_after_header_rounds_up() -> None:
    assert gcra.retry_after_seconds(1) == 1
    assert gcra.retry_after_seconds(NS) == 1
    assert gcra.retry_after_seconds(NS + 1) == 2


def test_consume_meters_bytes() -> None:
    rate = gcra.Rate.of(1000, 1000)  # 1000 bytes/s, 1000 at once
    tat, delay = gcra.consume(rate, 0, NS, 1000)
    assert delay == 0
    tat, delay = gcra.consume(rate, tat, NS, 500)
    assert delay == NS // 2
