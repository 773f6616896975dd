"""Which sinks a config enables, and writing a batch of records to them (sync, no trio).

:func:`plan` reads ``[log]`` once into a :class:`SinkPlan` (paths resolved, levels as
numbers). :class:`Sinks` is the sync core shared by the worker's trio writer and the
master's direct logger: it formats a batch (redacting every string), then writes each
file once per batch and stderr through a :class:`StderrWriter`.

Level rules (the config has a global ``log.level`` and one level per sink):

- diagnostics reach the error file when at or above both ``log.level`` and
  ``log.error.level``, and stderr when at or above both ``log.level`` and
  ``log.stderr.level`` (the global level is a floor: ``log.level = "warn"`` quiets
  everything, lowering a sink's level alone does not go below it);
- access lines honour only ``log.access.level`` (their level comes from the status,
  see :func:`~.records.access_level`); the global level never hides traffic;
- audit records have no level: an enabled audit sink gets every one;
- stderr receives diagnostics only, never access or audit lines (journald would
  otherwise store every request a second time).
"""

from __future__ import annotations

import os
import select
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from li_httpd.config.model import Log, LogSink

from .files import LogFiles
from .records import ERROR, LEVELS, WARN, Formatter, Record
from .redact import Redactor

DEFAULT_DIR: Final = "/var/log/li-httpd"
"""Used when ``log.dir`` is unset (desugar normally fills it: ./logs for the dev profile)."""

SinkName = Literal["access", "error", "audit"]
ColorMode = Literal["auto", "always", "never"]
_NEVER: Final = len(LEVELS)
"""A level no record reaches: marks a disabled sink in numeric comparisons."""


@dataclass(frozen=True, slots=True)
class FileSink:
    name: SinkName
    path: str
    """Absolute, or relative to the working directory (``log.dir`` joined with the sink's
    path; an absolute sink path is used as is)."""
    level: int
    json: bool


@dataclass(frozen=True, slots=True)
class SinkPlan:
    access: FileSink | None
    error: FileSink | None
    audit: FileSink | None
    stderr_level: int | None
    """None when the stderr sink is disabled."""
    color: ColorMode
    level: int
    """The global ``log.level`` floor for diagnostics."""

    @property
    def files(self) -> tuple[FileSink, ...]:
        return tuple(sink for sink in (self.access, self.error, self.audit) if sink)

    @property
    def paths(self) -> tuple[str, ...]:
        """Every enabled file path, deduplicated (two sinks may share a file)."""
        return tuple(dict.fromkeys(sink.path for sink in self.files))

    @property
    def diagnostic_floor(self) -> int:
        """The lowest diagnostic level any sink writes (a level above ``error`` if none)."""
        floors = [sink_level for sink_level in
                  (self.error.level if self.error else None, self.stderr_level)
                  if sink_level is not None]
        return max(self.level, min(floors)) if floors else _NEVER

    @property
    def access_min_status(self) -> int:
        """Statuses below this are not logged by the access sink (see access_level)."""
        if self.access is None:
            return 1_000
        if self.access.level >= ERROR:
            return 500
        if self.access.level >= WARN:
            return 400
        return 0


def _file_sink(name: SinkName, sink: LogSink, directory: str) -> FileSink | None:
    if not sink.enabled:
        return None
    return FileSink(name, os.path.join(directory, sink.path), LEVELS[sink.level],
                    sink.format == "json")


def plan(log: Log) -> SinkPlan:
    """The sinks ``log`` enables, with their paths and numeric levels (pure)."""
    directory = log.dir if log.dir is not None else DEFAULT_DIR
    return SinkPlan(
        access=_file_sink("access", log.access, directory),
        error=_file_sink("error", log.error, directory),
        audit=_file_sink("audit", log.audit, directory),
        stderr_level=LEVELS[log.stderr.level] if log.stderr.enabled else None,
        color=log.stderr.color,
        level=LEVELS[log.level],
    )


def file_paths(log: Log) -> tuple[str, ...]:
    """The log files ``log`` writes: what the master prepares, rotates and reopens."""
    return plan(log).paths


def use_color(mode: ColorMode, fd: int) -> bool:
    """``always``; ``never``; ``auto`` = fd is a terminal and NO_COLOR is not set."""
    if mode == "auto":
        return "NO_COLOR" not in os.environ and os.isatty(fd)
    return mode == "always"


