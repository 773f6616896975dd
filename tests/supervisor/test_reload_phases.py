"""The reload state machine (supervisor/reload.py) stepped by hand, with a virtual
``now``: a scripted actor client, a host that records what the master would do, and
``sleep`` processes standing in for workers (so signals land somewhere real).

No master, no fork, no wall-clock waits: each test drives the phases the way the main
loop does, one ``step(now)`` per wakeup."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from li_httpd.actors.reload import Rejected, Validated, Verdict
from li_httpd.config import LoadedConfig, load_text
from li_httpd.shm import SharedState, layout_for
from li_httpd.supervisor.generations import Generation, ReadyPipe, WorkerSlot
from li_httpd.supervisor.listeners import Listeners
from li_httpd.supervisor.reload import ACTOR_TIMEOUT, READY_TIMEOUT, ROTATED, Phase, Reload

BASE = '[server]\nlisten = "127.0.0.1:0"\nprofile = "dev"\nworkers = 2\n'
V1 = BASE + '[routes]\n"GET /health" = "static:healthcheck"\n'
V2 = V1 + '"GET /h2" = "static:healthcheck"\n'
NOW = 100.0


class ScriptedClient:
    def __init__(self) -> None:
        self.asked: list[str | None] = []
        self.answer: Verdict | None = None
        self.resets = 0

    def ask(self, path: str | None) -> None:
        self.asked.append(path)

    def verdict(self) -> Verdict | None:
        return self.answer

    def reset(self) -> None:
        self.resets += 1


class RecordingHost:
    def __init__(self, current: Generation, sleepers: list[subprocess.Popen[bytes]]) -> None:
        self.listeners = Listeners()
        self.current: Generation | None = current
        self.starting: Generation | None = None
        self.retiring: list[Generation] = []
        self.actor = subprocess.Popen(["sleep", "60"])
        sleepers.append(self.actor)
        self.actor_pid = self.actor.pid
        self.sleepers = sleepers
        self.lines: list[str] = []
        self.ready_w = -1

    def say(self, line: str, level: Any = "info") -> None:
        self.lines.append(line)

    def start_actor(self) -> None:
        raise AssertionError("the actor is alive")

    def prepare_logs(self, loaded: LoadedConfig) -> Any:
        raise AssertionError("the log config did not change")

    def use_logs(self, log: Any, rotator: Any) -> None:
        raise AssertionError("the log config did not change")

    def metrics_listener(self, loaded: LoadedConfig) -> socket.socket | None:
        return None

    def acme_listener(self, loaded: LoadedConfig) -> socket.socket | None:
        return None

    def start_workers(self, generation: Generation) -> ReadyPipe:
        for slot in generation.slots:
            worker = subprocess.Popen(["sleep", "60"])
            self.sleepers.append(worker)
            slot.pid = worker.pid
        ready_r, self.ready_w = os.pipe()
        return ReadyPipe(ready_r, len(generation.slots))


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def _setup(sleepers: list[subprocess.Popen[bytes]]) -> tuple[RecordingHost, ScriptedClient]:
    loaded = load_text(V1, "gw.toml")
    current = Generation(0, loaded, SharedState.create(layout_for(loaded.config, 2)), None,
                         [], [WorkerSlot(0), WorkerSlot(1)])  # pid 0: nobody accepts
    host = RecordingHost(current, sleepers)
    host.listeners.bind("127.0.0.1:0")
    return host, ScriptedClient()


def test_a_valid_config_goes_through_every_phase(sleepers) -> None:
    host, client = _setup(sleepers)
    old = host.current
    reload = Reload(host, client, "gw.toml", NOW)  # type: ignore[arg-type]
    assert client.asked == ["gw.toml"] and reload.phase is Phase.ASKING_ACTOR
    assert reload.step(NOW + 1) is None and reload.phase is Phase.ASKING_ACTOR
    client.answer = Validated(load_text(V2, "gw.toml"), ())
    assert reload.step(NOW + 2) is None
    assert reload.phase is Phase.WAITING_READY and host.starting is not None
    os.write(host.ready_w, b"R")
    assert reload.step(NOW + 3) is None and reload.phase is Phase.WAITING_READY
    os.write(host.ready_w, b"R")
    outcome = reload.step(NOW + 4)  # every old worker already stopped accepting
    assert outcome is not None and outcome.result == "ok" and outcome.generation == 1
    assert reload.phase is Phase.DONE
    assert host.current is not old and host.starting is None
    assert old is not None and old.retiring and host.retiring == [old]
    os.close(host.ready_w)


def test_a_ticket_rotation_starts_a_generation_with_the_running_config(sleepers) -> None:
    host, client = _setup(sleepers)
    old = host.current
    assert old is not None
    reload = Reload(host, client, "gw.toml", NOW, rotate=old.loaded)  # type: ignore[arg-type]
    # no actor, no comparison with the running config (it is the same one): forked at once
    assert client.asked == [] and reload.rotation
    assert reload.step(NOW) is None and reload.phase is Phase.WAITING_READY
    os.write(host.ready_w, b"RR")
    outcome = reload.step(NOW + 1)
    assert outcome is not None and outcome.reply() == {
        "result": "ok", "config_hash": old.loaded.hash, "generation": 1,
        "detail": ROTATED}
    assert host.current is not old and host.current.loaded is old.loaded
    assert old.retiring
    os.close(host.ready_w)


def test_an_invalid_config_changes_nothing(sleepers) -> None:
    host, client = _setup(sleepers)
    old = host.current
    reload = Reload(host, client, "gw.toml", NOW)  # type: ignore[arg-type]
    client.answer = Rejected("gw.toml:7: routes: bad", 7, ("gw.toml:7: routes: bad",))
    outcome = reload.step(NOW + 1)
    assert outcome is not None
    assert outcome.reply() == {"result": "failed", "reason": "gw.toml:7: routes: bad",
                               "line": 7, "errors": ["gw.toml:7: routes: bad"]}
    assert host.current is old and host.starting is None and not host.retiring


def test_the_same_config_is_unchanged(sleepers) -> None:
    host, client = _setup(sleepers)
    reload = Reload(host, client, "gw.toml", NOW)  # type: ignore[arg-type]
    client.answer = Validated(load_text(V1, "other.toml"), ())
    outcome = reload.step(NOW + 1)
    assert outcome is not None and outcome.result == "unchanged"


def test_a_silent_actor_times_out_on_the_virtual_clock_and_is_killed(sleepers) -> None:
    host, client = _setup(sleepers)
    reload = Reload(host, client, "gw.toml", NOW)  # type: ignore[arg-type]
    assert reload.wake_in(NOW) == ACTOR_TIMEOUT
    assert reload.step(NOW + ACTOR_TIMEOUT - 0.01) is None
    outcome = reload.step(NOW + ACTOR_TIMEOUT)
    assert outcome is not None and outcome.reason == "the reload actor did not answer"
    assert client.resets == 1
    assert host.actor.wait(5) == -signal.SIGKILL


def test_an_actor_that_exits_fails_the_reload_at_once(sleepers) -> None:
    host, client = _setup(sleepers)
    reload = Reload(host, client, "gw.toml", NOW)  # type: ignore[arg-type]
    host.actor_pid = 0  # reaped by the main loop
    outcome = reload.step(NOW + 0.1)
    assert outcome is not None and "exited before answering" in outcome.reason


def test_new_workers_that_never_report_are_given_up(sleepers) -> None:
    host, client = _setup(sleepers)
    old = host.current
    reload = Reload(host, client, "gw.toml", NOW)  # type: ignore[arg-type]
    client.answer = Validated(load_text(V2, "gw.toml"), ())
    reload.step(NOW + 1)
    new = host.starting
    assert new is not None and reload.wake_in(NOW + 1) == READY_TIMEOUT
    outcome = reload.step(NOW + 1 + READY_TIMEOUT)
    assert outcome is not None and outcome.reason == "the new workers did not become ready"
    assert host.current is old and host.starting is None
    assert host.retiring == [new] and new.retiring  # reaped later by the main loop
    for process in sleepers[1:]:
        assert process.wait(5) == -signal.SIGKILL
    os.close(host.ready_w)


def test_a_new_worker_dying_before_ready_fails_the_reload(sleepers) -> None:
    host, client = _setup(sleepers)
    reload = Reload(host, client, "gw.toml", NOW)  # type: ignore[arg-type]
    client.answer = Validated(load_text(V2, "gw.toml"), ())
    reload.step(NOW + 1)
    assert host.starting is not None
    host.starting.slots[1].pid = 0  # the main loop reaped it
    outcome = reload.step(NOW + 1.5)
    assert outcome is not None and outcome.result == "failed"
    os.close(host.ready_w)


@pytest.mark.parametrize("phase", [Phase.ASKING_ACTOR, Phase.WAITING_READY])
def test_a_stop_interrupts_the_reload_in_any_phase(sleepers, phase: Phase) -> None:
    host, client = _setup(sleepers)
    reload = Reload(host, client, "gw.toml", NOW)  # type: ignore[arg-type]
    if phase is Phase.WAITING_READY:
        client.answer = Validated(load_text(V2, "gw.toml"), ())
        reload.step(NOW + 1)
    assert reload.phase is phase
    outcome = reload.abort("the master is stopping")
    assert outcome.reply()["reason"] == "reload interrupted: the master is stopping"
    assert reload.phase is Phase.DONE
    if phase is Phase.WAITING_READY:
        assert host.starting is not None  # the stop signals and reaps it with the rest
        os.close(host.ready_w)


def _tls_setup(sleepers: list[subprocess.Popen[bytes]], tmp_path: Any
               ) -> tuple[RecordingHost, ScriptedClient, str]:
    from li_httpd.supervisor.tls import self_signed_pem, server_tls, write_private

    cert, key = self_signed_pem(["old.test"], [], 10)
    write_private(f"{tmp_path}/c.key", key, 0o600)
    write_private(f"{tmp_path}/c.crt", cert, 0o600)
    text = (V1.replace("[routes]", f'[server.tls]\nmode = "manual"\n[server.tls.manual]\n'
                                    f'cert = "{tmp_path}/c.crt"\nkey = "{tmp_path}/c.key"\n'
                                    '[routes]'))
    loaded = load_text(text, "gw.toml")
    current = Generation(0, loaded, SharedState.create(layout_for(loaded.config, 2)),
                         server_tls(loaded.config), [], [WorkerSlot(0), WorkerSlot(1)])
    return RecordingHost(current, sleepers), ScriptedClient(), text


def test_same_config_with_new_certificate_files_swaps_in_place(sleepers, tmp_path) -> None:
    from li_httpd.supervisor.tls import self_signed_pem, write_private

    host, client, text = _tls_setup(sleepers, tmp_path)
    old = host.current
    assert old is not None and old.tls is not None
    cert, key = self_signed_pem(["new.test"], [], 20)
    write_private(f"{tmp_path}/c.key", key, 0o600)
    write_private(f"{tmp_path}/c.crt", cert, 0o600)
    reload = Reload(host, client, "gw.toml", NOW)  # type: ignore[arg-type]
    client.answer = Validated(load_text(text, "gw.toml"), ())
    outcome = reload.step(NOW + 1)
    assert outcome is not None and outcome.reply()["detail"] == "certificate swapped"
    assert outcome.result == "ok" and outcome.generation == 0
    assert host.current is old and host.starting is None and not host.retiring
    assert old.tls.cert.names == ("new.test",)
    assert old.shared.cert_not_after() == old.tls.not_after_s
    again = Reload(host, client, "gw.toml", NOW + 2)  # type: ignore[arg-type]
    outcome = again.step(NOW + 3)
    assert outcome is not None and outcome.result == "unchanged"


def test_same_config_with_a_broken_key_fails_and_keeps_the_certificate(sleepers,
                                                                        tmp_path) -> None:
    host, client, text = _tls_setup(sleepers, tmp_path)
    assert host.current is not None and host.current.tls is not None
    before = host.current.tls.cert
    (tmp_path / "c.key").write_text("not a key")
    reload = Reload(host, client, "gw.toml", NOW)  # type: ignore[arg-type]
    client.answer = Validated(load_text(text, "gw.toml"), ())
    outcome = reload.step(NOW + 1)
    assert outcome is not None and outcome.result == "failed"
    assert outcome.reason.startswith("new certificate refused, the current one keeps serving")
    assert host.current.tls.cert is before
