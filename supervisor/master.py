"""The master process (gunicorn Arbiter style): bind, fork, supervise, reload, stop.

The master never runs trio. Signal handlers only queue the signal number and wake the
main loop through ``signal.set_wakeup_fd``; the synchronous main loop reaps children,
respawns dead workers, answers the control socket and performs reloads and stops.
Listening sockets are bound before any fork and stay open in the master, so a
respawned worker serves the same sockets and the kernel's accept queue survives a
worker crash.

Generations: the workers started from one config form a generation. A reload (SIGHUP
or ``li-httpd ctl reload``) asks the reload actor (actors/reload.py, over ZeroMQ) to
read and validate the file; on any error the running generation is untouched and the
error is kept for ``ctl status``. Otherwise the master binds any new listen address,
builds the TLS context and the shared state (reusing the running segment, so rate
limits and health survive, when its layout still fits), starts the new generation and,
only once every new worker reports ready, sends the old one SIGTERM: it stops
accepting and drains (nginx semantics). Listeners no longer configured close when the
last generation using them has exited.

Crash handling: a worker that dies is respawned; if it died young (within
:data:`YOUNG` seconds of its start) the delay doubles with each recent early death of
its slot (0.1 s up to 5 s). Early deaths are what a crash loop looks like; when
:data:`CRASH_LIMIT` of them happen within :data:`CRASH_WINDOW` seconds the master gives
up loudly: it stops everything and exits with status 2 instead of spinning. A worker
that ran for a while and was killed (OOM killer, an operator) is replaced at once, and
its shared-memory columns are zeroed first so it leaks no stream or connection count.

Exit status: 0 after a clean stop, 2 when binding or starting failed (config errors
are reported by the CLI before the master exists, with status 1).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from li_httpd.actors.reload import ReloadClient, run_actor
from li_httpd.config import VERSION, ConfigError, LoadedConfig, load_text
from li_httpd.config.checks import split_host_port
from li_httpd.ops import metrics as metrics_env
from li_httpd.ops.log.files import Rotator
from li_httpd.ops.log.master import MasterLog
from li_httpd.ops.log.records import Level
from li_httpd.shm import SharedState, layout_for, peer_ids

from . import sdnotify
from .control import ControlError, ControlServer
from .runtime import control_socket_path, private_directory, remove_directory, runtime_base
from .tls import ServerTls, TlsSetupError, server_tls

EXIT_OK = 0
EXIT_START = 2
CRASH_WINDOW = 30.0
CRASH_LIMIT = 10
YOUNG = 1.0
READY_TIMEOUT = 30.0
KILL_GRACE = 5.0
STOP_ACCEPTING_WAIT = 5.0
BACKLOG = 4096


class StartError(Exception):
    """Binding or starting failed; the message is for the operator."""


@dataclass
class WorkerSlot:
    index: int
    """Column in the generation's shared state."""
    pid: int = 0
    started: float = 0.0
    respawn_at: float = 0.0
    crashes: deque[float] = field(default_factory=deque)


@dataclass
class Generation:
    number: int
    loaded: LoadedConfig
    shared: SharedState
    tls: ServerTls | None
    listeners: list[socket.socket]
    slots: list[WorkerSlot]
    metrics_listener: socket.socket | None = None
    retiring: bool = False

    @property
    def live(self) -> bool:
        return any(slot.pid for slot in self.slots)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """Every listening socket this generation's workers serve."""
        metrics = (self.metrics_listener,) if self.metrics_listener else ()
        return (*self.listeners, *metrics)


def bind_listener(address: str) -> socket.socket:
    parsed = split_host_port(address)
    if parsed is None:
        raise StartError(f"invalid listen address {address!r}")
    host, port = parsed
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if hasattr(socket, "TCP_DEFER_ACCEPT"):
            # accept() only once the request's first bytes are there: saves a wakeup.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise StartError(f"cannot listen on {address}: {exc.strerror or exc}") from exc
    return sock


