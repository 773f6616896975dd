"""One reload, as a state machine the master's main loop steps; it never waits itself.

Theory of operation. A reload (SIGHUP or ``ctl reload``) goes through these phases::

    ASKING_ACTOR ──verdict──▶ VALIDATING ──▶ STARTING ──forked──▶ WAITING_READY
         │                        │              │                     │ all ready
         ▼ timeout, actor died    ▼ invalid,     ▼ bind/TLS/fork       ▼
       failed                     unchanged      failed              RETIRING_OLD ──▶ ok
                                                                  (old stopped accepting)

- ASKING_ACTOR: the request is with the reload actor (actors/reload.py), which reads and
  validates the file. The main loop polls the actor's socket; the phase fails when the
  actor exits or does not answer within :data:`ACTOR_TIMEOUT` (it is then killed and
  restarted by the main loop).
- VALIDATING: the actor's verdict is taken as is: the master runs the very
  :class:`LoadedConfig` the actor validated (actors/reload.py says why it does not parse
  or validate again). An equal config ends the reload as "unchanged", unless the TLS
  certificate or key files changed: the new pair is validated and the running workers
  switch to it for new handshakes ("ok", same generation; a pair that fails to load
  fails the reload and the old certificate keeps serving; supervisor/tls.py).
- STARTING: new listen addresses are bound, the TLS context and the master's new log
  files are prepared, the next generation is forked. Nothing running is touched yet.
- WAITING_READY: the new workers report ready through a pipe the main loop polls. If one
  dies first, the pipe closes or :data:`READY_TIMEOUT` passes, the new generation is
  killed and handed to the retiring list, what STARTING added is closed: "failed".
- A ticket-key rotation (``ctl rotate-tickets`` or ``ticket_rotation`` due) is a reload
  that skips the actor and the comparison: it starts at STARTING with the running
  config, so the new generation gets a fresh listener context, hence new session ticket
  keys (supervisor/tls.py), and the old one drains as on any reload.
- RETIRING_OLD: every new worker accepts; the new generation becomes current and the old
  one gets SIGTERM (it stops accepting and drains). The reload reports "ok" once no old
  worker accepts any more (at most :data:`STOP_ACCEPTING_WAIT`), so every connection
  made after the answer meets the new config; listeners the new config dropped close.

Each ``_phase_*`` method either moves to the next phase (and :meth:`Reload.step` runs
that one at once) or returns while it waits; :meth:`Reload.wake_in` tells the main loop
how long it may sleep. A stop interrupts a reload at any phase (:meth:`Reload.abort`),
so a signal never waits for a reload to finish.

Owns: the phases, the reload's deadlines and the outcome record. Reaping, forking and
the listener table belong to the master (through :class:`Host`), generations.py and
listeners.py.

May import: li_httpd.config, li_httpd.ops.log, li_httpd.actors, li_httpd.supervisor.generations,
li_httpd.supervisor.listeners, li_httpd.supervisor.tls.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
import socket
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from li_httpd.actors.reload import ReloadClient, Validated
from li_httpd.config import LoadedConfig
from li_httpd.ops.log.files import Rotator
from li_httpd.ops.log.master import MasterLog
from li_httpd.ops.log.records import Level

from .generations import Generation, ReadyPipe, next_generation
from .listeners import Listeners, StartError, acme_key, metrics_key
from .tls import TlsSetupError, server_tls

ACTOR_TIMEOUT = 30.0
READY_TIMEOUT = 30.0
STOP_ACCEPTING_WAIT = 5.0
ACCEPTING_POLL = 0.01
"""How often RETIRING_OLD looks at the old workers' accepting flags (shared memory)."""


class Phase(enum.Enum):
    ASKING_ACTOR = "asking actor"
    VALIDATING = "validating"
    STARTING = "starting new generation"
    WAITING_READY = "waiting ready"
    RETIRING_OLD = "retiring old"
    DONE = "done"


ROTATED = "session tickets rotated"
"""The outcome's detail when a rotation took effect."""

ReloadResult = Literal["ok", "unchanged", "failed"]
LastResult = Literal["none", "ok", "unchanged", "failed"]
"""What ``ctl status`` shows as the last reload's result ("none": no reload yet)."""


@dataclass(frozen=True)
class Outcome:
    result: ReloadResult
    reason: str = ""
    line: int = 0
    errors: tuple[str, ...] = ()
    config_hash: str = ""
    generation: int = 0

    def reply(self) -> dict[str, Any]:
        """The outcome as the control protocol's fields."""
        if self.result == "failed":
            failed: dict[str, Any] = {"result": "failed", "reason": self.reason,
                                      "line": self.line}
            if self.errors:
                failed["errors"] = list(self.errors)
            return failed
        if self.result == "unchanged":
            return {"result": "unchanged", "config_hash": self.config_hash}
        ok: dict[str, Any] = {"result": "ok", "config_hash": self.config_hash,
                              "generation": self.generation}
        if self.reason:
            ok["detail"] = self.reason  # e.g. "certificate swapped" (same config)
        return ok


def failed(reason: str, line: int = 0, errors: tuple[str, ...] = ()) -> Outcome:
    return Outcome("failed", reason, line, errors)


