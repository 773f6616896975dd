"""UpstreamGroup and the circuit breaker, without sockets: which peer pick returns, when
it admits a half-open probe, what results count, and the Retry-After of a pool whose
every peer is open."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from li_httpd.config.model import CircuitBreaker, Peer, Upstream
from li_httpd.config.units import Millis
from li_httpd.shm import SharedState
from li_httpd.shm.circuit import CLOSED, HALF_OPEN, OPEN
from li_httpd.shm.state import Layout
from li_httpd.workers.http1 import ParseLimits
from li_httpd.workers.upstream import UpstreamGroup

NS = 1_000_000_000
BREAKER = CircuitBreaker(window=Millis(10_000), min_requests=2, error_percent=50,
                         open_duration=Millis(4_000), probe_timeout=Millis(30_000))


class FakeClock:
    def __init__(self) -> None:
        self.now = 500 * NS

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def shared(clock: FakeClock) -> Iterator[SharedState]:
    state = SharedState.create(Layout(64, 2, 2), clock)
    yield state
    state.close()


def _group(shared: SharedState, peers: int, breaker: CircuitBreaker = BREAKER,
           balance: str = "round_robin") -> UpstreamGroup:
    settings = Upstream(peers=tuple(Peer(url=f"http://127.0.0.1:{9000 + i}")
                                    for i in range(peers)),
                        balance=balance, circuit_breaker=breaker)  # type: ignore[arg-type]
    return UpstreamGroup("main", settings, ParseLimits(), shared, 0, tuple(range(peers)))


def _fail(group: UpstreamGroup, position: int, count: int) -> None:
    for _ in range(count):
        group.circuit_result(group.peers[position], "5xx", probe=False)


@pytest.mark.parametrize("balance", ["round_robin", "least_conn"])
def test_an_open_peer_is_not_picked_until_it_may_be_probed(
        shared: SharedState, clock: FakeClock, balance: str) -> None:
    group = _group(shared, 2, balance=balance)
    _fail(group, 1, 2)
    assert shared.circuit(1).state == OPEN
    picked = {group.pick().peer.index for _ in range(6)}  # type: ignore[union-attr]
    assert picked == {0} and not group.probe_taken
    clock.now += 4 * NS
    picked = set()
    probes = 0
    for _ in range(6):
        pool = group.pick()
        assert pool is not None
        picked.add(pool.peer.index)
        probes += group.probe_taken
    assert picked == {0, 1} and probes == 1  # one probe place, then it is skipped again
    assert shared.circuit(1).state == HALF_OPEN


def test_single_peer_pool_probes_then_closes(shared: SharedState, clock: FakeClock) -> None:
    group = _group(shared, 1)
    _fail(group, 0, 2)
    assert group.pick() is None
    assert group.seconds_until_a_peer_is_up() == 4
    clock.now += 3 * NS + 1
    assert group.seconds_until_a_peer_is_up() == 1
    clock.now += NS
    pool = group.pick()
    assert pool is not None and group.probe_taken
    assert group.pick() is None and not group.probe_taken  # the one place is taken
    group.circuit_result(pool.peer, None, probe=True)
    assert shared.circuit(0).state == CLOSED
    assert group.pick() is pool and not group.probe_taken


def test_only_configured_failures_count(shared: SharedState) -> None:
    group = _group(shared, 1, CircuitBreaker(min_requests=2, failures=("connect",)))
    for _ in range(5):
        group.circuit_result(group.peers[0], "5xx", probe=False)
    assert shared.circuit(0).state == CLOSED
    group.circuit_result(group.peers[0], "connect", probe=False)
    assert shared.circuit(0).state == CLOSED  # 1 error in 6 results
    for _ in range(6):
        group.circuit_result(group.peers[0], "connect", probe=False)
    assert shared.circuit(0).state == OPEN


def test_a_disabled_breaker_counts_nothing(shared: SharedState) -> None:
    group = _group(shared, 1, CircuitBreaker(enabled=False, min_requests=1))
    _fail(group, 0, 20)
    assert shared.circuit(0).state == CLOSED and group.pick() is not None


def test_an_abandoned_probe_lets_the_next_request_probe(shared: SharedState,
                                                        clock: FakeClock) -> None:
    group = _group(shared, 1)
    _fail(group, 0, 2)
    clock.now += 4 * NS
    pool = group.pick()
    assert pool is not None and group.probe_taken
    group.circuit_abandoned(pool.peer)
    assert group.pick() is pool and group.probe_taken
    group.circuit_result(pool.peer, "connect", probe=True)
    assert shared.circuit(0).state == OPEN and group.pick() is None


def test_a_capped_pool_skips_open_circuits_and_admits_one_probe(
        shared: SharedState, clock: FakeClock) -> None:
    """max_concurrent with the breaker: an open peer is not usable (the pool is saturated
    when its usable peers are full), a half-open one is taken only as the probe, and a
    refused probe gives its counted place back."""
    settings = Upstream(peers=(Peer(url="http://127.0.0.1:9000", max_concurrent=1),
                               Peer(url="http://127.0.0.1:9001", max_concurrent=5)),
                        circuit_breaker=BREAKER)
    group = UpstreamGroup("main", settings, ParseLimits(), shared, 0, (0, 1))
    _fail(group, 1, 2)
    first = group.take()
    assert not isinstance(first, str) and first.peer.index == 0
    assert group.take() == "saturated"  # peer 0 full; peer 1 open is not "usable"
    assert shared.active_of(1) == 0
    clock.now += 4 * NS
    probe = group.take()
    assert not isinstance(probe, str) and probe.peer.index == 1 and group.probe_taken
    assert group.take() == "saturated"  # the probe place is taken: peer 1 refuses more
    assert shared.active_of(1) == 1  # the refused choice gave its place back
    group.circuit_result(probe.peer, None, probe=True)
    assert shared.circuit(1).state == CLOSED
    again = group.take()
    assert not isinstance(again, str) and again.peer.index == 1 and not group.probe_taken


def test_a_capped_pool_with_every_circuit_open_is_down(shared: SharedState) -> None:
    settings = Upstream(peers=(Peer(url="http://127.0.0.1:9000"),
                               Peer(url="http://127.0.0.1:9001")),
                        max_concurrent=3, circuit_breaker=BREAKER)
    group = UpstreamGroup("main", settings, ParseLimits(), shared, 0, (0, 1))
    _fail(group, 0, 2)
    _fail(group, 1, 2)
    assert group.take() == "down"
    assert shared.active_of(0) == shared.active_of(1) == 0


def test_a_probe_failure_the_breaker_does_not_count_decides_nothing(
        shared: SharedState, clock: FakeClock) -> None:
    """A probe that got no answer (a first-byte timeout the pool's ``failures`` leaves
    out, by default) is no evidence the peer recovered: it must not close the circuit;
    its place is free for the next probe. Named in ``failures``, it opens it again."""
    group = _group(shared, 1)
    _fail(group, 0, 2)
    clock.now += 4 * NS
    pool = group.pick()
    assert pool is not None and group.probe_taken
    group.circuit_result(pool.peer, "ttfb_timeout", probe=True)
    assert shared.circuit(0).state == HALF_OPEN
    assert group.pick() is pool and group.probe_taken  # the place is free again
    group.circuit_result(pool.peer, None, probe=True)
    assert shared.circuit(0).state == CLOSED

    named = _group(shared, 1, CircuitBreaker(min_requests=2, open_duration=Millis(4_000),
                                             failures=("5xx", "ttfb_timeout")))
    clock.now += NS  # past the fresh window's floor
    _fail(named, 0, 2)
    assert shared.circuit(0).state == OPEN
    clock.now += 4 * NS
    pool = named.pick()
    assert pool is not None and named.probe_taken
    named.circuit_result(pool.peer, "ttfb_timeout", probe=True)
    assert shared.circuit(0).state == OPEN


def test_a_probe_answered_with_a_5xx_the_pool_does_not_count_closes_the_circuit(
        shared: SharedState, clock: FakeClock) -> None:
    group = _group(shared, 1, CircuitBreaker(min_requests=2, open_duration=Millis(4_000),
                                             failures=("connect",)))
    for _ in range(2):
        group.circuit_result(group.peers[0], "connect", probe=False)
    clock.now += 4 * NS
    pool = group.pick()
    assert pool is not None and group.probe_taken
    group.circuit_result(pool.peer, "5xx", probe=True)
    assert shared.circuit(0).state == CLOSED
