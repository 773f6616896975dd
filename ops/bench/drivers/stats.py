"""Shared measurement helpers for the load drivers.

- ``summarize``: percentiles by the nearest-rank method (``p`` is the smallest sample
  such that at least ``p`` % of the samples are less than or equal to it; no
  interpolation, so every reported value is a measured one).
- ``CpuClock``: the process's own user + system CPU time (``resource.getrusage``).
- ``LoopLag``: how late a 10 ms trio sleep wakes up; a driver whose event loop is
  saturated shows it here before it shows anywhere else.
- ``raise_nofile_limit``: soft ``RLIMIT_NOFILE`` up to the hard limit.
- ``subtract``: key-wise difference of two summaries (``added_ms``).
- ``write_json``: the drivers' output document.
"""

from __future__ import annotations

import math
import resource
import sys
from array import array
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
import trio

__all__ = [
    "PERCENTILES",
    "CpuClock",
    "LoopLag",
    "percentile",
    "raise_nofile_limit",
    "subtract",
    "summarize",
    "write_json",
]

#: Percentiles every summary reports, as (key, percent).
PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0))
DIGITS = 3
#: Cap for the soft limit when the hard limit is unlimited (the kernel's nr_open default).
NOFILE_CAP = 1 << 20


def percentile(ordered: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty sequence."""
    if not ordered:
        raise ValueError("percentile of no samples")
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"percent outside 0..100: {percent}")
    # Multiply before dividing and allow for rounding (99.9 / 100 * 1000 is 999.0000000001).
    rank = max(1, math.ceil(percent * len(ordered) / 100.0 - 1e-9))
    return ordered[rank - 1]


def summarize(samples: Iterable[float], *, mean: bool = False,
              count: bool = True) -> dict[str, float | int | None]:
    """``{"count", "p50", "p95", "p99", "max"[, "mean"]}`` in the samples' unit, rounded to
    3 decimals; the statistics are ``None`` when there are no samples. ``count=False``
    leaves out ``count``."""
    ordered = sorted(samples)
    out: dict[str, float | int | None] = {"count": len(ordered)} if count else {}
    for key, percent in PERCENTILES:
        out[key] = round(percentile(ordered, percent), DIGITS) if ordered else None
    out["max"] = round(ordered[-1], DIGITS) if ordered else None
    if mean:
        out["mean"] = round(math.fsum(ordered) / len(ordered), DIGITS) if ordered else None
    return out


def subtract(minuend: dict[str, Any], subtrahend: dict[str, Any]) -> dict[str, float | None]:
    """Key-wise ``minuend - subtrahend`` over the statistics both summaries have (``count``
    is not a statistic); ``None`` where either side is ``None``."""
    out: dict[str, float | None] = {}
    for key, value in minuend.items():
        if key == "count" or key not in subtrahend:
            continue
        other = subtrahend[key]
        out[key] = None if value is None or other is None else round(value - other, DIGITS)
    return out


class CpuClock:
    """CPU seconds (user + system) this process used since ``start()``."""

    def __init__(self) -> None:
        self._start = self._now()

    @staticmethod
    def _now() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def start(self) -> None:
        self._start = self._now()

    def elapsed(self) -> float:
        return self._now() - self._start


class LoopLag:
    """Samples (ms) of how late ``trio.sleep(interval)`` returns; run ``run`` in a nursery."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.samples: array[float] = array("d")

    async def run(self) -> None:
        clock = trio.current_time
        interval = self.interval
        while True:
            before = clock()
            await trio.sleep(interval)
            self.samples.append(max(0.0, (clock() - before - interval) * 1000.0))


def raise_nofile_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NOFILE_CAP if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def write_json(document: dict[str, Any], path: str | None) -> None:
    """Write the document to ``path`` (``-`` or ``None``: stdout), indented, keys in order."""
    data = orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
    if path is None or path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        Path(path).write_bytes(data)
