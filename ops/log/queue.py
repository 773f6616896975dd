"""The bounded per-process log queue (pure, no I/O, no locks).

Records wait here between the request path and the writer task. The queue never
blocks and never raises: when it is full the least valuable record goes, and is
counted so metrics can export it (SPEC §9: never block the accept loop).

Overload policy, in order:

1. drop the OLDEST DIAGNOSTIC still queued (diagnostics are the least valuable: they
   describe, they do not account);
2. when a new diagnostic arrives and no diagnostic is queued, drop that new one (an
   access or audit record is never displaced by a diagnostic);
3. only when the queue holds nothing but access/audit records, drop the oldest of them.

Two deques (diagnostics; access + audit) make every step O(1); each entry carries a
sequence number so :meth:`LogQueue.drain` can hand records back in arrival order.
Single-threaded by design: a trio worker has one thread (the master uses no queue).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from itertools import count

from .records import (
    ERROR,
    LEVELS,
    AccessRecord,
    AuditRecord,
    DiagnosticRecord,
    Kind,
    Record,
    Text,
)


class LogQueue:
    """At most ``capacity`` records; see the module docstring for what overflow drops."""

    __slots__ = ("_diagnostics", "_main", "_seq", "capacity", "dropped")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a log queue needs room for at least one record")
        self.capacity = capacity
        self._main: deque[tuple[int, AccessRecord | AuditRecord]] = deque()
        self._diagnostics: deque[tuple[int, DiagnosticRecord]] = deque()
        self._seq = count()
        self.dropped: dict[Kind, int] = {"access": 0, "audit": 0, "diagnostic": 0}
        """Records dropped on overload, per kind (monotonic; exported as metrics)."""

    def __len__(self) -> int:
        return len(self._main) + len(self._diagnostics)

    def _make_room_for_main(self) -> None:
        if self._diagnostics:
            self._diagnostics.popleft()
            self.dropped["diagnostic"] += 1
        else:
            _, oldest = self._main.popleft()
            self.dropped[oldest[0]] += 1

    def put_request(self, record: AccessRecord | AuditRecord) -> int:
        """Queue one access or audit record (O(1), never blocks); returns the queue's new
        length (cheaper for the caller than a second ``len()``)."""
        main = self._main
        size = len(main) + len(self._diagnostics)
        if size >= self.capacity:
            self._make_room_for_main()
            size -= 1
        main.append((next(self._seq), record))
        return size + 1

    def put_diagnostic(self, level: int | str, message: Text, fields: Mapping[str, object],
                       ts: float | None = None) -> None:
        """Queue one diagnostic (O(1), never blocks, never raises).

        ``level`` is a number from :data:`~.records.LEVELS` or its name (an unknown name
        counts as ``error`` rather than being hidden); ``ts`` defaults to now.
        """
        if len(self._main) + len(self._diagnostics) >= self.capacity:
            self.dropped["diagnostic"] += 1
            if not self._diagnostics:
                return
            self._diagnostics.popleft()
        number = level if isinstance(level, int) else LEVELS.get(level, ERROR)
        record: DiagnosticRecord = ("diagnostic", time.time() if ts is None else ts, number,
                                    message, fields)
        self._diagnostics.append((next(self._seq), record))

    def drain(self, max_items: int) -> list[Record]:
        """Remove and return up to ``max_items`` records, oldest first (arrival order)."""
        main, diagnostics = self._main, self._diagnostics
        out: list[Record] = []
        while len(out) < max_items:
            if main and (not diagnostics or main[0][0] < diagnostics[0][0]):
                out.append(main.popleft()[1])
            elif diagnostics:
                out.append(diagnostics.popleft()[1])
            else:
                break
        return out
