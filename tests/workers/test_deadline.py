"""Deadline and housekeeping behaviour on trio's virtual clock (no sockets)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from li_httpd.workers import sockio
from li_httpd.workers.housekeeping import DRAIN_IDLE, Housekeeping
from li_httpd.workers.sockio import Deadline


@pytest.fixture(autouse=True)
def virtual_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sockio, "now", trio.current_time)


async def test_suspended_and_replaced_restore_the_deadline(
        mock_clock: trio.testing.MockClock) -> None:
    deadline = Deadline(trio.CancelScope())
    deadline.set(10, "body")
    at = deadline.at
    with deadline.suspended():
        assert deadline.at == float("inf")
    assert (deadline.at, deadline.reason) == (at, "body")
    with deadline.replaced(2, "send"):
        assert (deadline.at, deadline.reason) == (trio.current_time() + 2, "send")
    assert (deadline.at, deadline.reason) == (at, "body")


async def test_a_deadline_fires_once_with_its_reason() -> None:
    with trio.CancelScope() as scope:
        deadline = Deadline(scope)
        deadline.set(1, "upstream_ttfb")
        deadline.expire_if_due(trio.current_time() + 0.5)
        assert not scope.cancel_called
        deadline.expire_if_due(trio.current_time() + 1)
        assert scope.cancel_called and deadline.fired == "upstream_ttfb"
        deadline.set(1, "upstream_idle")
        deadline.expire_now("client_gone")
        assert deadline.fired == "upstream_ttfb"  # the first reason is the one reported


async def test_housekeeping_fires_deadlines_within_a_tick(
        autojump_clock: trio.testing.MockClock) -> None:
    clock_start = trio.current_time()
    housekeeping = Housekeeping()
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as connection:
            deadline = Deadline(connection)
            deadline.set(3, "header")
            housekeeping.deadlines.add(deadline)
            await nursery.start(housekeeping.run)
            await trio.sleep_forever()
        nursery.cancel_scope.cancel()
    assert deadline.fired == "header"
    assert 3 <= trio.current_time() - clock_start <= 3 + sockio.TICK * 2


async def test_drain_shortens_only_idle_keep_alive_waits(
        mock_clock: trio.testing.MockClock) -> None:
    housekeeping = Housekeeping()
    idle = Deadline(trio.CancelScope())
    busy = Deadline(trio.CancelScope())
    idle.set(100.0, "idle")
    busy.set(100.0, "upstream_idle")
    housekeeping.deadlines.update((idle, busy))
    started = trio.current_time()
    housekeeping.drain()
    housekeeping.tick(started)
    assert idle.at == started + DRAIN_IDLE and not idle.fired
    assert busy.at == started + 100.0
    housekeeping.tick(started + DRAIN_IDLE)
    assert idle.fired == "idle" and not busy.fired