class Host(Protocol):
    """What a reload needs from the master."""

    listeners: Listeners
    current: Generation | None
    starting: Generation | None
    retiring: list[Generation]
    actor_pid: int

    def say(self, line: str, level: Level = "info") -> None: ...
    def start_actor(self) -> None: ...
    def prepare_logs(self, loaded: LoadedConfig) -> tuple[MasterLog, Rotator]: ...
    def use_logs(self, log: MasterLog, rotator: Rotator) -> None: ...
    def metrics_listener(self, loaded: LoadedConfig) -> socket.socket | None: ...
    def acme_listener(self, loaded: LoadedConfig) -> socket.socket | None: ...
    def start_workers(self, generation: Generation) -> ReadyPipe: ...


class Reload:
    """One reload in progress. Create it, then call :meth:`step` from the main loop after
    every wakeup until :attr:`outcome` is set."""

    def __init__(self, host: Host, client: ReloadClient, source: str | None,
                 now: float, *, rotate: LoadedConfig | None = None) -> None:
        self.host = host
        self.client = client
        self.source = source
        self.phase = Phase.ASKING_ACTOR
        self.outcome: Outcome | None = None
        self.deadline = now + ACTOR_TIMEOUT
        self.actor_pid = 0
        self.loaded: LoadedConfig | None = None
        self.logs: tuple[MasterLog, Rotator] | None = None
        self.bound: list[str] = []
        """Addresses this reload bound: a failure closes exactly these."""
        self.new: Generation | None = None
        self.old: Generation | None = None
        self.ready: ReadyPipe | None = None
        self.rotation = rotate is not None
        """A ticket-key rotation: the running config again, in a new generation."""
        if rotate is not None:
            self.loaded = rotate
            self.phase = Phase.STARTING
            return
        if host.actor_pid == 0:  # died since the loop last looked: do not ask a ghost
            host.start_actor()
        self.actor_pid = host.actor_pid
        client.ask(source)

    # -- what the main loop watches --------------------------------------------------------

    def watched_fds(self) -> list[int]:
        """Plain descriptors to poll while the reload waits (the ready pipe)."""
        return [self.ready.fileno()] if self.ready is not None and self.ready.fd != -1 else []

    @property
    def asking(self) -> bool:
        """Whether the actor's socket should be polled."""
        return self.phase is Phase.ASKING_ACTOR

    def wake_in(self, now: float) -> float:
        """How long the main loop may sleep before the next :meth:`step` is due."""
        if self.phase is Phase.RETIRING_OLD:
            return ACCEPTING_POLL
        return max(0.0, self.deadline - now)

    # -- stepping ------------------------------------------------------------------------------

    def step(self, now: float) -> Outcome | None:
        """Advance through every phase that need not wait; the outcome once done."""
        while self.outcome is None:
            before = self.phase
            handler = {Phase.ASKING_ACTOR: self._phase_asking,
                       Phase.VALIDATING: self._phase_validating,
                       Phase.STARTING: self._phase_starting,
                       Phase.WAITING_READY: self._phase_waiting_ready,
                       Phase.RETIRING_OLD: self._phase_retiring_old}[self.phase]
            handler(now)
            if self.phase is before and self.outcome is None:
                return None  # waiting
        return self.outcome

    def _finish(self, outcome: Outcome) -> None:
        self.phase = Phase.DONE
        self.outcome = outcome
        if self.ready is not None:
            self.ready.close()
        if outcome.result != "ok" and self.logs is not None:
            self.logs[0].close()  # the master's logs follow the config only if it took effect
            self.logs = None

    def _phase_asking(self, now: float) -> None:
        verdict = self.client.verdict()
        if verdict is None:
            if self.host.actor_pid != self.actor_pid:
                self.client.reset()
                self._finish(failed("the reload actor exited before answering"))
            elif now >= self.deadline:
                self.client.reset()
                if self.host.actor_pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.host.actor_pid, signal.SIGKILL)
                self._finish(failed("the reload actor did not answer"))
            return
        if not isinstance(verdict, Validated):
            self._finish(failed(verdict.reason, verdict.line, verdict.errors))
            return
        self.loaded = verdict.loaded
        self.phase = Phase.VALIDATING

    def _phase_validating(self, now: float) -> None:
        loaded, current = self.loaded, self.host.current
        assert loaded is not None
        if current is None:
            self._finish(failed("not running"))
            return
        if loaded.hash == current.loaded.hash:
            self._finish(self._swap_certificate(loaded, current))
            return
        self.phase = Phase.STARTING

    def _swap_certificate(self, loaded: LoadedConfig, current: Generation) -> Outcome:
        """Same config: the certificate files may still have changed. The running workers
        switch to a new pair for new handshakes (their established connections keep
        theirs), so no new generation is needed and no idle connection is closed."""
        if current.tls is None:
            return Outcome("unchanged", config_hash=loaded.hash)
        try:
            swapped = current.tls.refresh(loaded.config)
        except TlsSetupError as exc:
            return failed(f"new certificate refused, the current one keeps serving: {exc}")
        if not swapped:
            return Outcome("unchanged", config_hash=loaded.hash)
        current.shared.publish_cert_not_after(current.tls.not_after_s)
        self.host.say(f"certificate swapped: {current.tls.note}")
        return Outcome("ok", "certificate swapped", config_hash=loaded.hash,
                       generation=current.number)

    def _phase_starting(self, now: float) -> None:
        host, loaded, current = self.host, self.loaded, self.host.current
        assert loaded is not None and current is not None
        if loaded.config.log != current.loaded.config.log:
            try:
                self.logs = host.prepare_logs(loaded)
            except OSError as exc:
                self._finish(failed(f"cannot open the log files: {exc}"))
                return
        try:
            for address in loaded.config.server.listen:
                if host.listeners.ensure(address):
                    self.bound.append(address)
            tls = server_tls(loaded.config)
            metrics = loaded.config.metrics
            if metrics.enabled and metrics_key(metrics.listen) not in host.listeners:
                self.bound.append(metrics_key(metrics.listen))
            metrics_listener = host.metrics_listener(loaded)
            acme = loaded.config.server.tls
            if acme.mode == "lets_encrypt" \
                    and acme_key(acme.lets_encrypt.http01_bind) not in host.listeners:
                self.bound.append(acme_key(acme.lets_encrypt.http01_bind))
            acme_listener = host.acme_listener(loaded)
        except (StartError, TlsSetupError) as exc:
            self._fail_start(str(exc))
            return
        try:
            generation = next_generation(current, host.retiring, loaded, tls, host.listeners)
        except OSError as exc:  # e.g. out of descriptors: the running generation stays
            self._fail_start(f"cannot prepare the new generation: {exc}")
            return
        generation.metrics_listener = metrics_listener
        generation.acme_listener = acme_listener
        self.new = host.starting = generation
        try:
            self.ready = host.start_workers(generation)
        except (StartError, OSError) as exc:  # pipe() or fork() failed
            self._give_up_new(f"cannot start the new workers: {exc}")
            return
        self.deadline = now + READY_TIMEOUT
        self.phase = Phase.WAITING_READY

    def _phase_waiting_ready(self, now: float) -> None:
        assert self.ready is not None and self.new is not None
        state = self.ready.poll()
        if state == "waiting" and any(slot.pid == 0 for slot in self.new.slots):
            state = "failed"  # a new worker died before reporting ready
        if state == "waiting" and now >= self.deadline:
            state = "failed"
        if state == "failed":
            self._give_up_new("the new workers did not become ready")
            return
        if state == "waiting":
            return
        host, old, new = self.host, self.host.current, self.new
        assert old is not None and self.loaded is not None
        old.retiring = True
        host.retiring.append(old)
        old.signal(signal.SIGTERM)
        host.current, host.starting = new, None
        self.old = old
        if self.logs is not None:
            host.use_logs(*self.logs)
            self.logs = None
        self.ready.close()
        self.deadline = now + STOP_ACCEPTING_WAIT
        self.phase = Phase.RETIRING_OLD

    def _phase_retiring_old(self, now: float) -> None:
        old, new, loaded = self.old, self.new, self.loaded
        assert old is not None and new is not None and loaded is not None
        if old.accepting() and now < self.deadline:
            return
        # A listen address the new config dropped: nobody accepts on it any more (the old
        # workers closed their copies when they stopped accepting), so close the
        # master's copy now, or the kernel keeps queueing connections nobody answers.
        keep = {id(s) for s in new.sockets}
        listeners = self.host.listeners
        listeners.close([a for a in old.loaded.config.server.listen
                         if a not in loaded.config.server.listen and a in listeners
                         and id(listeners[a]) not in keep])
        self._finish(Outcome("ok", ROTATED if self.rotation else "",
                             config_hash=loaded.hash, generation=new.number))

    # -- failure and interruption ---------------------------------------------------------------

    def _fail_start(self, reason: str) -> None:
        self.host.listeners.close(self.bound)
        self._finish(failed(reason))

    def _give_up_new(self, reason: str) -> None:
        """Kill the new generation and hand it to the retiring list: its workers' exits
        are not crashes, the main loop reaps them and clears their columns, and the
        segment closes once none is left. The running generation is untouched."""
        new = self.new
        assert new is not None
        new.retiring = True
        new.signal(signal.SIGKILL)
        self.host.starting = None
        self.host.retiring.append(new)
        self._fail_start(reason)

    def abort(self, why: str) -> Outcome:
        """The master is stopping: end the reload now. A new generation still starting
        stays registered (as the master's ``starting``) so the stop signals and reaps it
        with every other child."""
        if self.outcome is not None:
            return self.outcome
        if self.phase is Phase.ASKING_ACTOR:
            self.client.reset()
        if self.phase is Phase.RETIRING_OLD:  # the switch was made: it took effect
            assert self.loaded is not None and self.new is not None
            self._finish(Outcome("ok", ROTATED if self.rotation else "",
                                 config_hash=self.loaded.hash, generation=self.new.number))
        else:
            self._finish(failed(f"reload interrupted: {why}"))
        assert self.outcome is not None
        return self.outcome
