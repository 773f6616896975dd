"""The cold-start queue's waiting side, in one process: two "workers" are two views of
one segment with different slots; the pool is a counter of free places. No sockets."""

from __future__ import annotations

import trio
import trio.testing
from li_httpd.shm.state import Layout, SharedState
from li_httpd.workers.upstream import PeerPool, Unavailable
from li_httpd.workers.waitline import WaitLine


def _peer_pool() -> PeerPool:
    """A real PeerPool (a compiled class cannot be made with ``__new__`` alone)."""
    from li_httpd.config.model import Peer, Upstream
    from li_httpd.workers.http1 import ParseLimits
    from li_httpd.workers.upstream import UpstreamGroup

    shared = SharedState.create(Layout(8, 1, 1))
    try:
        settings = Upstream(peers=(Peer(url="http://127.0.0.1:9000"),))
        return UpstreamGroup("m", settings, ParseLimits(), shared, 0, (0,)).pools[0]
    finally:
        shared.close()


class Pool:
    """Free places of a pool; take() hands out the pool's peer per place taken."""

    def __init__(self) -> None:
        self.free = 0
        self.taken = 0
        self.peer = _peer_pool()

    def take(self) -> PeerPool | Unavailable:
        if self.free == 0:
            return "saturated"
        self.free -= 1
        self.taken += 1
        return self.peer


def _workers(size: int = 8) -> tuple[SharedState, SharedState]:
    first = SharedState.create(Layout(64, 2, 1, (), ((1, size),)))
    second = SharedState(first.fd, first.memory, first.layout, first.clock)
    second.slot = 1
    return first, second


async def test_release_follows_arrival_order_across_workers(
        autojump_clock: trio.testing.MockClock) -> None:
    a, b = _workers()
    lines = {"a": WaitLine(a, 0, 60.0), "b": WaitLine(b, 0, 60.0)}
    pool = Pool()
    released: list[str] = []

    async def request(name: str) -> None:
        result = await lines[name[0]].wait(pool.take)
        assert isinstance(result, PeerPool)
        released.append(name)

    async with trio.open_nursery() as nursery:
        for count, name in enumerate(["a1", "b1", "a2", "b2", "a3"], start=1):
            nursery.start_soon(request, name)
            while a.queue_depth(0) < count:
                await trio.sleep(0.001)
        await trio.sleep(1)
        assert released == [] and a.queue_depth(0) == 5
        for _ in range(5):  # places come back one at a time
            pool.free += 1
            await trio.sleep(0.05)
    assert released == ["a1", "b1", "a2", "b2", "a3"]
    assert a.queue_depth(0) == 0 and a.queue_head(0) == 0


async def test_timeout_overflow_and_cancel_leave_nothing_behind(
        autojump_clock: trio.testing.MockClock) -> None:
    a, b = _workers(size=2)
    line = WaitLine(a, 0, 1.0)
    pool = Pool()
    ends: list[object] = []

    async def request() -> None:
        ends.append(await line.wait(pool.take))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request)
        nursery.start_soon(request)
        await trio.sleep(0.1)
        assert await WaitLine(b, 0, 1.0).wait(pool.take) == "overflow"
    assert ends == ["timeout", "timeout"]
    assert a.queue_depth(0) == 0
    # A cancelled first waiter (its client went away) leaves at once and the next local
    # waiter takes over its turn.
    line = WaitLine(a, 0, 60.0)
    got: list[object] = []
    gone = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        async def doomed() -> None:
            with gone:
                await line.wait(pool.take)

        nursery.start_soon(doomed)
        await trio.sleep(0.1)

        async def patient() -> None:
            got.append(await line.wait(pool.take))

        nursery.start_soon(patient)
        await trio.sleep(0.1)
        assert a.queue_depth(0) == 2
        gone.cancel()
        start = trio.current_time()
        for _ in range(10):  # trio runs ready tasks in a random order: a few rounds
            if a.queue_depth(0) == 1:
                break
            await trio.sleep(0)
        assert a.queue_depth(0) == 1 and trio.current_time() == start  # no time passed
        pool.free = 1
    assert isinstance(got[0], PeerPool) and a.queue_depth(0) == 0


