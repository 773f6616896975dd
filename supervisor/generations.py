"""Generations of workers, and the forking of every child of the master.

Owns: :class:`WorkerSlot` and :class:`Generation` (the workers started from one config,
their shared state, TLS context and listeners), :class:`Forker` (the only ``os.fork`` in
li_httpd: it forks workers and the actors and resets what a child must not keep),
:class:`ReadyPipe` (the new workers' "I accept now" bytes) and the choice of the shared
segment for the next generation.

Nothing here waits for a child or reaps one: exits reach the slots through the master's
main loop (reaper.py). Nothing here blocks: starting a generation forks its workers and
returns the pipe the main loop watches.

Imports the actor's body (run in the child) and li_httpd.workers only inside a forked
child.

May import: li_httpd.config, li_httpd.shm, li_httpd.actors.reload, li_httpd.actors.health,
li_httpd.workers, li_httpd.supervisor.listeners, li_httpd.supervisor.tls.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from li_httpd.actors import health
from li_httpd.actors.reload import run_actor
from li_httpd.config import LoadedConfig
from li_httpd.shm import SharedState, layout_for, peer_ids
from li_httpd.shm.readiness import READY, Readiness

from .listeners import Listeners
from .tls import ServerTls

MASTER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                  signal.SIGUSR1, signal.SIGCHLD)
"""The signals the master handles (by queueing them); a child resets them."""


@dataclass
class WorkerSlot:
    index: int
    """Column in the generation's shared state."""
    pid: int = 0
    started: float = 0.0
    respawn_at: float = 0.0
    crashes: tuple[float, ...] = ()
    """Times of this slot's early deaths inside the crash window (reaper.py)."""


