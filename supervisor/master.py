"""The master process (gunicorn Arbiter style): one synchronous main loop.

The master never runs trio. Signal handlers only queue the signal number and wake the
main loop through ``signal.set_wakeup_fd``. Everything else happens in
:meth:`Master._main_loop`, one turn at a time, and nothing in a turn waits for a child:

1. sleep until a signal, a control request, the actor's reply, new workers' ready
   bytes or the next timer (one ``zmq.Poller`` over all of them);
2. act on queued signals (a stop begins at once, whatever else is in progress);
3. reap every exited child (:func:`reaper.reap`: the master's only ``waitpid``) and
   apply the crash policy to workers of the current generation;
4. answer a control request (``ctl reload`` is answered when its reload ends);
5. step the reload in progress (reload.py), or the stop in progress; start a session
   ticket rotation (a reload with the running config, tickets.py) when one is due;
6. respawn what is due: dead workers after their backoff, the reload actor.

Startup binds every listener before any fork (listeners.py), forks generation 0
(generations.py) and lets the main loop wait for its ready reports like a reload's.
Stopping closes the master's listener copies and the control socket, signals every
worker (SIGTERM: drain for up to ``shutdown_timeout``; SIGQUIT: now) and kills the
reload actor, then the loop reaps until no child is left (SIGKILL after the grace).

Exit status: 0 after a clean stop, 2 when binding or starting failed or the workers were
in a crash loop (config errors are reported by the CLI before the master exists, with
status 1).

Workers are imported only inside a forked child, through generations.py.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zmq
from li_httpd.actors.reload import ReloadClient
from li_httpd.config import VERSION, LoadedConfig
from li_httpd.config.model import ApiKey, State
from li_httpd.ops import metrics as metrics_env
from li_httpd.ops.log.files import Rotator
from li_httpd.ops.log.master import MasterLog
from li_httpd.ops.log.records import Level
from li_httpd.shm import (
    BudgetUsage,
    SharedState,
    budget_limits,
    layout_for,
    peer_cap,
    peer_ids,
    queue_ids,
)
from li_httpd.shm.circuit import shown_state

from . import reaper, sdnotify
from .acme import AcmeActor
from .control import DEFER, ControlError, ControlServer, PendingReply, Reply
from .generations import (
    MASTER_SIGNALS,
    Forker,
    Generation,
    ReadyPipe,
    WorkerSlot,
    signal_slots,
    worker_count,
)
from .health import HealthActor
from .listeners import Listeners, StartError, acme_key, bind_listener, listener_url, metrics_key
from .reload import READY_TIMEOUT, LastResult, Outcome, Reload
from .runtime import control_socket_path, private_directory, remove_directory, runtime_base
from .shared_state import MasterRedis
from .tickets import TicketRotation
from .tls import TlsSetupError, server_tls

EXIT_OK = 0
EXIT_START = 2
KILL_GRACE = 5.0
ACTOR_RESPAWN_DELAY = 0.5
IDLE_WAKEUP = 1.0

__all__ = ["EXIT_OK", "EXIT_START", "Generation", "Master", "StartError", "WorkerSlot",
           "bind_listener", "listener_url", "start"]


@dataclass
class Stop:
    """A stop in progress: children were signalled; the loop reaps until none is left."""

    exit_code: int
    kill_at: float
    """When children still alive get SIGKILL."""
    killed: bool = False


@dataclass
class Startup:
    """Generation 0 between its fork and becoming current."""

    ready: ReadyPipe
    deadline: float


class Master:
    def __init__(self, loaded: LoadedConfig, source: str | None = None) -> None:
        self.loaded = loaded
        """The config the master started with."""
        self.source = source
        """The config file to re-read on reload (None: the embedded default)."""
        self.listeners = Listeners()
        self.current: Generation | None = None
        self.starting: Generation | None = None
        """A generation between its fork and becoming current: its workers are reaped
        and matched like any other's."""
        self.retiring: list[Generation] = []
        self.pending_signals: deque[int] = deque()
        self.started_at = time.monotonic()
        self.last_reload: dict[str, Any] = {"result": "none"}
        self.control: ControlServer | None = None
        self.log: MasterLog | None = None
        self.rotator: Rotator | None = None
        self._next_rotation_check = 0.0
        self.runtime_dir = ""
        self.reload_client: ReloadClient | None = None
        self.actor_pid = 0
        self.actor_respawn_at = 0.0
        self.health: HealthActor | None = None
        """The health actor's supervision (once the runtime directory exists)."""
        self.acme: AcmeActor | None = None
        """The ACME actor's supervision (likewise)."""
        self.startup: Startup | None = None
        self.reload: Reload | None = None
        self.reload_waiters: list[PendingReply] = []
        """ctl clients waiting for the reload in progress."""
        self.reload_again = False
        """A reload was asked for while one ran: run another when it ends (the file may
        have changed after the actor read it)."""
        self.next_waiters: list[PendingReply] = []
        self.tickets = TicketRotation()
        self.redis = MasterRedis()
        self.rotation_waiters: list[PendingReply] = []
        """ctl clients waiting for the rotation in progress."""
        self.stop: Stop | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self.forker = Forker(self.listeners, self._close_private)

    @property
    def stopping(self) -> bool:
        return self.stop is not None

    @property
    def slots(self) -> list[WorkerSlot]:
        """The current generation's worker slots."""
        return self.current.slots if self.current else []

    # -- startup ----------------------------------------------------------------------------

    def run(self) -> int:
        config = self.loaded.config
        try:
            self._open_logs(self.loaded)
        except OSError as exc:
            self.say(f"error: cannot open the log files: {exc}")
            return EXIT_START
        try:
            for address in config.server.listen:
                self.listeners.bind(address)
            tls = server_tls(config)
            self.control = ControlServer(control_socket_path(config))
            self.runtime_dir = private_directory(runtime_base())
            metrics_listener = self.metrics_listener(self.loaded)
            acme_listener = self.acme_listener(self.loaded)
        except (StartError, TlsSetupError, ControlError) as exc:
            self.say(f"error: {exc}", "error")
            self.listeners.close_all()
            return EXIT_START
        except OSError as exc:
            self.say(f"error: runtime directory: {exc}", "error")
            self.listeners.close_all()
            return EXIT_START
        if tls is not None:
            self.say(tls.note)
        self._install_signals()
        self.start_actor()
        self.health = HealthActor(self.forker, self.runtime_dir, self.say)
        self.acme = AcmeActor(self.forker, self.runtime_dir, self.say,
                              current=lambda: self.current or self.starting)
        count = worker_count(self.loaded)
        shared = SharedState.create(layout_for(config, count))
        shared.publish_cert_not_after(tls.not_after_s if tls is not None else 0)
        self.starting = Generation(0, self.loaded, shared, tls,
                                   [self.listeners[a] for a in config.server.listen],
                                   [WorkerSlot(i) for i in range(count)], metrics_listener,
                                   acme_listener)
        # Probing starts with the workers, so peers can be ready when they accept; so
        # does issuance, whose HTTP-01 challenges the workers answer.
        self.health.maintain(self.starting, time.monotonic())
        self.acme.maintain(self.starting, time.monotonic())
        try:
            ready = self.start_workers(self.starting)
        except (StartError, OSError) as exc:
            self.say(f"error: {exc}", "error")
            self._begin_stop(graceful=False, exit_code=EXIT_START)
        else:
            self.startup = Startup(ready, time.monotonic() + READY_TIMEOUT)
        return self._main_loop()

    def _step_startup(self, startup: Startup, now: float) -> None:
        generation = self.starting
        assert generation is not None
        state = startup.ready.poll()
        if state == "waiting" and (any(slot.pid == 0 for slot in generation.slots)
                                   or now >= startup.deadline):
            state = "failed"
        if state == "waiting":
            return
        startup.ready.close()
        self.startup = None
        if state == "failed":
            self.say("error: workers did not become ready", "error")
            self._begin_stop(graceful=False, exit_code=EXIT_START)
            return
        self.current, self.starting = generation, None
        self._follow_generation(now)
        self._banner()
        sdnotify.ready(f"serving, generation 0, config {self.loaded.hash}")
        self._run_queued_reload()

    def _open_logs(self, loaded: LoadedConfig) -> None:
        self.use_logs(*self.prepare_logs(loaded))

    def prepare_logs(self, loaded: LoadedConfig) -> tuple[MasterLog, Rotator]:
        """The master's log and rotation for ``loaded`` (prepares every log file, so an
        unwritable log directory is an error before anything changes)."""
        log = MasterLog(loaded.config.log)
        rotator = Rotator(log.paths, loaded.config.log.rotation,
                          on_error=lambda path, exc: self.say(
                              f"log rotation of {path} failed: {exc}", "error"))
        return log, rotator

    def use_logs(self, log: MasterLog, rotator: Rotator) -> None:
        if self.rotator is not None:
            self.rotator.wait(5.0)  # a compression in flight ends on the files it knows
        if self.log is not None:
            self.log.close()
        self.log, self.rotator = log, rotator

    def _rotate_logs(self, now: float) -> None:
        if self.rotator is None or now < self._next_rotation_check:
            return
        self._next_rotation_check = now + 1.0
        if self.rotator.tick(time.time()):
            self.reopen()

    def metrics_listener(self, loaded: LoadedConfig) -> socket.socket | None:
        """Bind (or reuse) the metrics listener; on first use also point
        prometheus_client at a fresh directory under the runtime directory."""
        metrics = loaded.config.metrics
        if not metrics.enabled:
            return None
        if not os.environ.get(metrics_env.ENV):
            metrics_env.prepare_directory(os.path.join(self.runtime_dir, "metrics"))
        key = metrics_key(metrics.listen)
        self.listeners.ensure(metrics.listen, key=key)
        return self.listeners[key]

    def acme_listener(self, loaded: LoadedConfig) -> socket.socket | None:
        """Bind (or reuse) the plain-HTTP listener that answers ACME HTTP-01."""
        tls = loaded.config.server.tls
        if tls.mode != "lets_encrypt":
            return None
        key = acme_key(tls.lets_encrypt.http01_bind)
        self.listeners.ensure(tls.lets_encrypt.http01_bind, key=key)
        return self.listeners[key]

    def _banner(self) -> None:
        assert self.current is not None
        tls = self.current.tls is not None
        urls = " ".join(listener_url(s, tls) for s in self.current.listeners)
        self.say(f"li-httpd {VERSION} config={self.current.loaded.hash} listen={urls} "
                 f"workers={len(self.current.slots)} pid={os.getpid()}")

    def say(self, line: str, level: Level = "info") -> None:
        """A master event: to the error log and stderr (plain stderr before the log
        exists or when it cannot be opened)."""
        if self.log is None:
            sys.stderr.write(f"li-httpd: {line}\n")
            sys.stderr.flush()
        else:
            self.log.diagnostic(level, f"li-httpd: {line}")

    # -- signals and children ---------------------------------------------------------------

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for number in MASTER_SIGNALS:
            signal.signal(number, self._queue_signal)

    def _queue_signal(self, number: int, _frame: object) -> None:
        self.pending_signals.append(number)

    def _close_private(self) -> None:
        """In a freshly forked child: close what only the master uses."""
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self.control is not None:
            self.control.sock.close()

    def start_actor(self) -> None:
        endpoint = f"ipc://{self.runtime_dir}/reload.sock"
        self.actor_pid = self.forker.start_actor(endpoint)
        if self.reload_client is None:
            self.reload_client = ReloadClient(endpoint)
        else:
            self.reload_client.reset()

    def start_workers(self, generation: Generation) -> ReadyPipe:
        """Register ``generation`` as starting and fork its workers (no waiting)."""
        self.starting = generation
        return self.forker.start_workers(generation)

    def _generations(self) -> list[Generation]:
        return [g for g in (self.current, self.starting, *self.retiring) if g is not None]

    def _children_alive(self) -> bool:
        health = self.health.pid if self.health is not None else 0
        acme = self.acme.pid if self.acme is not None else 0
        return bool(self.actor_pid or health or acme) or any(g.live for g in self._generations())

    def _reaped(self, exits: list[reaper.Exited], now: float) -> None:
        for exited in exits:
            if exited.pid == self.actor_pid:
                self.actor_pid = 0
                self.actor_respawn_at = now + ACTOR_RESPAWN_DELAY
                if not self.stopping:
                    self.say(f"reload actor exited ({exited.describe()}); restarting", "warn")
                continue
            if self.health is not None and self.health.reaped(
                    exited.pid, exited.describe(), now, self.stopping):
                continue
            if self.acme is not None and self.acme.reaped(
                    exited.pid, exited.describe(), now, self.stopping):
                continue
            for generation in self._generations():
                for slot in generation.slots:
                    if slot.pid == exited.pid:
                        self._worker_exited(generation, slot, exited, now)

    def _worker_exited(self, generation: Generation, slot: WorkerSlot,
                       exited: reaper.Exited, now: float) -> None:
        metrics_env.mark_dead(slot.pid)
        slot.pid = 0
        # Streams, in-flight requests and statistics the dead worker held are gone.
        generation.shared.clear_worker(slot.index)
        state = generation.loaded.config.state
        if state.backend == "redis":  # its stream leases in Redis too
            released = self.redis.release_leases(state, exited.pid, now)
            if isinstance(released, str):
                self.say(f"worker {slot.index}: could not release its Redis stream leases "
                         f"({released}); they expire after lease_time", "warn")
        if self.stopping or generation.retiring:
            return
        decision = reaper.after_exit(slot.started, slot.crashes, now)
        slot.crashes = decision.crashes
        slot.respawn_at = now + decision.delay
        self.say(f"worker {slot.index} exited ({exited.describe()}); "
                 f"restarting in {decision.delay:.1f}s", "warn")

    def _crash_loop(self, now: float) -> bool:
        for slot in self.slots:  # only deaths within the window count, on every slot
            slot.crashes = reaper.recent(slot.crashes, now)
        return reaper.crash_loop((slot.crashes for slot in self.slots), now)

    # -- the main loop ------------------------------------------------------------------------

    def _main_loop(self) -> int:
        while True:
            control_ready = self._sleep()
            now = time.monotonic()
            self._take_signals()
            self._reaped(reaper.reap(), now)  # the master's only waitpid
            if self.health is not None:
                self.health.read()
            if self.acme is not None:
                self.acme.read()
            if control_ready and self.control is not None:
                pending = self.control.serve_one(self._control)
                if pending is not None and pending.command == "rotate-tickets":
                    self.tickets.asked = True  # answered when the rotation ends
                    self.tickets.waiters.append(pending)
                elif pending is not None:  # ctl reload: answered when the reload ends
                    self._request_reload(pending)
            if self.stop is not None:
                if self._step_stop(self.stop, now):
                    return self.stop.exit_code
                continue
            if self.startup is not None:
                self._step_startup(self.startup, now)
                continue
            self._step_reload(now)
            self._maybe_rotate_tickets(now)
            if self._crash_loop(now):
                self.say(f"error: workers crashed {reaper.CRASH_LIMIT} times within "
                         f"{reaper.CRASH_WINDOW:.0f}s of starting; giving up", "error")
                self._begin_stop(graceful=False, exit_code=EXIT_START)
                continue
            self._maintain(now)

    def _take_signals(self) -> None:
        while self.pending_signals:
            number = self.pending_signals.popleft()
            if self.stopping and number not in (signal.SIGQUIT, signal.SIGCHLD):
                continue
            if number in (signal.SIGTERM, signal.SIGINT):
                self.say(f"{signal.Signals(number).name}: stopping gracefully")
                self._begin_stop(graceful=True)
            elif number == signal.SIGQUIT:
                self.say("SIGQUIT: stopping now")
                self._begin_stop(graceful=False)
            elif number == signal.SIGHUP:
                self._request_reload(None)
            elif number == signal.SIGUSR1:
                self.reopen()
            # SIGCHLD only wakes the loop, which reaps on every turn.

    def _sleep(self) -> bool:
        """Wait for a signal, a control request, the actor's reply, ready reports or the
        next timer; True when a control request is waiting."""
        if self.pending_signals:
            return False
        now = time.monotonic()
        timeouts = [IDLE_WAKEUP]
        timeouts += [s.respawn_at - now for s in self.slots if s.pid == 0]
        if self.actor_pid == 0 and not self.stopping:
            timeouts.append(self.actor_respawn_at - now)
        for actor in (self.health, self.acme):
            if actor is not None and not self.stopping:
                due = actor.wake_in(now)
                if due is not None:
                    timeouts.append(due)
        if self.stop is not None and not self.stop.killed:
            timeouts.append(self.stop.kill_at - now)
        if self.startup is not None:
            timeouts.append(self.startup.deadline - now)
        rotation = self.tickets.wake_in(now)
        if rotation is not None and not self.stopping:
            timeouts.append(rotation)
        poller = zmq.Poller()
        poller.register(self._wake_r, zmq.POLLIN)
        if self.control is not None:
            poller.register(self.control.fileno(), zmq.POLLIN)
        for actor in (self.health, self.acme):
            if actor is not None and actor.inbox is not None:
                poller.register(actor.inbox.socket, zmq.POLLIN)
        if self.startup is not None and self.startup.ready.fd != -1:
            poller.register(self.startup.ready.fileno(), zmq.POLLIN)
        if self.reload is not None:
            timeouts.append(self.reload.wake_in(now))
            for fd in self.reload.watched_fds():
                poller.register(fd, zmq.POLLIN)
            if self.reload.asking and self.reload_client is not None:
                poller.register(self.reload_client.socket, zmq.POLLIN)
        timeout_ms = max(0, int(min(timeouts) * 1000) + 1)
        try:
            events = dict(poller.poll(timeout_ms))
        except zmq.ZMQError as exc:
            if exc.errno != errno.EINTR:
                raise
            return False
        if self._wake_r in events:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 512):
                    pass
        return self.control is not None and self.control.fileno() in events

    def _maintain(self, now: float) -> None:
        current = self.current
        if current is not None:
            for slot in current.slots:
                if slot.pid == 0 and now >= slot.respawn_at:
                    self.forker.spawn_worker(current, slot)
        for generation in list(self.retiring):
            if not generation.live:
                self.retiring.remove(generation)
                self._retired(generation)
        # Budgets charged by draining workers reach the new segment (oldest first, so
        # that a chain of reloads folds in order).
        for generation in sorted(self._generations(), key=lambda g: g.number):
            generation.shared.fold_budgets()
        if self.actor_pid == 0 and now >= self.actor_respawn_at:
            self.start_actor()
        if self.health is not None:
            self.health.maintain(self.current, now)
        if self.acme is not None:
            self.acme.maintain(self.current, now)
        self._rotate_logs(now)

    def _retired(self, generation: Generation) -> None:
        """Close what only a finished generation used."""
        generations = self._generations()
        self.listeners.close_unserved(s for g in generations for s in g.sockets)
        if all(g.shared is not generation.shared for g in generations):
            for following in generations:
                following.shared.forget_origin(generation.shared)
            generation.shared.close()

    # -- reload -------------------------------------------------------------------------------

    def _request_reload(self, waiter: PendingReply | None) -> None:
        """SIGHUP or ctl reload: start a reload, or run another after the one running
        (or after startup)."""
        if self.reload is None and self.startup is None:
            if waiter is not None:
                self.reload_waiters.append(waiter)
            self._begin_reload(time.monotonic())
            return
        self.reload_again = True
        if waiter is not None:
            self.next_waiters.append(waiter)

    def _begin_reload(self, now: float) -> None:
        sdnotify.reloading()
        if self.current is None or self.reload_client is None:
            self._reload_done(Outcome("failed", "not running"))
            return
        self.reload = Reload(self, self.reload_client, self.source, now)
        self._step_reload(now)

    def _step_reload(self, now: float) -> None:
        if self.reload is None:
            return
        outcome = self.reload.step(now)
        if outcome is not None:
            rotation, self.reload = self.reload.rotation, None
            if rotation:
                self._rotation_done(outcome)
            else:
                self._reload_done(outcome)

    # -- session ticket rotation ------------------------------------------------------------

    def _follow_generation(self, now: float) -> None:
        """A generation may have become current: its ticket keys are new."""
        if self.current is not None:
            self.tickets.follow(self.current.number, self.current.loaded.config.server.tls,
                                now, time.time())

    def _maybe_rotate_tickets(self, now: float) -> None:
        if (self.reload is not None or self.startup is not None or self.stopping
                or self.current is None or self.reload_client is None
                or not self.tickets.wanted(now)):
            return
        self.rotation_waiters = self.tickets.started()
        self.reload = Reload(self, self.reload_client, self.source, now,
                             rotate=self.current.loaded)
        self._step_reload(now)

    def _rotation_done(self, outcome: Outcome, *, notify: bool = True) -> None:
        now = time.monotonic()
        if notify:
            sdnotify.ready(f"serving, generation {self.current.number if self.current else 0}")
        metrics_env.count_ticket_rotation(outcome.result)
        if outcome.result == "ok":
            self.tickets.rotations += 1
            self._follow_generation(now)
            self.say(f"session tickets rotated: generation {outcome.generation}, next "
                     f"rotation {self.tickets.status()['next_rotation']}")
        else:
            self.tickets.failed(now, time.time())
            self.say(f"session ticket rotation failed, the current keys stay: "
                     f"{outcome.reason}", "error")
        waiters, self.rotation_waiters = self.rotation_waiters, []
        for waiter in waiters:
            waiter.answer({"ok": outcome.result == "ok", **outcome.reply()})
        self._run_queued_reload()

    # -- reload results -------------------------------------------------------------------

    def _reload_done(self, outcome: Outcome, *, notify: bool = True) -> None:
        self._follow_generation(time.monotonic())
        if notify:
            sdnotify.ready(f"serving, generation {self.current.number if self.current else 0}")
        result = outcome.reply()
        self.last_reload = {**result, "at": time.time()}
        metrics_env.count_reload(outcome.result)
        if outcome.result == "failed":
            self.say(f"reload failed: {outcome.reason}", "error")
        else:
            self.say(f"reload {outcome.result}: config={outcome.config_hash}")
            if outcome.result == "ok":
                self._banner()
        waiters, self.reload_waiters = self.reload_waiters, []
        for waiter in waiters:
            waiter.answer({"ok": outcome.result != "failed", **result})
        self._run_queued_reload()

    def _run_queued_reload(self) -> None:
        if self.reload_again and not self.stopping:
            self.reload_again = False
            self.reload_waiters, self.next_waiters = self.next_waiters, []
            self._begin_reload(time.monotonic())

    # -- control ------------------------------------------------------------------------------

    def reopen(self) -> None:
        """SIGUSR1 / ctl reopen / rotation: the master and every worker reopen their logs."""
        if self.log is not None:
            self.log.reopen()
        for generation in self._generations():
            generation.signal(signal.SIGUSR1)

    def _control(self, command: str) -> Reply | None:
        if command == "stop":
            if not self.stopping:
                self.say("ctl stop: stopping gracefully")
                self._begin_stop(graceful=True)
            return {"ok": True, "stopping": True}
        if self.current is None:
            return {"ok": False, "error": "the gateway is still starting"}
        if command == "status":
            return {"ok": True, **self.status()}
        if command == "reload":
            return DEFER  # answered by _reload_done
        if command == "renew":
            if self.acme is None or not self.acme.renew():
                return {"ok": False, "error": "no ACME actor runs (tls.mode is not "
                                              "lets_encrypt, or it is restarting)"}
            self.say("ctl renew: the ACME actor renews the certificate now")
            return {"ok": True}
        if command == "rotate-tickets":
            refusal = self.tickets.refusal()
            return {"ok": False, "error": refusal} if refusal else DEFER
        self.reopen()
        return {"ok": True}

    def status(self) -> dict[str, Any]:
        current = self.current
        assert current is not None
        now_ns = time.monotonic_ns()
        workers = []
        for generation in self._generations():
            for slot in generation.slots:
                pid, connections, requests, started = generation.shared.worker_stats(slot.index)
                workers.append({
                    "slot": slot.index, "pid": slot.pid, "generation": generation.number,
                    "state": ("retiring" if generation.retiring else "running") if slot.pid
                    else "restarting",
                    "connections": connections if pid == slot.pid else 0,
                    "requests": requests if pid == slot.pid else 0,
                    "uptime_s": round((now_ns - started) / 1e9, 1)
                    if pid == slot.pid and started else 0.0,
                })
        peers = []
        ids = peer_ids(current.loaded.config)
        for pool, upstream in current.loaded.config.upstreams.items():
            check = upstream.health_check
            for peer, shared_id in zip(upstream.peers, ids[pool], strict=True):
                ready, live = current.shared.probe_state(shared_id)
                health = current.shared.health(shared_id)
                down_for = max(0.0, (health.down_until_ns - now_ns) / 1e9)
                peers.append({"pool": pool, "peer": peer.url,
                              "health": "up" if down_for == 0 else "down",
                              "down_for_s": round(down_for, 1), "fails": health.fails,
                              "active": current.shared.active_of(shared_id),
                              "max_concurrent": peer_cap(upstream, peer),
                              "circuit": shown_state(current.shared.circuit(shared_id),
                                                     now_ns)
                              if upstream.circuit_breaker.enabled else "off",
                              # Active health: "-" where nothing is probed.
                              "ready": ready.name if check else "-",
                              "live": live.live_name if check and check.live else "-"})
        queued = queue_ids(current.loaded.config)
        queues = [{"route": route.name, "depth": current.shared.queue_depth(queued[route.name]),
                   "max_size": route.queue.max_size}
                  for route in current.loaded.config.route if route.queue is not None]
        tls = current.tls is not None
        last: LastResult = self.last_reload["result"]
        config = current.loaded.config
        remote = self.redis.budgets(config.state, config.auth.keys, time.monotonic())
        budgets_from = budget_source(config.state, remote)
        budgets = ([] if budgets_from.startswith("unavailable") else
                   budget_status(current.shared, config.auth.keys, time.time_ns(),
                                 None if isinstance(remote, str) else remote))
        return {
            "version": VERSION, "pid": os.getpid(), "config_hash": current.loaded.hash,
            "config_file": current.loaded.filename, "generation": current.number,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "listen": [listener_url(s, tls) for s in current.listeners],
            "workers": workers, "upstreams": peers, "budgets": budgets,
            "budgets_from": budgets_from,
            "queues": queues,
            "actors": [{"name": "reload", "pid": self.actor_pid,
                        "state": "running" if self.actor_pid else "restarting"},
                       *[a.status() for a in (self.health, self.acme) if a is not None]],
            "last_reload": {**self.last_reload, "result": last},
            "reloading": self.reload.phase.value if self.reload is not None else None,
            "control_socket": self.control.path if self.control else "",
            "tickets": self.tickets.status(),
            "certificates": [{**current.tls.cert.status(datetime.datetime.now(datetime.UTC)),
                              **({"next_renewal": self.acme.next_renewal}
                                 if self.acme is not None and self.acme.pid else {})}]
            if current.tls is not None else [],
        }

    # -- stopping -----------------------------------------------------------------------------

    def _begin_stop(self, *, graceful: bool, exit_code: int = EXIT_OK) -> None:
        """Start stopping every child; the main loop then reaps until none is left.

        The master's listener copies close first so that, once the workers stop
        accepting, new connections are refused, not queued. A reload in progress ends at
        once (its new generation, if forked, is stopped with the others). A SIGQUIT
        during a graceful stop turns it into an immediate one."""
        now = time.monotonic()
        if self.stop is not None:  # already stopping: only SIGQUIT gets here
            if graceful:
                return
            self.stop.kill_at = min(self.stop.kill_at, now + KILL_GRACE)
            for generation in self._generations():
                generation.signal(signal.SIGQUIT)
            return
        self.reload_again = False
        if self.reload is not None:
            outcome = self.reload.abort("the master is stopping")
            rotation, self.reload = self.reload.rotation, None
            if rotation:
                self._rotation_done(outcome, notify=False)
            else:
                self._reload_done(outcome, notify=False)
        for waiter in self.tickets.started():  # asked, not begun
            waiter.answer({"ok": False, "result": "failed", "line": 0,
                           "reason": "rotation interrupted: the master is stopping"})
        for waiter in self.next_waiters:
            waiter.answer({"ok": False, "result": "failed", "line": 0,
                           "reason": "reload interrupted: the master is stopping"})
        self.next_waiters = []
        sdnotify.stopping()
        self.listeners.close_all()
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.startup is not None:
            self.startup.ready.close()
            self.startup = None
        for generation in self._generations():
            generation.signal(signal.SIGTERM if graceful else signal.SIGQUIT)
        if self.actor_pid:  # the actor holds nothing to drain, and may be stalled
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.actor_pid, signal.SIGKILL)
        for actor in (self.health, self.acme):
            if actor is not None:
                actor.stop()
        shutdown = max((g.loaded.config.server.shutdown_timeout for g in self._generations()),
                       default=0) / 1000
        self.stop = Stop(exit_code, now + (shutdown + KILL_GRACE if graceful else KILL_GRACE))

    def _step_stop(self, stop: Stop, now: float) -> bool:
        """True once every child is gone (the master then cleans up and exits)."""
        if self._children_alive():
            if now >= stop.kill_at and not stop.killed:
                stop.killed = True
                signal_slots((slot for g in self._generations() for slot in g.slots),
                             signal.SIGKILL)
            return False
        if self.reload_client is not None:
            self.reload_client.close()
        for actor in (self.health, self.acme):
            if actor is not None:
                actor.close()
        if self.runtime_dir:
            remove_directory(self.runtime_dir)
        if self.rotator is not None:
            self.rotator.wait(5.0)
        if self.log is not None:
            self.log.close()
        return True