class StderrWriter:
    """Human lines to stderr without stalling the process on a slow reader.

    stderr is usually a pipe (journald) or a terminal shared with the other processes,
    and may not be made non-blocking (the flag would be shared with them). So each
    write is preceded by a zero-timeout ``poll`` for POLLOUT and is at most
    ``PIPE_BUF`` bytes cut at a line end: such a write neither blocks nor interleaves
    with other processes' lines (a single line longer than ``PIPE_BUF`` is written in
    pieces, which may interleave, rather than risk blocking). What cannot be written
    now waits (bounded by :attr:`MAX_PENDING`; the oldest whole lines beyond it are
    dropped and counted) and is retried at the next write or :meth:`flush`.
    """

    MAX_PENDING: Final = 256 * 1024
    CHUNK: Final = select.PIPE_BUF

    __slots__ = ("_pending", "_poll", "dropped", "errors", "fd")

    def __init__(self, fd: int = 2) -> None:
        self.fd = fd
        self._pending = bytearray()
        self._poll = select.poll()
        self._poll.register(fd, select.POLLOUT)
        self.dropped = 0
        """Lines dropped because the reader could not keep up (monotonic)."""
        self.errors = 0
        """Failed writes (monotonic); the pending lines are dropped with them."""

    @property
    def pending(self) -> int:
        return len(self._pending)

    def write(self, data: bytes) -> None:
        """Queue ``data`` (complete lines) and write as much as fits without blocking."""
        pending = self._pending
        pending += data
        excess = len(pending) - self.MAX_PENDING
        if excess > 0:
            cut = pending.find(b"\n", excess - 1) + 1 or len(pending)
            self.dropped += pending.count(b"\n", 0, cut)
            del pending[:cut]
        self.flush()

    def flush(self) -> None:
        pending = self._pending
        while pending:
            try:
                if not self._poll.poll(0):
                    return
                end = pending.rfind(b"\n", 0, self.CHUNK) + 1
                if end == 0:  # one line longer than PIPE_BUF: split it rather than block
                    end = min(len(pending), self.CHUNK)
                written = os.write(self.fd, pending[:end])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.errors += 1
                pending.clear()
                return
            del pending[:written]


class Sinks:
    """Formats batches of records and writes them to the enabled sinks.

    Never raises from :meth:`write`: a record that cannot be formatted is counted in
    :attr:`format_errors` and skipped; file and stderr failures are counted by
    :class:`~.files.LogFiles` and :class:`StderrWriter`.
    """

    __slots__ = ("_access", "_audit", "_error", "_stderr_level", "color", "files",
                 "format_errors", "formatter", "plan", "stderr")

    def __init__(self, plan: SinkPlan, redactor: Redactor, *, stderr_fd: int = 2,
                 color: bool | None = None) -> None:
        self.plan = plan
        self.formatter = Formatter(redactor)
        self.files = LogFiles(plan.paths)
        self.stderr = StderrWriter(stderr_fd) if plan.stderr_level is not None else None
        self.color = use_color(plan.color, stderr_fd) if color is None else color
        self.format_errors = 0
        self._access = plan.access
        self._audit = plan.audit
        self._error = plan.error
        self._stderr_level = max(plan.level, plan.stderr_level if plan.stderr_level
                                 is not None else _NEVER)

    @property
    def write_errors(self) -> int:
        """Failed opens/writes of every file, plus failed stderr writes."""
        errors = sum(self.files.errors.values())
        return errors + (self.stderr.errors if self.stderr is not None else 0)

    def write(self, records: Iterable[Record]) -> None:
        """Format ``records`` and write each sink's lines with one write per file."""
        out: dict[str, list[bytes]] = {}
        stderr_lines: list[bytes] = []
        access, audit, error = self._access, self._audit, self._error
        formatter = self.formatter
        floor = self.plan.level
        access_min_status = self.plan.access_min_status
        for record in records:
            try:
                if record[0] == "access":
                    if access is not None and record[5] >= access_min_status:
                        out.setdefault(access.path, []).append(
                            formatter.access(record, access.json))
                elif record[0] == "audit":
                    if audit is not None:
                        out.setdefault(audit.path, []).append(formatter.audit(record))
                else:
                    level = record[2]
                    if level < floor:
                        continue
                    if error is not None and level >= error.level:
                        out.setdefault(error.path, []).append(
                            formatter.diagnostic(record, error.json))
                    if level >= self._stderr_level:
                        stderr_lines.append(formatter.diagnostic(record, color=self.color))
            except Exception:  # a bad field must not take the logger down
                self.format_errors += 1
        for path, lines in out.items():
            self.files.write(path, b"".join(lines))
        if stderr_lines and self.stderr is not None:
            self.stderr.write(b"".join(stderr_lines))

    def flush_stderr(self) -> None:
        if self.stderr is not None:
            self.stderr.flush()

    def reopen(self) -> None:
        self.files.reopen()

    def close(self) -> None:
        self.files.close()

