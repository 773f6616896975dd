"""Pure static-file policy: ranges and preconditions (RFC 9110 §13, §14)."""

from __future__ import annotations

import pytest
from li_httpd.workers.static import (
    ByteRange,
    etag_for,
    last_modified,
    precondition_failed,
    requested_range,
)

MTIME = 1_700_000_000.0
SIZE = 1000
ETAG = etag_for(SIZE, MTIME)


def ranged(spec: bytes, size: int = SIZE) -> ByteRange | bool | None:
    return requested_range([(b"range", spec)], size, etag_for(size, MTIME), MTIME)


@pytest.mark.parametrize(("spec", "expected"), [
    (b"bytes=0-9", ByteRange(0, 9)),
    (b"bytes=990-", ByteRange(990, 999)),
    (b"bytes=-10", ByteRange(990, 999)),
    (b"bytes=-5000", ByteRange(0, 999)),
    (b"bytes=5-2", None),
    (b"bytes=1000-", False),
    (b"bytes=-0", False),
    (b"bytes=0-1,5-6", None),
    (b"items=0-1", None),
    (b"bytes=0-" + b"9" * 5000, ByteRange(0, 999)),   # int() would raise past 4,300 digits
    (b"bytes=-" + b"9" * 5000, ByteRange(0, 999)),
    (b"bytes=" + b"9" * 5000 + b"-", False),
    (b"bytes=" + b"0" * 5000 + b"7-8", ByteRange(7, 8)),
])
def test_range(spec: bytes, expected: ByteRange | bool | None) -> None:
    assert ranged(spec) == expected


def test_suffix_range_of_an_empty_file_serves_the_whole_empty_file() -> None:
    assert ranged(b"bytes=-5", size=0) is None
    assert ranged(b"bytes=0-", size=0) is False


@pytest.mark.parametrize(("headers", "failed"), [
    ([], False),
    ([(b"if-match", b"*")], False),
    ([(b"if-match", ETAG)], False),
    ([(b"if-match", b'"other", ' + ETAG)], False),
    ([(b"if-match", b'"other"'), (b"if-match", ETAG)], False),
    ([(b"if-match", b'"deadbeef-1"')], True),
    ([(b"if-match", b"W/" + ETAG)], True),               # strong comparison
    ([(b"if-unmodified-since", b"Mon, 01 Jan 1990 00:00:00 GMT")], True),
    ([(b"if-unmodified-since", last_modified(MTIME))], False),
    ([(b"if-unmodified-since", b"not a date")], False),   # invalid: ignored
    # If-Match present: If-Unmodified-Since is not evaluated (RFC 9110 §13.2.2).
    ([(b"if-match", ETAG), (b"if-unmodified-since", b"Mon, 01 Jan 1990 00:00:00 GMT")], False),
])
def test_preconditions(headers: list[tuple[bytes, bytes]], failed: bool) -> None:
    assert precondition_failed(headers, ETAG, MTIME) is failed
