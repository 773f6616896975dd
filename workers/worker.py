"""A worker process: one trio event loop serving the listeners it inherited.

Started by the master right after ``fork()``: :func:`run_worker` resets signal handling,
then runs :func:`serve` under ``trio.run``. Structure (no orphan tasks):

    root nursery
    ├── housekeeping (deadlines, disconnect watch, Date, pool sweeps)
    ├── signal watcher (SIGTERM: drain; SIGQUIT: stop now)
    └── connections nursery  ← every connection actor lives here
        └── accept scope: one accept loop per listener

Graceful stop (SIGTERM): the accept loops end (the master keeps the listening sockets,
other workers keep accepting during a reload), idle keep-alive connections close at the
next housekeeping tick, busy ones finish their current request or stream, and after
``server.shutdown_timeout`` whatever remains ends: each connection's deadline fires
(``shutdown``), so it sends what its response still allows (a 503 before any response
byte, the terminal error event on an SSE stream) within :data:`SHUTDOWN_LAST_WORDS`,
then the rest is cancelled. Then the process exits 0.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import trio
from li_httpd.config import LoadedConfig
from li_httpd.ops.log.writer import WorkerLog
from li_httpd.shm import SharedState
from trio.lowlevel import checkpoint, wait_readable

from .acme_responder import handle_http01_connection
from .connection import handle_connection
from .context import WorkerContext
from .metrics_server import handle_metrics_connection

_RETRY_ACCEPT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_BURST = 16
PARENT_CHECK = 1.0
SHUTDOWN_LAST_WORDS = 1.5
"""Seconds the connections still open when ``shutdown_timeout`` ends get to send their
last bytes (the master's kill grace is longer)."""


def run_worker(loaded: LoadedConfig, listeners: Sequence[socket.socket],
               ready_fd: int | None, server_tls: ssl.SSLContext | None = None,
               shared: SharedState | None = None, slot: int = 0,
               metrics_listener: socket.socket | None = None,
               acme_listener: socket.socket | None = None) -> int:
    """Body of a forked worker process; returns its exit status."""
    signal.set_wakeup_fd(-1)
    for number in (signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(number, signal.SIG_DFL)
    # Until serve() listens for SIGUSR1, a reopen request must not kill the worker (its
    # default action); the files it opens next are new anyway.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    # Ctrl-C reaches the whole process group; the master coordinates the stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    trio.run(serve, loaded, listeners, ready_fd, os.getppid(), server_tls, shared, slot,
             metrics_listener, acme_listener)
    return 0


async def serve(loaded: LoadedConfig, listeners: Sequence[socket.socket],
                ready_fd: int | None, parent_pid: int | None = None,
                server_tls: ssl.SSLContext | None = None, shared: SharedState | None = None,
                slot: int = 0, metrics_listener: socket.socket | None = None,
                acme_listener: socket.socket | None = None) -> None:
    log = WorkerLog(loaded.config.log)
    ctx = WorkerContext(loaded, server_tls, shared, slot, log)
    ctx.shared.worker_started(os.getpid())
    ctx.housekeeping.sweepers.append(_LogDrops(ctx).push)
    shutdown_timeout = loaded.config.server.shutdown_timeout / 1000
    max_connections = loaded.config.limits.max_connections
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGQUIT,
                                       signal.SIGUSR1) as signals:
            async with trio.open_nursery() as root:
                await root.start(log.run)
                await root.start(ctx.housekeeping.run)
                if ctx.remote is not None:
                    await root.start(ctx.remote.run)
                async with trio.open_nursery() as connections:
                    accepting = trio.CancelScope()
                    stop = _Stopper(ctx, accepting, connections.cancel_scope, root,
                                    shutdown_timeout)
                    root.start_soon(stop.watch_signals, signals)
                    if parent_pid is not None:
                        root.start_soon(stop.watch_parent, parent_pid)
                    limiter = trio.Semaphore(max_connections)
                    with accepting:
                        async with trio.open_nursery() as acceptors:
                            for listener in listeners:
                                acceptors.start_soon(_accept_loop, ctx, listener,
                                                     connections, limiter)
                            if metrics_listener is not None:
                                acceptors.start_soon(_accept_side, metrics_listener,
                                                     connections, ctx,
                                                     handle_metrics_connection, None)
                            if acme_listener is not None:
                                # Public (port 80): counted in max_connections.
                                acceptors.start_soon(_accept_side, acme_listener,
                                                     connections, ctx,
                                                     handle_http01_connection, limiter)
                            if ready_fd is not None:
                                os.write(ready_fd, b"R")
                                os.close(ready_fd)
                                ready_fd = None
                    # This process's copies only: other workers (a reload's new
                    # generation) may still accept on the same sockets.
                    side = [s for s in (metrics_listener, acme_listener) if s is not None]
                    for listener in (*listeners, *side):
                        listener.close()
                root.cancel_scope.cancel()
    finally:
        ctx.close()
        log.close()  # whatever the queue still holds reaches the files


