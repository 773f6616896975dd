"""The master's supervision of the health actor (actors/health.py); never waits.
:class:`SupervisedActor` is the part the ACME actor's supervision (acme.py) shares.

One actor runs for the current generation when its config has a pool with a
``health_check``. The master's main loop calls :meth:`HealthActor.maintain` every turn:
it starts the actor when due (at once for a new generation, after a backoff when the
last one died), and when a reload made another generation current it kills the running
actor and starts the new generation's only once the old one has been reaped, so the
segment never has two writers. The actor's transition messages arrive on the inbox
socket the loop polls; :meth:`HealthActor.read` logs one line each.

Owns: the actor's pid, generation, restart backoff and inbox. Forking is the Forker's
(generations.py), reaping the main loop's.

May import: li_httpd.actors.health, li_httpd.ops.log, li_httpd.supervisor.generations.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any

from li_httpd.actors.health import HealthInbox, describe, next_delay
from li_httpd.ops.log.records import Level

from .generations import Forker, Generation

Say = Callable[[str, Level], None]


def _sigkill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def wanted(generation: Generation | None) -> bool:
    return generation is not None and any(
        pool.health_check is not None for pool in generation.loaded.config.upstreams.values())


class SupervisedActor:
    """One actor process per current generation, restarted with backoff when it dies;
    its messages arrive on a PULL inbox. Subclasses name it and say when it is wanted,
    how it is forked and what its messages mean."""

    name = "actor"

    def __init__(self, forker: Forker, runtime_dir: str, say: Say,
                 kill: Callable[[int], None] = _sigkill) -> None:
        self.forker = forker
        self.kill = kill
        self.endpoint = f"ipc://{runtime_dir}/{self.name}.sock"
        self.say = say
        self.inbox: HealthInbox | None = None
        self.pid = 0
        self.generation = -1
        """The generation the running actor probes (-1: none)."""
        self.started = 0.0
        self.respawn_at = 0.0
        self.delay = 0.0
        self.replacing = False
        """The running actor was killed to make way for a new generation's."""
        self.due = False
        """An actor is to be started at ``respawn_at`` (the main loop wakes for it)."""

    def maintain(self, generation: Generation | None, now: float) -> None:
        """Start, restart or replace the actor so it probes ``generation`` (the current
        one), or stop it when that generation has nothing to probe."""
        want = self.wanted(generation)
        if self.pid:
            if (not want or generation is None or generation.number != self.generation) \
                    and not self.replacing:
                self.replacing = True
                self._kill()
            return
        if not want or generation is None:
            self.due = False
            return
        if now < self.respawn_at and (generation.number == self.generation
                                      or self.respawn_at == float("inf")):  # stopped
            # (The backoff is for one config's crash loop: a reload's actor starts now.)
            self.due = True
            return
        self.due = False
        if self.inbox is None:
            self.inbox = HealthInbox(self.endpoint)
        try:
            self.pid = self.fork(generation)
        except OSError as exc:  # fork() failed (EAGAIN, ENOMEM): try again later
            self.delay = next_delay(self.delay, 0.0)
            self.respawn_at = now + self.delay
            self.due = True
            self.generation = generation.number  # shown as restarting
            self.say(f"{self.name} actor could not start ({exc}); retrying in "
                     f"{self.delay:.1f}s", "warn")
            return
        self.generation = generation.number
        self.started = now

    def reaped(self, pid: int, description: str, now: float, stopping: bool) -> bool:
        """Whether ``pid`` was the actor (its exit then schedules the restart)."""
        if pid != self.pid or pid == 0:
            return False
        self.pid = 0
        if self.replacing:  # asked to go: the next generation's starts at once
            self.replacing = False
            self.generation = -1
            self.respawn_at = now
            self.due = True
            return True
        self.delay = next_delay(self.delay, now - self.started)
        self.respawn_at = now + self.delay
        self.due = not stopping
        if not stopping:
            self.say(f"{self.name} actor exited ({description}); restarting in "
                     f"{self.delay:.1f}s", "warn")
        return True

    def wake_in(self, now: float) -> float | None:
        """Seconds until a restart is due (None: nothing due, so no wakeup needed)."""
        return max(0.0, self.respawn_at - now) if self.due and not self.pid else None

    def wanted(self, generation: Generation | None) -> bool:
        raise NotImplementedError

    def fork(self, generation: Generation) -> int:
        """Fork the actor for ``generation``; returns its pid (OSError: fork failed)."""
        raise NotImplementedError

    def handle(self, message: dict[str, Any]) -> None:
        """One message from the actor."""

    def read(self) -> None:
        """Handle the messages the actors sent."""
        if self.inbox is None:
            return
        for message in self.inbox.drain():
            self.handle(message)

    def status(self) -> dict[str, Any]:
        state = ("running" if self.pid else "restarting") if self.generation >= 0 else "off"
        return {"name": self.name, "pid": self.pid, "state": state,
                "generation": self.generation}

    def _kill(self) -> None:
        if self.pid:
            self.kill(self.pid)

    def stop(self) -> None:
        """The master is stopping: the actor holds nothing to drain."""
        self.respawn_at = float("inf")
        self.due = False
        self._kill()

    def close(self) -> None:
        if self.inbox is not None:
            self.inbox.close()
            self.inbox = None


class HealthActor(SupervisedActor):
    name = "health"

    def wanted(self, generation: Generation | None) -> bool:
        return wanted(generation)

    def fork(self, generation: Generation) -> int:
        return self.forker.start_health_actor(self.endpoint, generation)

    def handle(self, message: dict[str, Any]) -> None:
        """Log one transition."""
        line = describe(message)
        if line is not None:
            self.say(line, "warn" if message.get("to") in ("not_ready", "not_live")
                     else "info")
