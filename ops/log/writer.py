"""The worker's logger: a cheap enqueue on the request path, one trio task that writes.

:class:`WorkerLog` is built once per worker process, after fork (it opens its own
fds). Request code calls :meth:`WorkerLog.access`, :meth:`WorkerLog.audit` and
:meth:`WorkerLog.diagnostic`: each checks a level with an int comparison, builds one
tuple and appends it to the bounded :class:`~.queue.LogQueue` — no formatting, no
redaction, no syscall, never blocks, never raises. :meth:`WorkerLog.run` is the only
task that formats and writes.

Writing from the trio task itself (no thread): a flush is one ``os.write`` of a batch
of lines per file into the page cache — microseconds, cheaper than a thread hop — and
stderr writes never wait (see :class:`~.sinks.StderrWriter`). A write error is counted
and the worker carries on: logging must never take a worker down.

All methods must be called from the worker's trio thread (or before ``trio.run``);
:meth:`WorkerLog.request_reopen` only sets a flag, so it is also safe from a signal
handler or a ``trio.open_signal_receiver`` task.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import trio
from li_httpd.config.model import Log

from .queue import LogQueue
from .records import ERROR, LEVELS, Attempts, CensorHits, Decision, Kind, Level, Text, TokenUsage
from .redact import Redactor
from .sinks import SinkPlan, Sinks, plan

FLUSH_INTERVAL: Final = 0.1
"""Seconds between flushes at most: a queued line reaches its file within this."""
BATCH: Final = 1024
"""Records formatted per batch; the writer yields to other tasks between batches."""


class WorkerLog:
    """Per-worker logger: queue + redactor + formatters + this process's fds.

    ``WorkerLog(config.log)`` with the loaded ``li_httpd.config.model.Config``. Run
    :meth:`run` in the worker's top nursery (``await nursery.start(log.run)``), call
    :meth:`request_reopen` on SIGUSR1 and :meth:`close` once at shutdown, after the
    nursery has exited, so queued lines are written.
    """

    def __init__(self, config: Log, *, stderr_fd: int = 2, color: bool | None = None,
                 clock: Callable[[], float] = time.time,
                 flush_interval: float = FLUSH_INTERVAL, batch_size: int = BATCH) -> None:
        self.plan: SinkPlan = plan(config)
        self.queue = LogQueue(config.queue_size)
        self.redactor = Redactor(config.redact)
        self.sinks = Sinks(self.plan, self.redactor, stderr_fd=stderr_fd, color=color)
        self._clock = clock
        self._interval = flush_interval
        self._batch = batch_size
        self._access_min_status = self.plan.access_min_status
        self._audit_on = self.plan.audit is not None
        self._diagnostic_floor = self.plan.diagnostic_floor
        self._high_water = max(1, config.queue_size // 2)
        self._wake = trio.Event()
        self._reopen = False
        self._closed = False

    # -- the request path: enqueue only ---------------------------------------------------

    def access(self, request_id: Text | None, route: Text | None, peer: Text | None,
               status: int, outcome: str, latency_ms: float, bytes_in: int, bytes_out: int,
               method: Text | None = None, path: Text | None = None,
               client: Text | None = None, key_id: Text | None = None) -> None:
        """One access line (skipped below the access sink's level)."""
        if status < self._access_min_status:
            return
        size = self.queue.put_request(("access", self._clock(), request_id, route, peer,
                                      status, outcome, latency_ms, bytes_in, bytes_out,
                                      method, path, client, key_id))
        if size >= self._high_water:
            self._wake.set()

    def audit(self, request_id: Text | None, key_id: Text | None, route: Text | None,
              model: Text | None, method: Text | None, path: Text | None, status: int,
              outcome: str, decision: Decision, peer: Text | None, latency_ms: float,
              ttfb_ms: float | None, bytes_in: int, bytes_out: int,
              attempts: Attempts | None = None, usage: TokenUsage | None = None,
              censor: CensorHits | None = None, client_cert: Text | None = None) -> None:
        """One audit record; ``client_cert`` is the verified client certificate's
        identity (never the certificate)."""
        if not self._audit_on:
            return
        size = self.queue.put_request(("audit", self._clock(), request_id, key_id, route,
                                      model, method, path, status, outcome, decision, peer,
                                      latency_ms, ttfb_ms, bytes_in, bytes_out, attempts,
                                      usage, censor, client_cert))
        if size >= self._high_water:
            self._wake.set()

    def enabled(self, level: Level) -> bool:
        """Whether a diagnostic at ``level`` would be written anywhere (skip costly fields)."""
        return LEVELS.get(level, ERROR) >= self._diagnostic_floor

    def diagnostic(self, level: Level, message: Text, **fields: object) -> None:
        """One diagnostic for the error file / stderr; ``request_id=`` gets its own column.

        Field values may be any object (they are redacted and printed by the writer,
        not here); keys named like a sensitive header (``authorization``, ``cookie``,
        configured names; ``_`` counts as ``-``) are redacted whole.
        """
        number = LEVELS.get(level, ERROR)
        if number < self._diagnostic_floor:
            return
        self.queue.put_diagnostic(number, message, fields, self._clock())

    def request_reopen(self) -> None:
        """Reopen every file at the next flush (within :data:`FLUSH_INTERVAL`)."""
        self._reopen = True

    # -- counters ---------------------------------------------------------------------------

    @property
    def dropped(self) -> dict[Kind, int]:
        """Records dropped on queue overload, per kind (live dict; export as metrics)."""
        return self.queue.dropped

    @property
    def write_errors(self) -> int:
        """Failed file opens/writes and stderr writes (lines lost with them)."""
        return self.sinks.write_errors

    @property
    def format_errors(self) -> int:
        """Records skipped because a field could not be formatted."""
        return self.sinks.format_errors

    # -- the writer ----------------------------------------------------------------------

    def flush(self) -> None:
        """Reopen if requested, then format and write everything queued (sync)."""
        if self._closed:
            return
        if self._reopen:
            self._reopen = False
            self.sinks.reopen()
        while batch := self.queue.drain(self._batch):
            self.sinks.write(batch)
        self.sinks.flush_stderr()

    async def _flush_batches(self) -> None:
        if self._reopen:
            self._reopen = False
            self.sinks.reopen()
        while batch := self.queue.drain(self._batch):
            self.sinks.write(batch)
            if len(batch) == self._batch:
                await trio.lowlevel.checkpoint()
        self.sinks.flush_stderr()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write queued records every :data:`FLUSH_INTERVAL` (sooner when the queue is
        half full) until cancelled; on cancellation, write what is left."""
        task_status.started()
        try:
            while not self._closed:
                with trio.move_on_after(self._interval):
                    await self._wake.wait()
                self._wake = trio.Event()
                await self._flush_batches()
        finally:
            self.flush()

    def close(self) -> None:
        """Write everything still queued and close the files (idempotent)."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self.sinks.close()