class _Stopper:
    def __init__(self, ctx: WorkerContext, accepting: trio.CancelScope,
                 connections: trio.CancelScope, root: trio.Nursery,
                 shutdown_timeout: float) -> None:
        self.ctx = ctx
        self.accepting = accepting
        self.connections = connections
        self.root = root
        self.shutdown_timeout = shutdown_timeout

    async def watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for number in signals:
            if number == signal.SIGUSR1:
                self.ctx.log.request_reopen()
                continue
            if number == signal.SIGQUIT:
                self.connections.cancel()
                self.root.cancel_scope.cancel()
                return
            self.root.start_soon(self.drain)  # keep serving SIGUSR1 while draining

    async def watch_parent(self, parent_pid: int) -> None:
        """A worker whose master died stops gracefully instead of lingering."""
        while os.getppid() == parent_pid:
            await trio.sleep(PARENT_CHECK)
        await self.drain()

    async def drain(self) -> None:
        if self.ctx.housekeeping.draining:
            return  # a second SIGTERM changes nothing
        self.ctx.housekeeping.drain()
        self.accepting.cancel()
        self.ctx.shared.stopped_accepting()
        await trio.sleep(self.shutdown_timeout)
        # Time is up: every connection ends now, but first sends what its response still
        # allows (a 503 before any byte, the terminal error event on an SSE stream).
        housekeeping = self.ctx.housekeeping
        housekeeping.end_all("shutdown")
        last_words = trio.current_time() + SHUTDOWN_LAST_WORDS
        while housekeeping.deadlines and trio.current_time() < last_words:
            await trio.sleep(0.02)
        self.connections.cancel()


async def _accept_loop(ctx: WorkerContext, listener: socket.socket,
                       connections: trio.Nursery, limiter: trio.Semaphore) -> None:
    burst = 0
    while True:
        await limiter.acquire()
        while True:
            try:
                sock, peer = listener.accept()
                break
            except BlockingIOError:
                burst = 0
                await wait_readable(listener)
                if ctx.housekeeping.draining:
                    limiter.release()
                    return  # woken before the drain's cancel arrived: accept no more
            except OSError as exc:
                if exc.errno in _RETRY_ACCEPT:
                    ctx.log.diagnostic("error", "accept failed", error=str(exc))
                    await trio.sleep(0.1)
                elif exc.errno not in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    limiter.release()
                    raise
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connections.start_soon(_connection, ctx, sock, peer, limiter)
        burst += 1
        if burst >= _ACCEPT_BURST:
            burst = 0
            await checkpoint()


class _LogDrops:
    """Once a second: export the log queue's new drops as a metric."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.seen: dict[str, int] = {}

    def push(self, _now: float) -> None:
        for kind, total in self.ctx.log.dropped.items():
            new = total - self.seen.get(kind, 0)
            if new:
                self.ctx.metrics.log_dropped(kind, new)
                self.seen[kind] = total


async def _accept_side(listener: socket.socket, connections: trio.Nursery,
                       ctx: WorkerContext,
                       handler: Callable[[WorkerContext, socket.socket], Awaitable[None]],
                       limiter: trio.Semaphore | None) -> None:
    """Accept on a side listener (metrics, ACME HTTP-01): one answer per connection;
    with ``limiter``, each connection holds one of the worker's connection slots."""
    while True:
        if limiter is not None:
            await limiter.acquire()
        while True:
            try:
                sock, _ = listener.accept()
                break
            except BlockingIOError:
                await wait_readable(listener)
            except OSError:
                await trio.sleep(0.1)
        sock.setblocking(False)
        connections.start_soon(_side_connection, ctx, sock, handler, limiter)


async def _side_connection(ctx: WorkerContext, sock: socket.socket,
                           handler: Callable[[WorkerContext, socket.socket], Awaitable[None]],
                           limiter: trio.Semaphore | None) -> None:
    try:
        await handler(ctx, sock)
    finally:
        if limiter is not None:
            limiter.release()


async def _connection(ctx: WorkerContext, sock: socket.socket, peer: object,
                      limiter: trio.Semaphore) -> None:
    try:
        await handle_connection(ctx, sock, peer)
    finally:
        limiter.release()
