"""The master's Redis calls: release a dead worker's stream leases at once, and read the
budgets ``ctl status`` shows.

A worker's leases carry its holder id (host, master pid, worker pid) and are listed in
its holder set (:mod:`li_httpd.workers.shared_limits`). When the master reaps a worker
it runs the holder-release script, so a worker SIGKILLed mid-request frees its slots
immediately, as the shared-memory backend does by zeroing the worker's column. If Redis
cannot be reached the leases still expire after ``lease_time``.

The master is synchronous, so this is a blocking connection
(:mod:`li_httpd.workers.redis_blocking`) with a short deadline (four times
``[state] timeout``, at most one second). After a failure :class:`MasterRedis` does
not try again for :data:`QUIET_AFTER_FAILURE`, whichever call failed: a reload retiring
every worker, or a script polling ``ctl status``, while Redis is away costs the main
loop one deadline, not one per worker or per status request.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from li_httpd.config.model import ApiKey, State
from li_httpd.shm import BudgetUsage
from li_httpd.workers.redis_blocking import (
    FAILURES,
    QUIET_AFTER_FAILURE,
    BlockingRedis,
    QuietRedis,
    failure_text,
)
from li_httpd.workers.shared_limits import RELEASE_HOLDER, holder_key

DEADLINE = 1.0
"""Longest the master waits for Redis per released worker (seconds)."""

class MasterRedis:
    """The master's Redis calls: lease releases and ``ctl status`` budget reads, skipped
    for a while after any of them failed (Redis away fails them all)."""

    def __init__(self) -> None:
        self.calls = QuietRedis()  # compiled: held, not subclassed

    def release_leases(self, state: State, worker: int, now: float) -> int | str | None:
        """The released count, why it failed, or None when skipped after a failure."""
        if self.calls.quiet(state, now):
            return None
        deadline = min(DEADLINE, 4 * state.timeout / 1000)
        released = release_worker_leases(state, worker, deadline)
        if isinstance(released, str):
            self.calls.failed(state, released, now)
        return released

    def budgets(self, state: State, keys: Sequence[ApiKey],
                now: float) -> dict[str, BudgetUsage] | str | None:
        """What Redis holds of each key's budget, or why not (:meth:`QuietRedis.budgets`)."""
        return self.calls.budgets(state, keys, now)


def master_host_id() -> str:
    """The host id the master's workers use (see shared_limits.host_id)."""
    return f"{socket.gethostname()}.{os.getpid()}"


def release_worker_leases(state: State, worker: int, deadline: float = DEADLINE) -> int | str:
    """Release every lease the worker whose pid was ``worker`` held; the count, or why it
    failed."""
    try:
        with BlockingRedis.open(state, deadline) as redis:
            key = holder_key(state.key_prefix, master_host_id(), worker)
            reply = redis.call("EVAL", RELEASE_HOLDER.text, 1, key)
    except FAILURES as exc:
        return failure_text(exc)
    return reply if isinstance(reply, int) else f"unexpected reply {reply!r:.60}"


__all__ = ["QUIET_AFTER_FAILURE", "MasterRedis", "release_worker_leases"]
