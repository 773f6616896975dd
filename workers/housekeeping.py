"""One background task per worker: deadlines, client-disconnect detection, clocks.

Every :data:`~.sockio.TICK` it

- expires connection deadlines (:class:`~.sockio.Deadline`): this is how every client
  and upstream timeout fires without a cancel scope per operation;
- refreshes the cached ``Date`` header value;
- once a second, closes idle upstream connections past their keep-alive timeout.

Client disconnects: while a proxied request waits for or streams its response, nothing
reads the client socket, so a client that hangs up would go unnoticed until the next
write. Requests register in :attr:`Housekeeping.inflight` (a dict insert, no syscall);
those still running after :data:`WATCH_AFTER` seconds have their client socket added to
a private epoll set (EPOLLIN | EPOLLRDHUP), which this task waits on. When the client
closes, the request's deadline is expired with reason ``client_gone``: the connection
scope is cancelled and the upstream connection is closed at once, so the upstream sees
the request go away. Fast requests never pay for a syscall.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Callable

import trio
from trio.lowlevel import wait_readable

from . import sockio
from .responses import http_date
from .sockio import TICK, Deadline, DeadlineReason

WATCH_AFTER = 0.05
DRAIN_IDLE = 1.0
SWEEP_EVERY = 1.0
_WATCH_FLAGS = select.EPOLLIN | select.EPOLLRDHUP
_PEEK = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)


class _Watched:
    __slots__ = ("deadline", "registered", "sock", "started")

    def __init__(self, sock: socket.socket, deadline: Deadline, started: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.started = started
        self.registered = False


class Housekeeping:
    __slots__ = ("_drain_started", "_epoll", "_last_sweep", "_second", "date", "deadlines",
                 "draining",
                 "inflight", "sweepers")

    def __init__(self) -> None:
        self.deadlines: set[Deadline] = set()
        self.inflight: dict[int, _Watched] = {}
        self.sweepers: list[Callable[[float], None]] = []
        self.draining = False
        self._drain_started = 0.0
        self._epoll = select.epoll()
        self._second = 0
        self._last_sweep = 0.0
        self.date = http_date(time.time())

    # -- request registration (hot path: dict operations only) ----------------------------

    def watch(self, sock: socket.socket, fd: int, deadline: Deadline) -> None:
        entry = self.inflight.get(fd)
        if entry is not None:  # a retry on another peer: keep watching the same client
            entry.deadline = deadline
            return
        self.inflight[fd] = _Watched(sock, deadline, sockio.now())

    def unwatch(self, fd: int) -> None:
        entry = self.inflight.pop(fd, None)
        if entry is not None and entry.registered:
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    # -- the task ---------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tick every :data:`TICK` and, in a second task, handle the watch set's events.

        Two tasks rather than one wait for events bounded by the tick: trio registers a
        waited-on fd one-shot, so a wait cancelled every tick costs two ``epoll_ctl``
        calls per tick (arm, disarm) on an idle worker. The event task's wait is armed
        once and stays armed until an event comes; the tick is a plain sleep."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_events)
                task_status.started()
                while True:
                    await trio.sleep(TICK)
                    self.tick(sockio.now())
        finally:
            self._epoll.close()

    async def _watch_events(self) -> None:
        epoll = self._epoll.fileno()
        while True:
            await wait_readable(epoll)
            self._client_events()

    def tick(self, now: float) -> None:
        for deadline in tuple(self.deadlines):
            deadline.expire_if_due(now)
        if self.draining:
            # Idle keep-alive connections get DRAIN_IDLE more seconds: a client that was
            # about to send still gets an answer (with Connection: close), the others go.
            last_call = self._drain_started + DRAIN_IDLE
            for deadline in tuple(self.deadlines):
                if deadline.reason == "idle" and deadline.at > last_call:
                    deadline.set_at(last_call, "idle")
                    deadline.expire_if_due(now)
        wall = time.time()
        if int(wall) != self._second:
            self._second = int(wall)
            self.date = http_date(wall)
        for fd, entry in tuple(self.inflight.items()):
            if not entry.registered and now - entry.started >= WATCH_AFTER:
                try:
                    self._epoll.register(fd, _WATCH_FLAGS)
                    entry.registered = True
                except OSError:
                    self.inflight.pop(fd, None)
        if now - self._last_sweep >= SWEEP_EVERY:
            self._last_sweep = now
            for sweep in self.sweepers:
                sweep(now)

    def _client_events(self) -> None:
        for fd, _flags in self._epoll.poll(0):
            entry = self.inflight.get(fd)
            if entry is None:
                # Registered but no longer watched: level-triggered, it would wake this
                # task on every pass (a busy loop) until the client closed.
                with contextlib.suppress(OSError):
                    self._epoll.unregister(fd)
                continue
            try:
                data = entry.sock.recv(1, _PEEK)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            # Pending bytes are a pipelined request: the client is alive; stop watching.
            self.unwatch(fd)
            if not data:
                entry.deadline.expire_now("client_gone")

    def end_all(self, reason: DeadlineReason) -> None:
        """Fire every connection's deadline now with ``reason`` (the end of a graceful
        stop: each connection still gets to send its last words)."""
        for deadline in tuple(self.deadlines):
            deadline.expire_now(reason)

    def drain(self) -> None:
        """Graceful stop: every response from now on says Connection: close, and idle
        keep-alive connections close after at most DRAIN_IDLE seconds."""
        self.draining = True
        self._drain_started = sockio.now()
