"""The master's supervision of the health actor (supervisor/health.py) with a fake
forker: when it starts, restarts (with backoff) and is replaced, and that a new
generation's actor never starts before the old one is reaped (one writer)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import zmq
from li_httpd.config import load_text
from li_httpd.supervisor.health import HealthActor


def generation(number: int, *, probed: bool = True) -> Any:
    check = '[upstreams.m.health_check]\nready = "/ready"\n' if probed else ""
    loaded = load_text(f'[server]\nlisten = "127.0.0.1:0"\nprofile = "dev"\n'
                       f'[upstreams.m]\npeers = ["http://127.0.0.1:9"]\n{check}'
                       f'[routes]\n"/" = "proxy:m"\n', "gw.toml")
    return SimpleNamespace(number=number, loaded=loaded)


class Forker:
    def __init__(self) -> None:
        self.started: list[tuple[int, int]] = []  # (pid, generation)

    def start_health_actor(self, endpoint: str, generation: Any) -> int:
        pid = 1000 + len(self.started)
        self.started.append((pid, generation.number))
        return pid


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.forker = Forker()
        self.killed: list[int] = []
        self.said: list[tuple[str, str]] = []
        self.actor = HealthActor(self.forker, str(tmp_path),  # type: ignore[arg-type]
                                 lambda line, level: self.said.append((level, line)),
                                 self.killed.append)


def test_starts_only_when_a_pool_is_probed(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    try:
        h.actor.maintain(generation(0, probed=False), 0.0)
        assert h.forker.started == [] and h.actor.status()["state"] == "off"
        assert h.actor.wake_in(5.0) is None  # nothing to start: the master sleeps
        h.actor.maintain(generation(0), 0.0)
        assert h.forker.started == [(1000, 0)]
        assert h.actor.status() == {"name": "health", "pid": 1000, "state": "running",
                                    "generation": 0}
        h.actor.maintain(generation(0), 1.0)  # nothing to do
        assert h.forker.started == [(1000, 0)] and h.killed == []
        assert h.actor.wake_in(1.0) is None
    finally:
        h.actor.close()


def test_a_dead_actor_restarts_after_a_growing_backoff(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    gen = generation(0)
    try:
        h.actor.maintain(gen, 0.0)
        assert h.actor.reaped(1000, "killed by SIGKILL", 100.0, stopping=False)
        assert h.said == [("warn", "health actor exited (killed by SIGKILL); "
                                   "restarting in 0.5s")]
        assert h.actor.status()["state"] == "restarting"
        assert h.actor.wake_in(100.0) == 0.5
        h.actor.maintain(gen, 100.4)
        assert len(h.forker.started) == 1  # not yet
        h.actor.maintain(gen, 100.5)
        assert h.forker.started[-1] == (1001, 0)
        # Dying again soon after starting doubles the delay.
        assert h.actor.reaped(1001, "exit status 1", 101.0, stopping=False)
        assert h.actor.respawn_at == 102.0
        h.actor.stop()  # the master stops: no restart, no wakeup for one
        assert h.actor.wake_in(101.5) is None
        assert not h.actor.reaped(4242, "exit status 0", 101.0, stopping=False)
    finally:
        h.actor.close()


def test_a_new_generation_gets_a_new_actor_after_the_old_one_is_reaped(
        tmp_path: Path) -> None:
    h = Harness(tmp_path)
    try:
        h.actor.maintain(generation(0), 0.0)
        h.actor.maintain(generation(1), 5.0)
        assert h.killed == [1000] and h.forker.started == [(1000, 0)]
        h.actor.maintain(generation(1), 5.1)  # killed once, and nothing forked meanwhile
        assert h.killed == [1000] and h.forker.started == [(1000, 0)]
        assert h.actor.reaped(1000, "killed by SIGKILL", 5.2, stopping=False)
        assert h.said == []  # asked to go: not a crash
        h.actor.maintain(generation(1), 5.2)  # at once, no backoff
        assert h.forker.started == [(1000, 0), (1001, 1)]
        # A reload that drops every health check stops the actor for good.
        h.actor.maintain(generation(2, probed=False), 6.0)
        assert h.killed == [1000, 1001]
        h.actor.reaped(1001, "killed by SIGKILL", 6.1, stopping=False)
        h.actor.maintain(generation(2, probed=False), 7.0)
        assert len(h.forker.started) == 2 and h.actor.status()["state"] == "off"
        assert h.actor.wake_in(7.0) is None
    finally:
        h.actor.close()


def test_transitions_become_log_lines(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    try:
        h.actor.maintain(generation(0), 0.0)
        context = zmq.Context()
        push = context.socket(zmq.PUSH)
        push.connect(h.actor.endpoint)
        base = {"generation": 0, "pool": "m", "peer": "http://127.0.0.1:9", "check": "ready"}
        push.send(orjson.dumps({**base, "from": "ready", "to": "not_ready",
                                "reason": "status 503"}))
        push.send(b"not json")
        push.send(orjson.dumps({**base, "check": "live", "from": "unknown", "to": "live",
                                "reason": "status 200"}))
        push.send(orjson.dumps({"pool": 1}))
        assert h.actor.inbox is not None
        assert h.actor.inbox.socket.poll(5000)
        for _ in range(50):
            h.actor.read()
            if len(h.said) == 2:
                break
            h.actor.inbox.socket.poll(100)
        push.close(0)
        context.term()
        assert h.said == [
            ("warn", "health: upstream peer http://127.0.0.1:9 (pool m) ready -> not_ready "
                     "(status 503)"),
            ("info", "health: upstream peer http://127.0.0.1:9 (pool m) unknown -> live "
                     "(status 200)")]
    finally:
        h.actor.close()


def test_a_failed_fork_is_retried_after_a_backoff_not_raised(tmp_path: Path) -> None:
    """fork() can fail (EAGAIN under a process limit): the master's loop must go on and
    try again later, as after an actor that died at once."""
    h = Harness(tmp_path)
    gen = generation(0)
    calls = []

    def failing(endpoint: str, generation: Any) -> int:
        calls.append(generation.number)
        raise BlockingIOError(11, "Resource temporarily unavailable")

    real = h.forker.start_health_actor
    h.forker.start_health_actor = failing  # type: ignore[method-assign]
    try:
        h.actor.maintain(gen, 0.0)
        assert calls == [0] and h.actor.pid == 0
        assert h.actor.status()["state"] == "restarting"
        assert h.said and h.said[-1][0] == "warn" and "health actor" in h.said[-1][1]
        delay = h.actor.wake_in(0.0)
        assert delay is not None and delay > 0
        h.actor.maintain(gen, 0.0)  # not yet due
        assert calls == [0]
        h.forker.start_health_actor = real  # type: ignore[method-assign]
        h.actor.maintain(gen, 100.0)
        assert h.actor.pid == 1000 and h.actor.status()["state"] == "running"
    finally:
        h.actor.close()


def test_a_reload_during_the_backoff_starts_the_new_generations_actor_at_once(
        tmp_path: Path) -> None:
    """The backoff guards against a crash loop of one config; a reload brings another
    (its new peers are unknown, so out of rotation, until probed)."""
    h = Harness(tmp_path)
    try:
        h.actor.maintain(generation(0), 0.0)
        for pid, now in ((1000, 1.0), (1001, 2.0), (1002, 3.0)):
            h.actor.maintain(generation(0), h.actor.respawn_at)
            assert h.actor.reaped(pid, "exit status 1", now, stopping=False)
        assert h.actor.respawn_at - 3.0 >= 2.0  # a long backoff by now
        started = len(h.forker.started)
        h.actor.maintain(generation(1), 3.1)
        assert len(h.forker.started) == started + 1 and h.forker.started[-1][1] == 1
        # ... but its own crash is backed off again.
        assert h.actor.reaped(h.actor.pid, "exit status 1", 3.2, stopping=False)
        h.actor.maintain(generation(1), 3.3)
        assert len(h.forker.started) == started + 1
        h.actor.stop()  # the master stops: not even a new generation starts one
        h.actor.maintain(generation(2), 4.0)
        assert len(h.forker.started) == started + 1
    finally:
        h.actor.close()
