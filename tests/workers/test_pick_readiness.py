"""Peer choice with active health (UpstreamGroup.pick over a real segment, no sockets):
in a pool with a health check only peers the actor stored as ready are chosen, in both
balance modes and in the one-peer fast path; a pool without one ignores the column."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st
from li_httpd.config.model import HealthCheck, Peer, Upstream
from li_httpd.shm.readiness import NOT_READY, READY, UNKNOWN, Readiness
from li_httpd.shm.state import Layout, SharedState
from li_httpd.workers.http1 import ParseLimits
from li_httpd.workers.upstream import UpstreamGroup

CHECK = HealthCheck(ready="/ready")


def group(shared: SharedState, count: int, balance: str, probed: bool) -> UpstreamGroup:
    settings = Upstream(peers=tuple(Peer(url=f"http://127.0.0.1:{9000 + i}")
                                    for i in range(count)),
                        balance=balance,  # type: ignore[arg-type]
                        health_check=CHECK if probed else None)
    return UpstreamGroup("m", settings, ParseLimits(), shared, 0, tuple(range(count)))


states = st.lists(st.sampled_from([UNKNOWN, READY, NOT_READY]), min_size=1, max_size=5)


@given(states, st.sampled_from(["round_robin", "least_conn"]), st.data())
def test_only_ready_peers_are_picked(readiness: list[int], balance: str,
                                     data: st.DataObject) -> None:
    shared = SharedState.create(Layout(8, 2, len(readiness)))
    try:
        for peer, state in enumerate(readiness):
            shared.store_probe(peer, Readiness(state), Readiness())
        exclude = data.draw(st.lists(st.integers(0, len(readiness) - 1), max_size=2))
        ready = {p for p, s in enumerate(readiness) if s == READY} - set(exclude)
        probed = group(shared, len(readiness), balance, probed=True)
        picks = {probed.pick(exclude) for _ in range(2 * len(readiness))}
        if not ready:
            assert picks == {None}
        else:
            assert None not in picks
            assert {pool.peer.index for pool in picks if pool} <= ready
            assert probed.seconds_until_a_peer_is_up() >= 1
        # Without a health check the same column is ignored: every peer may serve.
        plain = group(shared, len(readiness), balance, probed=False)
        allowed = set(range(len(readiness))) - set(exclude)
        pick = plain.pick(exclude)
        assert (pick is None) == (not allowed)
    finally:
        shared.close()


def test_retry_after_is_the_probe_interval_when_none_is_ready() -> None:
    shared = SharedState.create(Layout(8, 2, 2))
    try:
        slow = dataclasses.replace(CHECK, interval=7_500)
        settings = Upstream(peers=(Peer(url="http://127.0.0.1:9000"),
                                   Peer(url="http://127.0.0.1:9001")), health_check=slow)
        pool = UpstreamGroup("m", settings, ParseLimits(), shared, 0, (0, 1))
        assert pool.pick() is None
        assert pool.seconds_until_a_peer_is_up() == 8
        shared.store_probe(1, Readiness(READY), Readiness())
        picked = pool.pick()
        assert picked is not None and picked.peer.index == 1
    finally:
        shared.close()


def test_retry_after_of_ready_open_peers_beside_not_ready_ones() -> None:
    """The 503's Retry-After when the one ready peer's circuit is open and the other is
    not ready: no sooner than either may serve (the open time, or the next probe)."""
    from li_httpd.config.model import CircuitBreaker
    from li_httpd.shm import CircuitPolicy

    shared = SharedState.create(Layout(8, 2, 2))
    try:
        settings = Upstream(peers=(Peer(url="http://127.0.0.1:9000"),
                                   Peer(url="http://127.0.0.1:9001")),
                            health_check=dataclasses.replace(CHECK, interval=7_000),
                            circuit_breaker=CircuitBreaker(min_requests=1,
                                                           open_duration=20_000))  # type: ignore[arg-type]
        probed = UpstreamGroup("m", settings, ParseLimits(), shared, 0, (0, 1))
        shared.store_probe(0, Readiness(READY), Readiness())
        shared.store_probe(1, Readiness(NOT_READY), Readiness())
        shared.circuit_record(0, CircuitPolicy.of(settings.circuit_breaker), True, False)
        assert probed.pick() is None
        assert probed.seconds_until_a_peer_is_up() == 7
    finally:
        shared.close()
