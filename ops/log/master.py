"""The master's logger: synchronous, direct writes, no queue and no trio.

The master is a plain synchronous loop (it never runs trio, see ENGINEERING.md) and
logs little: startup banner, reloads, worker exits, rotation errors. Each
:meth:`MasterLog.diagnostic` formats, redacts and writes at once (one ``os.write`` to
the error file, a non-blocking attempt on stderr), so nothing is pending when it forks.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from li_httpd.config.model import Log

from .files import prepare
from .records import ERROR, LEVELS, Level, Text
from .redact import Redactor
from .sinks import SinkPlan, Sinks, plan


class MasterLog:
    """Diagnostics of the master to the error file and stderr.

    Construction prepares every log file of ``config`` (directories 0750, files 0640)
    and raises OSError when that fails, so an unwritable log directory stops startup
    (or a reload) with a clear message. Only the error file is then held open.
    """

    def __init__(self, config: Log, *, stderr_fd: int = 2, color: bool | None = None,
                 clock: Callable[[], float] = time.time, prepare_files: bool = True) -> None:
        full = plan(config)
        if prepare_files:
            prepare(full.paths)
        self.paths: tuple[str, ...] = full.paths
        """Every file of the config (what the master's Rotator rotates)."""
        self.plan: SinkPlan = dataclasses.replace(full, access=None, audit=None)
        self.redactor = Redactor(config.redact)
        self.sinks = Sinks(self.plan, self.redactor, stderr_fd=stderr_fd, color=color)
        self._clock = clock
        self._floor = self.plan.diagnostic_floor

    def enabled(self, level: Level) -> bool:
        return LEVELS.get(level, ERROR) >= self._floor

    def diagnostic(self, level: Level, message: Text, **fields: object) -> None:
        """Write one diagnostic now (never raises; failures are counted)."""
        number = LEVELS.get(level, ERROR)
        if number < self._floor:
            return
        self.sinks.write([("diagnostic", self._clock(), number, message, fields)])

    @property
    def write_errors(self) -> int:
        return self.sinks.write_errors

    def reopen(self) -> None:
        """Reopen the error file (after rotation or an external ``mv``)."""
        self.sinks.reopen()

    def close(self) -> None:
        self.sinks.flush_stderr()
        self.sinks.close()