def budget_source(state: State, remote: Mapping[str, BudgetUsage] | str | None) -> str:
    """Where the budgets ``ctl status`` shows come from. While Redis cannot be read,
    this host's counters are what decides under ``budgets_on_error = "local"``, so they
    are shown (labelled); under allow or deny nothing is counted, so nothing is."""
    if remote is None:
        return "shared memory"
    if not isinstance(remote, str):
        return "redis"
    if (state.budgets_on_error or state.on_backend_error) == "local":
        return f"shared memory (Redis unavailable: {remote})"
    return f"unavailable: {remote}"


def budget_status(shared: SharedState, keys: Sequence[ApiKey], now_ns: int,
                  remote: Mapping[str, BudgetUsage] | None = None) -> list[dict[str, Any]]:
    """Per API key with a budget: what it used in the current windows, its limits (0 =
    none) and when each window ends (Unix seconds); from ``remote`` (what Redis holds)
    when given, else from this host's shared memory."""
    rows: list[dict[str, Any]] = []
    for index, key in enumerate(keys):
        limits = budget_limits(key)
        if not limits.any:
            continue
        usage = (remote[key.id] if remote is not None
                 else shared.budget_usage(index, limits, now_ns))
        rows.append({"key": key.id,
                     "tokens": usage.tokens, "tokens_per_minute": key.tokens_per_minute,
                     "tokens_window_end": usage.tokens_window_end_ns // 1_000_000_000,
                     "usd": usage.micro_usd / 1e6, "usd_budget": key.usd_budget,
                     "usd_window_end": usage.usd_window_end_ns // 1_000_000_000})
    return rows


def start(loaded: LoadedConfig, source: str | None = None) -> int:
    """``li-httpd start``: run the master in the foreground until stopped."""
    try:
        return Master(loaded, source).run()
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            sys.stderr.write("li-httpd: error: cannot fork workers (resource limit)\n")
            return EXIT_START
        raise