@dataclass
class Generation:
    number: int
    loaded: LoadedConfig
    shared: SharedState
    tls: ServerTls | None
    listeners: list[socket.socket]
    slots: list[WorkerSlot]
    metrics_listener: socket.socket | None = None
    acme_listener: socket.socket | None = None
    """The plain-HTTP ``http01_bind`` listener (lets_encrypt mode)."""
    retiring: bool = False
    """Told to stop (or given up): its workers' exits are not crashes to respawn."""

    @property
    def live(self) -> bool:
        return any(slot.pid for slot in self.slots)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """Every listening socket this generation's workers serve."""
        side = tuple(s for s in (self.metrics_listener, self.acme_listener) if s is not None)
        return (*self.listeners, *side)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to every live worker of the generation."""
        signal_slots(self.slots, sig)

    def accepting(self) -> bool:
        """Whether any live worker still accepts new connections (shared state)."""
        return any(slot.pid and self.shared.accepting(slot.index) for slot in self.slots)


def signal_slots(slots: Iterable[WorkerSlot], sig: int) -> None:
    for slot in slots:
        if slot.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, sig)


def worker_count(loaded: LoadedConfig) -> int:
    configured = loaded.config.server.workers
    return os.cpu_count() or 1 if configured == "auto" else int(configured)


ReadyState = Literal["waiting", "ready", "failed"]


class ReadyPipe:
    """The read end of the pipe a new generation's workers each write one byte to once
    they accept. Non-blocking; the main loop polls :meth:`fileno`."""

    def __init__(self, fd: int, expected: int) -> None:
        self.fd = fd
        self.expected = expected
        self.got = 0
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self.fd

    def poll(self) -> ReadyState:
        """Read what is there: "ready" once every worker reported, "failed" when every
        worker closed its end without reporting (all exited), else "waiting"."""
        while self.got < self.expected:
            try:
                data = os.read(self.fd, 64)
            except BlockingIOError:
                return "waiting"
            if not data:
                return "failed"
            self.got += len(data)
        return "ready"

    def close(self) -> None:
        if self.fd != -1:
            os.close(self.fd)
            self.fd = -1


class Forker:
    """Forks the master's children. ``close_private`` runs first in every child and
    closes the master's own descriptors (signal wakeup pipe, control socket, ...)."""

    def __init__(self, listeners: Listeners, close_private: Callable[[], None]) -> None:
        self.listeners = listeners
        self.close_private = close_private

    def fork(self, what: str, serves: tuple[socket.socket, ...], body: Callable[[], int]) -> int:
        """Fork a child that runs ``body`` and exits with its code; returns the pid.
        Raises OSError when fork() fails."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self._reset_child()
                self.listeners.close_in_child(keep=serves)
                code = body()
            except BaseException as exc:  # report, then leave the child
                sys.stderr.write(f"li-httpd {what} {os.getpid()}: fatal: {exc!r}\n")
            finally:
                sys.stderr.flush()
                os._exit(code)
        return pid

    def _reset_child(self) -> None:
        signal.set_wakeup_fd(-1)
        for number in MASTER_SIGNALS:
            signal.signal(number, signal.SIG_DFL)
        # SIGUSR1 (reopen logs) kills by default; a child that has not yet installed its
        # own handler has no log file older than the signal to reopen anyway.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        self.close_private()

    def start_actor(self, endpoint: str) -> int:
        """Fork the reload actor serving ``endpoint``; returns its pid."""
        return self.fork("reload actor", (), lambda: run_actor(endpoint))

    def start_health_actor(self, endpoint: str, generation: Generation) -> int:
        """Fork the health actor of ``generation`` (it probes that generation's pools and
        writes to its segment), reporting to ``endpoint``; returns its pid."""
        return self.fork("health actor", (), lambda: health.run_actor(
            endpoint, generation.loaded, generation.shared, generation.number))

    def spawn_worker(self, generation: Generation, slot: WorkerSlot,
                     ready_w: int | None = None) -> None:
        """Fork the worker of ``slot`` (``ready_w``: where it reports ready)."""
        def work() -> int:
            from li_httpd.workers.worker import run_worker

            return run_worker(generation.loaded, generation.listeners, ready_w,
                              generation.tls.context if generation.tls else None,
                              generation.shared, slot.index, generation.metrics_listener,
                              generation.acme_listener)

        slot.pid = self.fork("worker", generation.sockets, work)
        slot.started = time.monotonic()

    def start_workers(self, generation: Generation) -> ReadyPipe:
        """Fork every worker of ``generation`` (register it with the master first, so
        its workers' exits find their slots). Does not wait: the returned pipe tells
        when they are ready. Raises OSError when pipe() or a fork fails; workers already
        forked keep their pids in the slots."""
        ready_r, ready_w = os.pipe()
        try:
            for slot in generation.slots:
                self.spawn_worker(generation, slot, ready_w)
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        return ReadyPipe(ready_r, len(generation.slots))


def next_generation(current: Generation, retiring: Iterable[Generation],
                    loaded: LoadedConfig, tls: ServerTls | None,
                    listeners: Listeners) -> Generation:
    """The generation that follows ``current`` for ``loaded`` (not started). Its shared
    state is the running segment when its layout still fits and the other half of its
    worker columns is free, else a new segment that inherits the key table and peer
    health that still apply. Raises OSError (e.g. out of descriptors)."""
    count = worker_count(loaded)
    layout = layout_for(loaded.config, count)
    base = count if current.slots[0].index == 0 else 0
    columns = set(range(base, base + count))
    busy = {slot.index for g in retiring for slot in g.slots
            if g.shared is current.shared and slot.pid}
    same_peers = peer_ids(loaded.config) == peer_ids(current.loaded.config) and all(
        [p.url for p in loaded.config.upstreams[n].peers]
        == [p.url for p in current.loaded.config.upstreams[n].peers]
        for n in loaded.config.upstreams)
    if layout == current.shared.layout and same_peers and not columns & busy:
        shared = current.shared
    else:
        shared = SharedState.create(layout)
        shared.inherit(current.shared, peer_map(current.loaded, loaded))
        base = 0
    ids = peer_ids(loaded.config)
    carried = peer_map(current.loaded, loaded)
    for name, upstream in loaded.config.upstreams.items():
        previous = current.loaded.config.upstreams.get(name)
        if not upstream.circuit_breaker.enabled:  # no breaker may keep a carried circuit
            for peer in ids[name]:
                shared.reset_circuit(peer)
        elif shared is current.shared and previous is not None \
                and previous.circuit_breaker.window != upstream.circuit_breaker.window:
            for peer in ids[name]:  # the kept floors count buckets of the old width
                shared.forget_window(peer)
        check = upstream.health_check
        if check is not None and previous is not None and previous.health_check is None:
            # The pool gains a check: its peers were serving (without a check every peer
            # counts as ready), so they keep serving until the first probe, which
            # decides at once. Peers the reload adds stay unknown until probed.
            for peer in carried.values():
                if peer in ids[name]:
                    shared.store_probe(peer, Readiness(READY, check.fall - 1), Readiness())
    shared.publish_cert_not_after(tls.not_after_s if tls is not None else 0)
    return Generation(current.number + 1, loaded, shared, tls,
                      [listeners[a] for a in loaded.config.server.listen],
                      [WorkerSlot(base + i) for i in range(count)])


def peer_map(old: LoadedConfig, new: LoadedConfig) -> dict[int, int]:
    """Old shared peer number -> new one, for peers (same pool, same URL) in both."""
    old_ids, new_ids = peer_ids(old.config), peer_ids(new.config)
    mapping: dict[int, int] = {}
    for pool, upstream in new.config.upstreams.items():
        previous = old.config.upstreams.get(pool)
        if previous is None:
            continue
        old_by_url = {p.url: i for p, i in zip(previous.peers, old_ids[pool], strict=True)}
        for peer, new_id in zip(upstream.peers, new_ids[pool], strict=True):
            if peer.url in old_by_url:
                mapping[old_by_url[peer.url]] = new_id
    return mapping
