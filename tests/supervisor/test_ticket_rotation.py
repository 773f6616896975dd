"""The session-ticket rotation schedule (supervisor/tickets.py): pure bookkeeping on the
clocks it is given."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from li_httpd.config import load_text
from li_httpd.config.model import Tls
from li_httpd.shm import SharedState, layout_for
from li_httpd.supervisor import master as master_module
from li_httpd.supervisor.generations import Generation
from li_httpd.supervisor.master import Master
from li_httpd.supervisor.reload import ROTATED, Outcome
from li_httpd.supervisor.tickets import RETRY, TicketRotation, period_s

HOUR_MS = 3_600_000
TLS = Tls(mode="self_signed", ticket_rotation=12 * HOUR_MS)


@pytest.mark.parametrize(("tls", "period"), [
    (TLS, 12 * 3600.0),
    (dataclasses.replace(TLS, session_tickets=False), None),
    (dataclasses.replace(TLS, mode="off"), None),
    (dataclasses.replace(TLS, ticket_rotation=7 * 24 * HOUR_MS), 7 * 24 * 3600.0),
], ids=["on", "tickets_off", "tls_off", "weekly"])
def test_period(tls: Tls, period: float | None) -> None:
    assert period_s(tls) == period


def test_a_new_generation_restarts_the_schedule_and_the_same_one_does_not() -> None:
    rotation = TicketRotation()
    rotation.follow(0, TLS, now=100.0, wall=1_000.0)
    assert rotation.due == 100.0 + 43200 and rotation.due_wall == 1_000.0 + 43200
    assert not rotation.wanted(100.0 + 43199)
    assert rotation.wanted(100.0 + 43200)
    assert rotation.wake_in(100.0 + 43000) == 200.0
    rotation.follow(0, TLS, now=5_000.0, wall=6_000.0)  # same generation: keeps its due
    assert rotation.due == 100.0 + 43200
    rotation.follow(1, TLS, now=5_000.0, wall=6_000.0)  # e.g. a config reload
    assert rotation.due == 5_000.0 + 43200
    assert rotation.status()["next_rotation"] == "1970-01-01T13:40:00Z"


def test_asked_runs_at_once_and_hands_over_its_waiters() -> None:
    rotation = TicketRotation()
    rotation.follow(0, TLS, now=0.0, wall=0.0)
    waiter = object()
    rotation.asked = True
    rotation.waiters.append(waiter)  # type: ignore[arg-type]
    assert rotation.wanted(1.0)
    assert rotation.started() == [waiter]
    assert not rotation.wanted(1.0) and rotation.waiters == []


def test_a_failed_rotation_is_retried() -> None:
    rotation = TicketRotation()
    rotation.follow(0, TLS, now=0.0, wall=0.0)
    rotation.failed(now=43200.0, wall=43200.0)
    assert rotation.due == 43200.0 + RETRY


def test_without_tickets_nothing_is_due_and_ctl_is_refused() -> None:
    rotation = TicketRotation()
    rotation.follow(0, dataclasses.replace(TLS, session_tickets=False), now=0.0, wall=0.0)
    assert rotation.due is None and rotation.wake_in(0.0) is None
    assert not rotation.wanted(10**9)
    assert rotation.refusal() is not None
    rotation.failed(now=1.0, wall=1.0)
    assert rotation.due is None
    assert rotation.status() == {"session_tickets": False, "rotation_s": 0,
                                 "next_rotation": "-", "rotations": 0}


class _RecordedReload:
    """Stands in for supervisor.reload.Reload: records how the master started it."""

    def __init__(self, host: object, client: object, source: str | None, now: float, *,
                 rotate: object = None) -> None:
        self.rotation = rotate is not None
        self.rotate = rotate
        self.now = now

    def step(self, now: float) -> None:
        return None  # still running


def test_the_master_starts_a_rotation_when_due_and_reschedules_after_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    loaded = load_text(
        '[server]\nlisten = "127.0.0.1:0"\nprofile = "dev"\n[server.tls]\n'
        f'mode = "self_signed"\ncert_dir = "{tmp_path}"\nticket_rotation = "12h"\n'
        '[routes]\n"GET /health" = "static:healthcheck"\n', "t.toml")
    monkeypatch.setattr(master_module, "Reload", _RecordedReload)
    master = Master(loaded)
    shared = SharedState.create(layout_for(loaded.config, 1))
    try:
        master.current = Generation(0, loaded, shared, None, [], [])
        master.reload_client = object()  # type: ignore[assignment]
        master._follow_generation(100.0)
        master._maybe_rotate_tickets(100.0 + 43199)
        assert master.reload is None
        master._maybe_rotate_tickets(100.0 + 43200)
        started = master.reload
        assert isinstance(started, _RecordedReload)
        assert started.rotation and started.rotate is loaded  # the running config again
        master._maybe_rotate_tickets(100.0 + 43201)  # one at a time
        assert master.reload is started
        # it succeeded: generation 1 is current, the next rotation is 12 h from now
        master.reload = None
        master.current = Generation(1, loaded, shared, None, [], [])
        monkeypatch.setattr(master_module.time, "monotonic", lambda: 50_000.0)
        master._rotation_done(Outcome("ok", ROTATED, config_hash=loaded.hash, generation=1))
        assert master.tickets.due == 50_000.0 + 43200
        assert master.tickets.rotations == 1
        assert "session tickets rotated: generation 1, next rotation" in capsys.readouterr().err
    finally:
        shared.close()
        os.close(master._wake_r)
        os.close(master._wake_w)