def listener_url(sock: socket.socket, tls: bool) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


def worker_count(loaded: LoadedConfig) -> int:
    configured = loaded.config.server.workers
    return os.cpu_count() or 1 if configured == "auto" else int(configured)


class Master:
    def __init__(self, loaded: LoadedConfig, source: str | None = None) -> None:
        self.loaded = loaded
        self.source = source
        """The config file to re-read on reload (None: the embedded default)."""
        self.listeners: dict[str, socket.socket] = {}
        self.current: Generation | None = None
        self.starting: Generation | None = None
        """A generation between its fork and becoming current: its workers are reaped
        and matched like any other's."""
        self.retiring: list[Generation] = []
        self.pending_signals: deque[int] = deque()
        self.stopping = False
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
        self._stop_requested = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)

    # -- entry ------------------------------------------------------------------------------

    @property
    def slots(self) -> list[WorkerSlot]:
        """The current generation's worker slots."""
        return self.current.slots if self.current else []

    def run(self) -> int:
        config = self.loaded.config
        try:
            self._open_logs(self.loaded)
        except OSError as exc:
            self._say(f"error: cannot open the log files: {exc}")
            return EXIT_START
        try:
            for address in config.server.listen:
                self.listeners[address] = bind_listener(address)
            tls = server_tls(config)
            self.control = ControlServer(control_socket_path(config))
            self.runtime_dir = private_directory(runtime_base())
            metrics_listener = self._metrics_listener(self.loaded)
        except (StartError, TlsSetupError, ControlError) as exc:
            self._say(f"error: {exc}", "error")
            self._close_listeners(list(self.listeners))
            return EXIT_START
        except OSError as exc:
            self._say(f"error: runtime directory: {exc}", "error")
            self._close_listeners(list(self.listeners))
            return EXIT_START
        if tls is not None:
            self._say(tls.note)
        self._install_signals()
        self._start_actor()
        count = worker_count(self.loaded)
        shared = SharedState.create(layout_for(config, count))
        generation = Generation(0, self.loaded, shared, tls,
                                [self.listeners[a] for a in config.server.listen],
                                [WorkerSlot(i) for i in range(count)], metrics_listener)
        try:
            ready = self._start_generation(generation)
        except StartError as exc:
            self._say(f"error: {exc}", "error")
            ready = False
        if not ready:
            self._say("error: workers did not become ready", "error")
            self._stop(graceful=False)
            return EXIT_START
        self.current, self.starting = generation, None
        self._banner()
        sdnotify.ready(f"serving, generation 0, config {self.loaded.hash}")
        return self._main_loop()

    def _open_logs(self, loaded: LoadedConfig) -> None:
        self._use_logs(*self._prepare_logs(loaded))

    def _prepare_logs(self, loaded: LoadedConfig) -> tuple[MasterLog, Rotator]:
        """The master's log and rotation for ``loaded`` (prepares every log file, so an
        unwritable log directory is an error before anything changes)."""
        log = MasterLog(loaded.config.log)
        rotator = Rotator(log.paths, loaded.config.log.rotation,
                          on_error=lambda path, exc: self._say(
                              f"log rotation of {path} failed: {exc}", "error"))
        return log, rotator

    def _use_logs(self, log: MasterLog, rotator: Rotator) -> None:
        if self.rotator is not None:
            self.rotator.wait(5.0)  # a compression in flight ends on the files it knows
        if self.log is not None:
            self.log.close()
        self.log, self.rotator = log, rotator

    def _rotate_logs(self) -> None:
        now = time.monotonic()
        if self.rotator is None or now < self._next_rotation_check:
            return
        self._next_rotation_check = now + 1.0
        if self.rotator.tick(time.time()):
            self.reopen()

    def _metrics_listener(self, loaded: LoadedConfig) -> socket.socket | None:
        """Bind (or reuse) the metrics listener; on first use also point
        prometheus_client at a fresh directory under the runtime directory."""
        metrics = loaded.config.metrics
        if not metrics.enabled:
            return None
        if not os.environ.get(metrics_env.ENV):
            metrics_env.prepare_directory(os.path.join(self.runtime_dir, "metrics"))
        key = "metrics:" + metrics.listen
        if key not in self.listeners:
            self.listeners[key] = self._bound_at(metrics.listen) or bind_listener(metrics.listen)
        return self.listeners[key]

    def _banner(self) -> None:
        assert self.current is not None
        tls = self.current.tls is not None
        urls = " ".join(listener_url(s, tls) for s in self.current.listeners)
        self._say(f"li-httpd {VERSION} config={self.current.loaded.hash} listen={urls} "
                  f"workers={len(self.current.slots)} pid={os.getpid()}")

    def _say(self, line: str, level: Level = "info") -> None:
        """A master event: to the error log and stderr (plain stderr before the log
        exists or when it cannot be opened)."""
        if self.log is None:
            sys.stderr.write(f"li-httpd: {line}\n")
            sys.stderr.flush()
        else:
            self.log.diagnostic(level, f"li-httpd: {line}")

    # -- signals --------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                       signal.SIGUSR1, signal.SIGCHLD):
            signal.signal(number, self._queue_signal)

    def _queue_signal(self, number: int, _frame: object) -> None:
        self.pending_signals.append(number)

    def _reset_child_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                       signal.SIGCHLD):
            signal.signal(number, signal.SIG_DFL)
        # SIGUSR1 (reopen logs) kills by default; a child that has not yet installed its
        # own handler has no log file older than the signal to reopen anyway.
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self.control is not None:
            self.control.sock.close()

    def _fork(self, what: str, serves: tuple[socket.socket, ...], body: Callable[[], int]) -> int:
        """Fork a child that runs ``body`` and exits with its code; returns the pid."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self._reset_child_signals()
                self._close_inherited_listeners(keep=serves)
                code = body()
            except BaseException as exc:  # report, then leave the child
                sys.stderr.write(f"li-httpd {what} {os.getpid()}: fatal: {exc!r}\n")
            finally:
                sys.stderr.flush()
                os._exit(code)
        return pid

    def _close_inherited_listeners(self, keep: tuple[socket.socket, ...]) -> None:
        """In a new child: close the master's listeners it does not serve. A copy left
        open in any process keeps a listener the config dropped queueing connections."""
        kept = {id(s) for s in keep}
        for sock in self.listeners.values():
            if id(sock) not in kept:
                sock.close()

    # -- the reload actor -------------------------------------------------------------------------

    def _start_actor(self) -> None:
        endpoint = f"ipc://{self.runtime_dir}/reload.sock"
        pid = self._fork("reload actor", (), lambda: run_actor(endpoint))
        self.actor_pid = pid
        if self.reload_client is None:
            self.reload_client = ReloadClient(endpoint)
        else:
            self.reload_client.reset()

    # -- workers ------------------------------------------------------------------------------

    def _start_generation(self, generation: Generation) -> bool:
        """Fork the generation's workers and wait until each reports ready. The caller
        makes it current (or gives it up) and then clears :attr:`starting`."""
        self.starting = generation
        ready_r, ready_w = os.pipe()
        try:
            for slot in generation.slots:
                self._spawn(generation, slot, ready_w)
            os.close(ready_w)
            ready_w = -1
            return self._await_ready(generation, ready_r)
        finally:
            os.close(ready_r)
            if ready_w != -1:
                os.close(ready_w)

    def _await_ready(self, generation: Generation, ready_r: int) -> bool:
        got = 0
        give_up = time.monotonic() + READY_TIMEOUT
        while got < len(generation.slots):
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                return False
            readable, _, _ = select.select([ready_r], [], [], min(remaining, 0.5))
            if readable:
                data = os.read(ready_r, 64)
                if not data:
                    return False  # every worker exited before reporting ready
                got += len(data)
            self._reap()
            if any(slot.pid == 0 for slot in generation.slots):
                return False
        return True

    def _spawn(self, generation: Generation, slot: WorkerSlot, ready_w: int | None = None) -> None:
        def work() -> int:
            from li_httpd.workers.worker import run_worker

            return run_worker(generation.loaded, generation.listeners, ready_w,
                              generation.tls.context if generation.tls else None,
                              generation.shared, slot.index, generation.metrics_listener)

        pid = self._fork("worker", generation.sockets, work)
        slot.pid = pid
        slot.started = time.monotonic()

    def _generations(self) -> list[Generation]:
        return [g for g in (self.current, self.starting, *self.retiring) if g is not None]

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.actor_pid:
                self.actor_pid = 0
                self.actor_respawn_at = time.monotonic() + 0.5
                if not self.stopping:
                    self._say(f"reload actor exited ({_describe_status(status)}); restarting",
                              "warn")
                continue
            for generation in self._generations():
                for slot in generation.slots:
                    if slot.pid == pid:
                        self._worker_exited(generation, slot, status)

    def _worker_exited(self, generation: Generation, slot: WorkerSlot, status: int) -> None:
        metrics_env.mark_dead(slot.pid)
        slot.pid = 0
        # Streams, in-flight requests and statistics the dead worker held are gone.
        generation.shared.clear_worker(slot.index)
        if self.stopping or generation.retiring:
            return
        now = time.monotonic()
        while slot.crashes and now - slot.crashes[0] > CRASH_WINDOW:
            slot.crashes.popleft()
        if now - slot.started < YOUNG:
            slot.crashes.append(now)
            delay = min(0.1 * 2 ** (len(slot.crashes) - 1), 5.0)
        else:
            delay = 0.0
        slot.respawn_at = now + delay
        self._say(f"worker {slot.index} exited ({_describe_status(status)}); "
                  f"restarting in {delay:.1f}s", "warn")

    def _crash_loop(self) -> bool:
        now = time.monotonic()
        for slot in self.slots:  # only deaths within the window count, on every slot
            while slot.crashes and now - slot.crashes[0] > CRASH_WINDOW:
                slot.crashes.popleft()
        return sum(len(slot.crashes) for slot in self.slots) >= CRASH_LIMIT

    # -- main loop ------------------------------------------------------------------------------

    def _main_loop(self) -> int:
        while True:
            control_ready = self._sleep(1.0)
            while self.pending_signals:
                number = self.pending_signals.popleft()
                if number == signal.SIGCHLD:
                    self._reap()
                elif number in (signal.SIGTERM, signal.SIGINT):
                    self._say(f"{signal.Signals(number).name}: stopping gracefully")
                    self._stop(graceful=True)
                    return EXIT_OK
                elif number == signal.SIGQUIT:
                    self._say("SIGQUIT: stopping now")
                    self._stop(graceful=False)
                    return EXIT_OK
                elif number == signal.SIGHUP:
                    self.reload()
                elif number == signal.SIGUSR1:
                    self.reopen()
            if control_ready and self.control is not None:
                self.control.serve_one(self._control)
            if self._stop_requested:
                self._say("ctl stop: stopping gracefully")
                self._stop(graceful=True)
                return EXIT_OK
            self._reap()
            if self._crash_loop():
                self._say(f"error: workers crashed {CRASH_LIMIT} times within "
                          f"{CRASH_WINDOW:.0f}s of starting; giving up", "error")
                self._stop(graceful=False)
                return EXIT_START
            self._maintain()

    def _maintain(self) -> None:
        now = time.monotonic()
        current = self.current
        if current is not None:
            for slot in current.slots:
                if slot.pid == 0 and now >= slot.respawn_at:
                    self._spawn(current, slot)
        for generation in list(self.retiring):
            if not generation.live:
                self.retiring.remove(generation)
                self._retired(generation)
        if self.actor_pid == 0 and now >= self.actor_respawn_at:
            self._start_actor()
        self._rotate_logs()

    def _sleep(self, seconds: float) -> bool:
        """Wait for a signal, a control request or the next timer; True when a control
        request is waiting."""
        if self.pending_signals:
            return False
        timeout = seconds
        waiting = [s.respawn_at for s in self.slots if s.pid == 0]
        if waiting:
            timeout = max(0.0, min(timeout, min(waiting) - time.monotonic()))
        watched = [self._wake_r]
        if self.control is not None:
            watched.append(self.control.fileno())
        try:
            readable, _, _ = select.select(watched, [], [], timeout)
        except InterruptedError:
            return False
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 512):
                    pass
        return self.control is not None and self.control.fileno() in readable

    # -- reload ---------------------------------------------------------------------------------

    def reload(self) -> dict[str, Any]:
        """Validate the config file again and, if it is valid, switch generations."""
        sdnotify.reloading()
        try:
            result = self._reload()
        finally:
            sdnotify.ready(f"serving, generation {self.current.number if self.current else 0}")
        self.last_reload = {**result, "at": time.time()}
        metrics_env.count_reload(str(result["result"]))
        if result["result"] == "failed":
            self._say(f"reload failed: {result['reason']}", "error")
        else:
            self._say(f"reload {result['result']}: config={result.get('config_hash', '')}")
        return result

    def _reload(self) -> dict[str, Any]:
        current = self.current
        if current is None or self.reload_client is None:
            return {"result": "failed", "reason": "not running", "line": 0}
        self._reap()
        if self.actor_pid == 0:  # died since the loop last looked: do not wait on a ghost
            self._start_actor()
        try:
            reply = self.reload_client.validate(self.source)
        except TimeoutError as exc:
            if self.actor_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.actor_pid, signal.SIGKILL)
            return {"result": "failed", "reason": str(exc), "line": 0}
        if not reply.get("ok"):
            return {"result": "failed", "reason": str(reply.get("reason", "invalid config")),
                    "line": int(reply.get("line") or 0), "errors": reply.get("errors", [])}
        try:
            loaded = load_text(str(reply["canonical"]), str(reply["filename"]))
        except ConfigError as exc:
            return {"result": "failed", "reason": str(exc).splitlines()[0], "line": 0}
        if loaded.hash == current.loaded.hash:
            return {"result": "unchanged", "config_hash": loaded.hash}
        logs = None
        if loaded.config.log != current.loaded.config.log:
            try:
                logs = self._prepare_logs(loaded)
            except OSError as exc:
                return {"result": "failed", "reason": f"cannot open the log files: {exc}",
                        "line": 0}
        result = self._switch_generation(loaded, current)
        if logs is not None:  # the master's logs follow the config only if it took effect
            if result["result"] == "ok":
                self._use_logs(*logs)
            else:
                logs[0].close()
        if result["result"] == "ok":
            self._banner()
        return result

    def _switch_generation(self, loaded: LoadedConfig, current: Generation) -> dict[str, Any]:
        """Bind what the new config adds, start its generation and retire ``current``;
        on any failure the running generation is untouched."""
        config = loaded.config
        bound: list[str] = []
        try:
            for address in config.server.listen:
                if address in self.listeners:
                    continue
                existing = self._bound_at(address)
                if existing is not None:
                    self.listeners[address] = existing  # e.g. ":0" became its real port
                    continue
                self.listeners[address] = bind_listener(address)
                bound.append(address)
            tls = server_tls(config)
            metrics_listener = self._metrics_listener(loaded)
        except (StartError, TlsSetupError) as exc:
            self._close_listeners(bound)
            return {"result": "failed", "reason": str(exc), "line": 0}
        try:
            generation = self._next_generation(loaded, tls)
        except OSError as exc:  # e.g. out of descriptors: the running generation stays
            self._close_listeners(bound)
            return {"result": "failed", "reason": f"cannot prepare the new generation: {exc}",
                    "line": 0}
        generation.metrics_listener = metrics_listener
        reason = "the new workers did not become ready"
        try:
            ready = self._start_generation(generation)
        except (StartError, OSError) as exc:  # OSError: pipe() or fork() failed
            ready = False
            reason = f"cannot start the new workers: {exc}"
        if not ready:
            generation.retiring = True  # its workers' exits are not crashes to restart
            self._signal_slots(generation.slots, signal.SIGKILL)
            self._wait_for_exit(generation.slots, KILL_GRACE)
            self.starting = None
            for slot in generation.slots:  # what the killed workers counted is gone
                generation.shared.clear_worker(slot.index)
            if generation.shared is not current.shared:
                generation.shared.close()
            self._close_listeners(bound)
            return {"result": "failed", "reason": reason, "line": 0}
        current.retiring = True
        self.retiring.append(current)
        self._signal_slots(current.slots, signal.SIGTERM)
        self._wait_stopped_accepting(current)
        self.current, self.starting = generation, None
        self.loaded = loaded
        # A listen address the new config dropped: nobody accepts on it any more (the old
        # workers closed their copies when they stopped accepting), so close the
        # master's copy now, or the kernel keeps queueing connections nobody answers.
        keep = {id(s) for s in generation.sockets}
        self._close_listeners([a for a in current.loaded.config.server.listen
                               if a not in config.server.listen and a in self.listeners
                               and id(self.listeners[a]) not in keep])
        return {"result": "ok", "config_hash": loaded.hash, "generation": generation.number}

    def _wait_stopped_accepting(self, generation: Generation) -> None:
        """After SIGTERM to a generation: wait (briefly) until none of its workers still
        accepts, so that once a reload reports success every new connection gets the new
        config."""
        give_up = time.monotonic() + STOP_ACCEPTING_WAIT
        while time.monotonic() < give_up:
            self._reap()
            if not any(slot.pid and generation.shared.accepting(slot.index)
                       for slot in generation.slots):
                return
            time.sleep(0.01)

    def _next_generation(self, loaded: LoadedConfig, tls: ServerTls | None) -> Generation:
        """The new generation's shared state: the running segment when its layout still
        fits and the other half of its worker columns is free, else a new segment that
        inherits the key table and peer health that still apply."""
        assert self.current is not None
        current = self.current
        count = worker_count(loaded)
        layout = layout_for(loaded.config, count)
        base = count if current.slots[0].index == 0 else 0
        columns = set(range(base, base + count))
        busy = {slot.index for g in self.retiring for slot in g.slots
                if g.shared is current.shared and slot.pid}
        same_peers = peer_ids(loaded.config) == peer_ids(current.loaded.config) and all(
            [p.url for p in loaded.config.upstreams[n].peers]
            == [p.url for p in current.loaded.config.upstreams[n].peers]
            for n in loaded.config.upstreams)
        if layout == current.shared.layout and same_peers and not columns & busy:
            shared = current.shared
        else:
            shared = SharedState.create(layout)
            shared.inherit(current.shared, _peer_map(current.loaded, loaded))
            base = 0
        listeners = [self.listeners[a] for a in loaded.config.server.listen]
        return Generation(current.number + 1, loaded, shared, tls, listeners,
                          [WorkerSlot(base + i) for i in range(count)])

    def _retired(self, generation: Generation) -> None:
        """Close what only a finished generation used."""
        in_use = {id(s) for g in self._generations() for s in g.sockets}
        gone = [a for a, s in self.listeners.items() if id(s) not in in_use]
        self._close_listeners(gone)
        if all(g.shared is not generation.shared for g in self._generations()):
            generation.shared.close()

    def _bound_at(self, address: str) -> socket.socket | None:
        """An already bound listener at the same host and (non-zero) port, if any."""
        parsed = split_host_port(address)
        if parsed is None or parsed[1] == 0:
            return None
        for sock in self.listeners.values():
            if sock.getsockname()[:2] == parsed:
                return sock
        return None

    def _close_listeners(self, addresses: list[str]) -> None:
        for address in addresses:
            sock = self.listeners.pop(address, None)
            if sock is not None and all(s is not sock for s in self.listeners.values()):
                sock.close()

    # -- control ----------------------------------------------------------------------------

    def reopen(self) -> None:
        """SIGUSR1 / ctl reopen / rotation: the master and every worker reopen their logs."""
        if self.log is not None:
            self.log.reopen()
        for generation in self._generations():
            self._signal_slots(generation.slots, signal.SIGUSR1)

    def _control(self, command: str) -> dict[str, Any]:
        if command == "status":
            return {"ok": True, **self.status()}
        if command == "reload":
            result = self.reload()
            return {"ok": result["result"] != "failed", **result}
        if command == "reopen":
            self.reopen()
            return {"ok": True}
        self._stop_requested = True
        return {"ok": True, "stopping": True}

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
            for peer, shared_id in zip(upstream.peers, ids[pool], strict=True):
                health = current.shared.health(shared_id)
                down_for = max(0.0, (health.down_until_ns - now_ns) / 1e9)
                peers.append({"pool": pool, "peer": peer.url,
                              "health": "up" if down_for == 0 else "down",
                              "down_for_s": round(down_for, 1), "fails": health.fails,
                              "active": current.shared.active_of(shared_id),
                              # No circuit breaker yet (SPEC §6 "later"); saying
                              # "closed" would claim one that is watching.
                              "circuit": "n/a"})
        tls = current.tls is not None
        return {
            "version": VERSION, "pid": os.getpid(), "config_hash": current.loaded.hash,
            "config_file": current.loaded.filename, "generation": current.number,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "listen": [listener_url(s, tls) for s in current.listeners],
            "workers": workers, "upstreams": peers, "last_reload": self.last_reload,
            "control_socket": self.control.path if self.control else "",
        }

    # -- stopping -------------------------------------------------------------------------------

    def _stop(self, *, graceful: bool) -> None:
        """Stop every worker and the actor. The master's listener copies close first so
        that, once the workers stop accepting, new connections are refused, not queued."""
        self.stopping = True
        sdnotify.stopping()
        self._close_listeners(list(self.listeners))
        if self.control is not None:
            self.control.close()
            self.control = None
        slots = [slot for g in self._generations() for slot in g.slots]
        self._signal_slots(slots, signal.SIGTERM if graceful else signal.SIGQUIT)
        if self.actor_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.actor_pid, signal.SIGTERM)
        shutdown = max((g.loaded.config.server.shutdown_timeout for g in self._generations()),
                       default=0) / 1000
        self._wait_for_exit(slots, shutdown + KILL_GRACE if graceful else KILL_GRACE)
        if any(slot.pid for slot in slots):
            self._signal_slots(slots, signal.SIGKILL)
            self._wait_for_exit(slots, None)
        if self.reload_client is not None:
            self.reload_client.close()
        if self.runtime_dir:
            remove_directory(self.runtime_dir)
        if self.rotator is not None:
            self.rotator.wait(5.0)
        if self.log is not None:
            self.log.close()

    def _wait_for_exit(self, slots: list[WorkerSlot], seconds: float | None) -> None:
        give_up = None if seconds is None else time.monotonic() + seconds
        while any(slot.pid for slot in slots):
            if give_up is not None and time.monotonic() >= give_up:
                return
            self._reap()
            time.sleep(0.02)

    @staticmethod
    def _signal_slots(slots: list[WorkerSlot], sig: int) -> None:
        for slot in slots:
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, sig)


def _peer_map(old: LoadedConfig, new: LoadedConfig) -> dict[int, int]:
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


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def start(loaded: LoadedConfig, source: str | None = None) -> int:
    """``li-httpd start``: run the master in the foreground until stopped."""
    try:
        return Master(loaded, source).run()
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            sys.stderr.write("li-httpd: error: cannot fork workers (resource limit)\n")
            return EXIT_START
        raise
