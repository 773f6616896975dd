"""A checked driver for the HTTP/1.1 readers, shared by the unit, hypothesis and atheris tests.

:func:`drive` feeds a reader the given pieces (then end of stream), pulls every event the
way the connection actor does (``next_event()`` after each ``feed()`` until NEED_DATA),
and checks the invariants every input must keep, whatever the bytes are:

- the only exception is :class:`HttpError` (an ``UpstreamProtocolError`` for responses);
- an error is final: every later ``next_event()`` raises again (the reader fails closed);
- memory is bounded: when a reader asks for data it holds at most :func:`buffer_bound`
  bytes, so it never holds more than that plus the one feed it just got;
- progress: without new bytes a reader returns a bounded number of events, and after end
  of stream it never asks for more data (it ends cleanly or raises);
- ``CLOSED`` only comes after end of stream.

The result is a normalized event list (heads summarized as tuples, adjacent body pieces
merged, ``("error", status)`` last when the stream was rejected), so two runs over the
same bytes split differently can be compared for equality.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from li_httpd.workers.http1 import (
    CLOSED,
    END,
    NEED_DATA,
    HttpError,
    ParseLimits,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
    UpstreamProtocolError,
)

MAX_CHUNK_SIZE_DIGITS = 16
"""The chunk-size line may hold this many hex digits (workers/http1.py)."""


class InvariantError(AssertionError):
    """A reader broke one of the module's invariants."""


def buffer_bound(limits: ParseLimits) -> int:
    """Most bytes a reader may hold while it waits for more data."""
    return max(limits.max_request_line + limits.max_header_bytes,
               MAX_CHUNK_SIZE_DIGITS + 1 + limits.max_chunk_extension,
               2 * limits.max_header_bytes)


def summarize(event: object) -> Any:
    """A comparable, printable form of one event."""
    if isinstance(event, RequestHead):
        return ("request", event.method, event.target, event.version, tuple(event.headers),
                event.host, event.content_length, event.chunked, event.keep_alive,
                event.expect_continue, event.connection_tokens)
    if isinstance(event, ResponseHead):
        return ("response", event.status, event.reason, event.version, tuple(event.headers),
                event.content_length, event.chunked, event.keep_alive,
                event.connection_tokens)
    if event is END:
        return "END"
    if isinstance(event, bytes):
        return event
    raise InvariantError(f"unexpected event {event!r}")


def drive(reader: RequestReader | ResponseReader, pieces: Iterable[bytes],
          limits: ParseLimits, *, eof: bool = True) -> list[Any]:
    """Feed ``pieces`` (empty ones are skipped), then end of stream when ``eof``; return
    the normalized events. Raises :class:`InvariantError` on a broken invariant and
    lets any exception other than HttpError escape."""
    expected_error = UpstreamProtocolError if isinstance(reader, ResponseReader) else HttpError
    bound = buffer_bound(limits)
    events: list[Any] = []
    at_eof = False
    budget = 16

    def add(event: object) -> None:
        summary = summarize(event)
        if isinstance(summary, bytes) and events and isinstance(events[-1], bytes):
            events[-1] += summary
        else:
            events.append(summary)

    def drain() -> bool:
        """Pull events until the reader wants data; True when the stream is over."""
        nonlocal budget
        while True:
            budget -= 1
            if budget < 0:
                raise InvariantError("events keep coming without new bytes")
            event = reader.next_event()
            if event is NEED_DATA:
                if at_eof:
                    raise InvariantError("NEED_DATA after end of stream")
                if reader.buffered > bound:
                    raise InvariantError(
                        f"{reader.buffered} bytes buffered while waiting (bound {bound})")
                return False
            if event is CLOSED:
                if not at_eof:
                    raise InvariantError("CLOSED before end of stream")
                return True
            add(event)

    try:
        for piece in pieces:
            if not piece:
                continue
            budget += 3 * len(piece) + 4
            before = reader.buffered
            reader.feed(piece)
            if reader.buffered != before + len(piece):
                raise InvariantError("feed() lost or invented bytes")
            drain()
        if eof:
            at_eof = True
            budget += 8
            reader.feed(b"")
            drain()
    except HttpError as exc:
        if not isinstance(exc, expected_error):
            raise InvariantError(f"{type(exc).__name__} from {type(reader).__name__}"
                                     ) from exc
        if not 400 <= exc.status <= 599:
            raise InvariantError(f"error status {exc.status}") from exc
        for _ in range(2):
            try:
                event = reader.next_event()
            except HttpError:
                continue
            raise InvariantError(f"reader returned {event!r} after {exc!r}") from exc
        events.append(("error", exc.status))
    return events


def drive_requests(pieces: Iterable[bytes], limits: ParseLimits, *,
                   eof: bool = True) -> list[Any]:
    return drive(RequestReader(limits), pieces, limits, eof=eof)


def drive_responses(pieces: Iterable[bytes], limits: ParseLimits, *, head: bool = False,
                    eof: bool = True) -> list[Any]:
    reader = ResponseReader(limits)
    reader.expect_response(head)
    return drive(reader, pieces, limits, eof=eof)


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length, sorted, deduplicated)."""
    if not data:
        return []
    points = sorted({c % len(data) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# -- one fuzz input (the atheris target's format; also the tests/fuzz_corpus/http1 files) --

FUZZ_LIMITS = ParseLimits(max_request_line=256, max_header_bytes=1024, max_headers=10,
                          max_chunk_extension=16, max_body=4096)


def decode(data: bytes) -> tuple[int, list[int], bytes]:
    """Byte 0 picks the mode (0/1: requests with/without end of stream, 2/3: responses
    to a GET/HEAD), byte 1 the number of cuts (0-8), then two bytes per cut offset; the
    rest is the payload. (Plain slicing, so seed inputs are easy to write.)"""
    if len(data) < 2:
        return 0, [], data
    count = data[1] % 9
    end = min(2 + 2 * count, len(data))
    cuts = [int.from_bytes(data[i:i + 2], "big") for i in range(2, end - 1, 2)]
    return data[0] % 4, cuts, data[end:]


def _without_status(events: list[Any]) -> list[Any]:
    return [("error",) if isinstance(e, tuple) and e[0] == "error" else e for e in events]


def check_fuzz_input(data: bytes) -> list[Any]:
    """Run one encoded input (see :func:`decode`) through :func:`drive`, whole and split
    at its cut points; the invariants hold and the split changes nothing. Returns the
    events of the whole payload."""
    mode, cuts, payload = decode(data)
    pieces = split(payload, cuts)
    if mode < 2:
        eof = mode == 0
        whole = drive_requests([payload], FUZZ_LIMITS, eof=eof)
        parts = drive_requests(pieces, FUZZ_LIMITS, eof=eof)
    else:
        head = mode == 3
        whole = drive_responses([payload], FUZZ_LIMITS, head=head)
        parts = drive_responses(pieces, FUZZ_LIMITS, head=head)
    if _without_status(whole) != _without_status(parts):
        raise InvariantError(f"split changed the events: {whole!r} != {parts!r}")
    return whole