CAPPED = """
[server]
listen = "127.0.0.1:8080"
profile = "dev"

[upstreams.capped]
peers = [{ url = "http://127.0.0.1:9000", max_concurrent = 1 },
         { url = "http://127.0.0.1:9001", max_concurrent = 0 },
         "http://127.0.0.1:9002"]
max_concurrent = 2

[upstreams.free]
peers = ["http://127.0.0.1:9003", "http://127.0.0.1:9004"]

[[route]]
name = "chat"
priority = 1
match.path = { type = "prefix", value = "/v1/" }
proxy = "capped"

[route.queue]
max_size = 3
max_wait = "2s"

[[route]]
name = "other"
priority = 2
match.path = { type = "prefix", value = "/" }
proxy = "free"
"""


def test_caps_resolve_per_peer_and_only_capped_pools_take_the_lock_path() -> None:
    from li_httpd.config import load_text
    from li_httpd.workers.context import WorkerContext

    ctx = WorkerContext(load_text(CAPPED, "capped.toml"))
    capped, free = ctx.groups["capped"], ctx.groups["free"]
    assert capped.caps == (1, 0, 2) and free.caps == (0, 0)
    line = ctx.plans["chat"].queue
    assert line is not None and line.max_wait == 2.0 and ctx.plans["other"].queue is None
    taken = [capped.take() for _ in range(5)]  # peer 1 is uncapped: never saturated
    assert all(isinstance(t, PeerPool) for t in taken)
    assert ctx.shared.active_of(capped.peers[0].shared_id) == 1
    assert ctx.shared.active_of(capped.peers[2].shared_id) <= 2
    first = free.take()
    assert isinstance(first, PeerPool) and ctx.shared.active_of(first.peer.shared_id) == 1
    ctx.close()


def test_a_capped_pool_takes_only_ready_peers_and_calls_none_ready_down() -> None:
    """With active health, a peer that is not ready counts as down, never saturated."""
    from li_httpd.config.model import HealthCheck, Peer, Upstream
    from li_httpd.shm.readiness import READY, Readiness
    from li_httpd.workers.http1 import ParseLimits
    from li_httpd.workers.upstream import UpstreamGroup

    shared = SharedState.create(Layout(8, 2, 2))
    try:
        settings = Upstream(peers=(Peer(url="http://127.0.0.1:9000"),
                                   Peer(url="http://127.0.0.1:9001")),
                            max_concurrent=1, health_check=HealthCheck(ready="/ready"))
        group = UpstreamGroup("m", settings, ParseLimits(), shared, 0, (0, 1))
        assert group.take() == "down"  # nobody ready yet
        shared.store_probe(1, Readiness(READY), Readiness())
        taken = group.take()
        assert isinstance(taken, PeerPool) and taken.peer.index == 1
        assert group.take() == "saturated"  # the ready one is full; the other is not ready
        assert shared.active_of(0) == 0 and shared.active_of(1) == 1
    finally:
        shared.close()


async def test_a_peer_taken_as_the_wait_is_cancelled_goes_back(
        autojump_clock: trio.testing.MockClock) -> None:
    """The client hangs up (the connection's scope is cancelled) in the instant the
    waiter takes its peer: the heartbeat nursery's end raises Cancelled, and the peer's
    place must come back instead of leaking with the dropped result."""
    a, _ = _workers()
    line = WaitLine(a, 0, 60.0)
    pool = Pool()
    given_back: list[PeerPool] = []
    beats = 0

    async def beat() -> None:
        nonlocal beats
        while True:
            beats += 1
            await trio.sleep(0.5)

    with trio.CancelScope() as connection:
        def take_then_hang_up() -> PeerPool | Unavailable:
            taken = pool.take()
            if isinstance(taken, PeerPool):
                connection.cancel()
            return taken

        async with trio.open_nursery() as nursery:
            async def waiting() -> None:
                await line.wait_beating(take_then_hang_up, beat, given_back.append)
                raise AssertionError("the cancelled wait returned")

            nursery.start_soon(waiting)
            await trio.sleep(2)
            pool.free = 1
    assert connection.cancelled_caught
    assert pool.taken == 1 and len(given_back) == 1, "the taken peer leaked"
    assert beats >= 2 and a.queue_depth(0) == 0 and a.queue_head(0) == 0


async def test_a_wait_beside_heartbeats_returns_the_peer(
        autojump_clock: trio.testing.MockClock) -> None:
    a, _ = _workers()
    line = WaitLine(a, 0, 60.0)
    pool = Pool()
    given_back: list[PeerPool] = []

    async def beat() -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        async def free_later() -> None:
            await trio.sleep(1)
            pool.free = 1

        nursery.start_soon(free_later)
        result = await line.wait_beating(pool.take, beat, given_back.append)
    assert isinstance(result, PeerPool) and given_back == []
