"""Strict parsing and canonical printing of sizes and durations.

Sizes are byte counts written as an integer or a string such as ``"4k"`` or ``"1m"``
(binary multiples: k = 1024). Durations are strings with a unit (``"250ms"``, ``"30s"``,
``"5m"``, ``"2h"``, ``"30d"``); a bare number is refused because its unit would be a
guess (except ``0``). Both print back in the largest unit that represents the value exactly, so
``parse(format(x)) == x`` for every value.
"""

from __future__ import annotations

import re
from typing import NewType

Size = NewType("Size", int)
"""A byte count."""

Millis = NewType("Millis", int)
"""A duration in whole milliseconds."""

_SIZE_RE = re.compile(r"([0-9]{1,12})([kmg]?)")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

_DURATION_RE = re.compile(r"([0-9]{1,9})(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class UnitError(ValueError):
    """A size or duration string that does not follow the strict grammar."""


def parse_size(value: object) -> Size:
    """Return the byte count for ``value`` (a non-negative int or a size string)."""
    if isinstance(value, bool):
        raise UnitError("expected a size such as \"4k\" or \"1m\", got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise UnitError("a size cannot be negative")
        return Size(value)
    if not isinstance(value, str):
        raise UnitError(f"expected a size such as \"4k\" or \"1m\", got {type(value).__name__}")
    match = _SIZE_RE.fullmatch(value)
    if match is None:
        raise UnitError(
            f"invalid size {value!r}: write digits with an optional lowercase unit k, m or g "
            "(1k = 1024 bytes), e.g. \"512\", \"4k\", \"1m\""
        )
    return Size(int(match.group(1)) * _SIZE_UNITS[match.group(2)])


def format_size(value: int) -> str:
    """Print a byte count in the largest unit that represents it exactly."""
    for unit in ("g", "m", "k"):
        factor = _SIZE_UNITS[unit]
        if value and value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


def parse_duration(value: object) -> Millis:
    """Return the milliseconds for a duration string such as ``"600s"`` or ``"30d"``; a
    bare ``0`` is the one number accepted (zero needs no unit)."""
    if value == 0 and type(value) is int:
        return Millis(0)
    if not isinstance(value, str) or isinstance(value, bool):
        raise UnitError("expected a duration string with a unit, e.g. \"250ms\", \"30s\", "
                        "\"5m\", \"2h\", \"30d\"")
    match = _DURATION_RE.fullmatch(value)
    if match is None:
        raise UnitError(
            f"invalid duration {value!r}: write digits followed by one unit of ms, s, m, h, d "
            "(e.g. \"30s\")"
        )
    return Millis(int(match.group(1)) * _DURATION_UNITS[match.group(2)])


def format_duration(value: int) -> str:
    """Print milliseconds in the largest unit that represents them exactly."""
    for unit in ("d", "h", "m", "s"):
        factor = _DURATION_UNITS[unit]
        if value and value % factor == 0:
            return f"{value // factor}{unit}"
    return f"{value}ms"
