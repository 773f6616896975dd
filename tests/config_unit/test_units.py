"""Strict parsing and canonical printing of sizes and durations (config/units.py)."""

from __future__ import annotations

import pytest
from li_httpd.config.units import (
    UnitError,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)


@pytest.mark.parametrize(("value", "parsed"), [
    (0, 0), (512, 512), ("0", 0), ("512", 512), ("4k", 4096), ("1m", 1024**2),
    ("1g", 1024**3), ("1024k", 1024**2), ("007k", 7 * 1024), ("999999999999", 999999999999),
])
def test_parse_size(value: object, parsed: int) -> None:
    assert parse_size(value) == parsed


@pytest.mark.parametrize("value", [
    -1, True, False, 1.5, None, [], "", "k", "1K", "1M", "1 m", " 1m", "1m ", "1mb", "1kb",
    "1t", "1.5m", "-1", "+1", "1_000", "0x10", "1e3", "1000000000000", "4KiB", "１",
])
def test_parse_size_refuses(value: object) -> None:
    with pytest.raises(UnitError):
        parse_size(value)


@pytest.mark.parametrize(("value", "parsed"), [
    ("0ms", 0), ("0s", 0), (0, 0), ("250ms", 250), ("30s", 30_000), ("5m", 300_000),
    ("2h", 7_200_000), ("30d", 30 * 86_400_000), ("1500ms", 1500), ("999999999ms", 999999999),
])
def test_parse_duration(value: str, parsed: int) -> None:
    assert parse_duration(value) == parsed


@pytest.mark.parametrize("value", [
    10, True, 1.5, None, "", "10", "s", "1w", "1y", "10 s", " 10s", "10S", "10Ms", "1.5s",
    "-1s", "+1s", "1h30m", "1_000ms", "1000000000ms", "P1D", "10sec", "10mins",
])
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(UnitError):
        parse_duration(value)


@pytest.mark.parametrize(("value", "text"), [
    (0, "0"), (1, "1"), (256, "256"), (1000, "1000"), (1024, "1k"), (1536, "1536"),
    (4096, "4k"), (1024**2, "1m"), (3 * 1024**2, "3m"), (1024**3, "1g"),
    (1024**3 + 1024, "1048577k"),
])
def test_format_size(value: int, text: str) -> None:
    assert format_size(value) == text


@pytest.mark.parametrize(("value", "text"), [
    (0, "0ms"), (1, "1ms"), (999, "999ms"), (1000, "1s"), (1500, "1500ms"), (60_000, "1m"),
    (90_000, "90s"), (3_600_000, "1h"), (86_400_000, "1d"), (172_800_000, "2d"),
    (90 * 60_000, "90m"),
])
def test_format_duration(value: int, text: str) -> None:
    assert format_duration(value) == text


def test_messages_name_the_grammar() -> None:
    with pytest.raises(UnitError, match="optional lowercase unit k, m or g"):
        parse_size("1M")
    with pytest.raises(UnitError, match="a size cannot be negative"):
        parse_size(-5)
    with pytest.raises(UnitError, match="one unit of ms, s, m, h, d"):
        parse_duration("1w")
    with pytest.raises(UnitError, match="duration string with a unit"):
        parse_duration(30)
