"""A route's cold-start queue as one worker sees it (``[route.queue]``).

The queue itself lives in shared memory (:mod:`li_httpd.shm.waitqueue`): one ticket
counter gives every waiting request its place in the global arrival order, and only
the request holding the oldest ticket (the head) may take capacity that frees up, so
requests leave in arrival order whichever worker holds them.

Waking up: capacity returns in another process (a request ends, a peer comes back), so
something must look. Only this worker's *first* waiter polls shared memory, every
:data:`POLL` seconds, with one lock-free 8-byte read (is the head my ticket?) and, when
it is the head, one :meth:`~.upstream.UpstreamGroup.take`; the other local waiters sleep
on their own event until the one before them leaves, and then look at once. A worker
therefore costs one timer wake-up per POLL per queued route, however many requests it
holds, and nothing while no request waits. POLL = 10 ms, measured (a trio task
reading the head and sleeping in a loop, on the loaded 2-core build box): one wake-up
costs 150-250 us of CPU, so a worker holding waiters spends ~2% of a core polling at
10 ms, ~3-5% at 5 ms and ~10% at 1 ms; a freed place is taken within 10 ms, small next
to the seconds a cold start or a model request takes, and the next local waiter looks
at once when the one before it leaves. A request that leaves by any path
(released, timed out, its client gone, the worker stopping) gives its ticket back in a
``finally`` without awaiting; a worker killed outright has its entries cleared by the
master.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Literal

import trio
from li_httpd.shm import SharedState

from .upstream import PeerPool, Unavailable

POLL = 0.01

QueueEnd = Literal["overflow", "timeout"]


class _Waiter:
    __slots__ = ("event", "ticket")

    def __init__(self, ticket: int) -> None:
        self.ticket = ticket
        self.event = trio.Event()


class WaitLine:
    """This worker's view of one route queue: its table in shared memory and its own
    waiters in ticket order."""

    __slots__ = ("_local", "index", "max_wait", "shared")

    def __init__(self, shared: SharedState, index: int, max_wait: float) -> None:
        self.shared = shared
        self.index = index
        self.max_wait = max_wait
        self._local: deque[_Waiter] = deque()

    def someone_waits(self) -> bool:
        """Whether any worker has a request waiting (a new arrival must not overtake it;
        lock-free)."""
        return self.shared.queue_head(self.index) != 0

    def depth(self) -> int:
        return self.shared.queue_depth(self.index)

    async def wait(self, take: Callable[[], PeerPool | Unavailable]) -> PeerPool | QueueEnd:
        """Wait for this request's turn and a peer: the peer (taken by ``take``, counted
        in flight), or ``overflow`` (the queue is full) / ``timeout`` (``max_wait``
        passed)."""
        shared, index = self.shared, self.index
        ticket = shared.queue_join(index)
        if ticket == 0:
            return "overflow"
        waiter = _Waiter(ticket)
        local = self._local
        local.append(waiter)
        give_up = trio.current_time() + self.max_wait
        try:
            while True:
                first = local[0] is waiter
                if first and shared.queue_head(index) == ticket:
                    taken = take()
                    if isinstance(taken, PeerPool):
                        return taken
                with trio.move_on_at(give_up):
                    if first:
                        await trio.sleep(POLL)
                    else:
                        await waiter.event.wait()
                if trio.current_time() >= give_up:
                    return "timeout"
        finally:
            was_first = local[0] is waiter
            local.remove(waiter)
            shared.queue_leave(index, ticket)
            if was_first and local:
                local[0].event.set()

    async def wait_beating(self, take: Callable[[], PeerPool | Unavailable],
                           beat: Callable[[], Awaitable[None]],
                           give_back: Callable[[PeerPool], None]) -> PeerPool | QueueEnd:
        """:meth:`wait` with ``beat`` running beside it (an early-committed stream's
        heartbeats). The end of the nursery is a checkpoint: a cancellation arriving
        there (the client gone, the worker stopping) after a peer was taken would drop
        the peer with its in-flight count and any probe place, so ``give_back`` returns
        them before the cancellation goes on."""
        waited: PeerPool | QueueEnd | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(beat)
                waited = await self.wait(take)
                nursery.cancel_scope.cancel()
        except BaseException:
            if isinstance(waited, PeerPool):
                give_back(waited)
            raise
        assert waited is not None  # the nursery ended normally only after the wait
        return waited
