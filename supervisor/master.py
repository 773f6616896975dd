"""The master process (gunicorn Arbiter style): bind, fork, supervise, stop.

The master never runs trio. Signal handlers only queue the signal number and wake the
main loop through ``signal.set_wakeup_fd``; the synchronous main loop reaps children,
respawns dead workers with backoff, and performs stops. Listening sockets are bound
before any fork and stay open in the master for its whole life, so a respawned worker
serves the same sockets and the kernel's accept queue survives a worker crash.

Crash handling: a worker that dies is respawned; if it died young (within
:data:`YOUNG` seconds of its start) the delay doubles with each recent early death of
its slot (0.1 s up to 5 s). Early deaths are what a crash loop looks like (a worker that
cannot start or dies on its first requests); when :data:`CRASH_LIMIT` of them happen
within :data:`CRASH_WINDOW` seconds the master gives up loudly: it stops everything and
exits with status 2 instead of spinning. A worker that ran for a while and was killed
(OOM killer, an operator) is simply replaced at once.

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
from dataclasses import dataclass, field

from li_httpd.config import VERSION, LoadedConfig
from li_httpd.config.checks import split_host_port
from li_httpd.shm import SharedState, layout_for

from .tls import ServerTls, TlsSetupError, server_tls

EXIT_OK = 0
EXIT_START = 2
CRASH_WINDOW = 30.0
CRASH_LIMIT = 10
YOUNG = 1.0
READY_TIMEOUT = 30.0
KILL_GRACE = 5.0
BACKLOG = 4096


class StartError(Exception):
    """Binding or starting failed; the message is for the operator."""


@dataclass
class WorkerSlot:
    index: int
    pid: int = 0
    started: float = 0.0
    respawn_at: float = 0.0
    crashes: deque[float] = field(default_factory=deque)


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
    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.listeners: list[socket.socket] = []
        self.slots: list[WorkerSlot] = []
        self.pending_signals: deque[int] = deque()
        self.stopping = False
        self.tls: ServerTls | None = None
        self.shared: SharedState | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)

    # -- entry ------------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.listeners = [bind_listener(a) for a in self.loaded.config.server.listen]
        except StartError as exc:
            self._say(f"error: {exc}")
            return EXIT_START
        try:
            self.tls = server_tls(self.loaded.config)
        except TlsSetupError as exc:
            self._say(f"error: {exc}")
            return EXIT_START
        if self.tls is not None:
            self._say(self.tls.note)
        self._install_signals()
        count = worker_count(self.loaded)
        self.slots = [WorkerSlot(i) for i in range(count)]
        self.shared = SharedState.create(layout_for(self.loaded.config, count))
        try:
            ready = self._start_workers()
        except StartError as exc:
            self._say(f"error: {exc}")
            self._stop(graceful=False)
            return EXIT_START
        if not ready:
            self._say("error: workers did not become ready")
            self._stop(graceful=False)
            return EXIT_START
        self._banner()
        return self._main_loop()

    def _banner(self) -> None:
        tls = self.loaded.config.server.tls.mode != "off"
        urls = " ".join(listener_url(s, tls) for s in self.listeners)
        self._say(f"li-httpd {VERSION} config={self.loaded.hash} listen={urls} "
                  f"workers={len(self.slots)} pid={os.getpid()}")

    @staticmethod
    def _say(line: str) -> None:
        sys.stderr.write(f"li-httpd: {line}\n")
        sys.stderr.flush()

    # -- signals --------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                       signal.SIGUSR1, signal.SIGCHLD):
            signal.signal(number, self._queue_signal)

    def _queue_signal(self, number: int, _frame: object) -> None:
        self.pending_signals.append(number)

    # -- workers ------------------------------------------------------------------------------

    def _start_workers(self) -> bool:
        ready_r, ready_w = os.pipe()
        try:
            for slot in self.slots:
                self._spawn(slot, ready_w)
            os.close(ready_w)
            ready_w = -1
            return self._await_ready(ready_r, len(self.slots))
        finally:
            os.close(ready_r)
            if ready_w != -1:
                os.close(ready_w)

    def _await_ready(self, ready_r: int, count: int) -> bool:
        got = 0
        give_up = time.monotonic() + READY_TIMEOUT
        while got < count:
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
            if any(slot.pid == 0 for slot in self.slots):
                return False
        return True

    def _spawn(self, slot: WorkerSlot, ready_w: int | None = None) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                for number in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                               signal.SIGUSR1, signal.SIGCHLD):
                    signal.signal(number, signal.SIG_DFL)
                os.close(self._wake_r)
                os.close(self._wake_w)
                from li_httpd.workers.worker import run_worker

                code = run_worker(self.loaded, self.listeners, ready_w,
                                  self.tls.context if self.tls else None, self.shared,
                                  slot.index)
            except BaseException as exc:  # report, then leave the child
                sys.stderr.write(f"li-httpd worker {os.getpid()}: fatal: {exc!r}\n")
            finally:
                sys.stderr.flush()
                os._exit(code)
        slot.pid = pid
        slot.started = time.monotonic()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for slot in self.slots:
                if slot.pid == pid:
                    self._worker_exited(slot, status)

    def _worker_exited(self, slot: WorkerSlot, status: int) -> None:
        slot.pid = 0
        if self.shared is not None:
            # Streams and active requests the dead worker held are gone with it.
            self.shared.clear_worker(slot.index)
        if self.stopping:
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
                  f"restarting in {delay:.1f}s")

    def _crash_loop(self) -> bool:
        return sum(len(slot.crashes) for slot in self.slots) >= CRASH_LIMIT

    # -- main loop ------------------------------------------------------------------------------

    def _main_loop(self) -> int:
        while True:
            self._sleep(1.0)
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
            self._reap()
            if self._crash_loop():
                self._say(f"error: workers crashed {CRASH_LIMIT} times within "
                          f"{CRASH_WINDOW:.0f}s; giving up")
                self._stop(graceful=False)
                return EXIT_START
            now = time.monotonic()
            for slot in self.slots:
                if slot.pid == 0 and now >= slot.respawn_at:
                    self._spawn(slot)

    def _sleep(self, seconds: float) -> None:
        if self.pending_signals:
            return
        timeout = seconds
        waiting = [s.respawn_at for s in self.slots if s.pid == 0]
        if waiting:
            timeout = max(0.0, min(timeout, min(waiting) - time.monotonic()))
        try:
            readable, _, _ = select.select([self._wake_r], [], [], timeout)
        except InterruptedError:
            return
        if readable:
            try:
                while os.read(self._wake_r, 512):
                    pass
            except BlockingIOError:
                pass

    def _stop(self, *, graceful: bool) -> None:
        """Stop every worker. The master's listener copies close first so that, once
        the workers stop accepting, new connections are refused rather than queued."""
        self.stopping = True
        for sock in self.listeners:
            sock.close()
        sig = signal.SIGTERM if graceful else signal.SIGQUIT
        self._signal_workers(sig)
        grace = self.loaded.config.server.shutdown_timeout / 1000 + KILL_GRACE \
            if graceful else KILL_GRACE
        give_up = time.monotonic() + grace
        while any(slot.pid for slot in self.slots) and time.monotonic() < give_up:
            self._reap()
            time.sleep(0.05)
        if any(slot.pid for slot in self.slots):
            self._signal_workers(signal.SIGKILL)
            while any(slot.pid for slot in self.slots):
                self._reap()
                time.sleep(0.02)

    def _signal_workers(self, sig: int) -> None:
        for slot in self.slots:
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, sig)


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def start(loaded: LoadedConfig) -> int:
    """``li-httpd start``: run the master in the foreground until stopped."""
    try:
        return Master(loaded).run()
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            sys.stderr.write("li-httpd: error: cannot fork workers (resource limit)\n")
            return EXIT_START
        raise
