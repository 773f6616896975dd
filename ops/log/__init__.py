"""li_httpd.ops.log ("li-log"): the logging library of the master and every worker.

What lives here, one job per module:

- :mod:`.detectors` — built-in secret detectors by id (shared with the leak censor);
- :mod:`.redact` — :class:`Redactor`: header rule + detectors over every logged string;
- :mod:`.records` — record tuples, levels, RFC 3339 timestamps, line formatting;
- :mod:`.queue` — :class:`LogQueue`: bounded, drops the oldest diagnostics first;
- :mod:`.files` — modes, O_APPEND batches, reopen, rotation, gzip, :class:`Rotator`;
- :mod:`.sinks` — which sinks a config enables; writing a batch to them;
- :mod:`.writer` — :class:`WorkerLog`, the trio side for workers;
- :mod:`.master` — :class:`MasterLog`, the synchronous side for the master.

Imports li_httpd.config only (and orjson); imported by li_httpd.workers and
li_httpd.supervisor; trio only in :mod:`.writer`, which this
package imports lazily so the master (which never runs trio) can use :class:`MasterLog`
and :class:`Rotator` without loading it.

May import: li_httpd.config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .detectors import DETECTORS, find, redact_text
from .files import REOPEN_GRACE, Rotator, compress, ensure_dir, prepare, rotate_if_needed
from .master import MasterLog
from .queue import LogQueue
from .records import LEVELS, Formatter, Timestamps
from .redact import ALWAYS_REDACTED, REDACTED, Redactor
from .sinks import file_paths, plan

if TYPE_CHECKING:
    from .writer import WorkerLog

__all__ = [
    "ALWAYS_REDACTED", "DETECTORS", "LEVELS", "REDACTED", "REOPEN_GRACE", "Formatter",
    "LogQueue", "MasterLog", "Redactor", "Rotator", "Timestamps", "WorkerLog", "compress",
    "ensure_dir", "file_paths", "find", "plan", "prepare", "redact_text", "rotate_if_needed",
]


def __getattr__(name: str) -> object:
    if name == "WorkerLog":
        from .writer import WorkerLog
        return WorkerLog
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
