"""Fuzz tests of the SSE event-boundary scanner and relay (workers/sse.py, hypothesis).

Streams are made of SSE-like fragments (fields, comments, every line end, stray bytes)
or arbitrary bytes, and split into pieces at arbitrary points:

- the scanner agrees with a plain reference reading of the whole stream (split into
  lines at ``\\r\\n``, ``\\r`` or ``\\n``; an event ends at a blank line after a
  non-blank one), however the stream is split: same event count, same boundary state;
- the relay forwards a prefix of the stream (the rest is what :meth:`finish` gives
  back): after each piece, the stream up to the last event end, or all of it when it
  stands between events;
- with a hold limit small enough to be exceeded, nothing is lost, and the client's side
  ends between events whenever the relay says so.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from li_httpd.workers.sse import SseRelay, SseScanner

FAST = settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])

_FRAGMENTS = [b"data: x", b"data:", b"event: e", b": c", b"id: 1", b"\n", b"\r", b"\r\n",
              b"\n\n", b"\r\n\r\n", b"\r\r", b"a", b"{", b"\xff"]
streams = st.one_of(st.binary(max_size=200),
                    st.lists(st.sampled_from(_FRAGMENTS), max_size=40).map(b"".join))

_LINES = re.compile(rb"\r\n|\r|\n")


def _reference(stream: bytes) -> tuple[int, bool, int]:
    """(events, at a boundary, offset just past the last event end) of a whole stream."""
    events = 0
    open_event = False
    last_end = 0
    position = 0
    for match in _LINES.finditer(stream):
        line = stream[position:match.start()]
        if line:
            open_event = True
        elif open_event:
            events += 1
            open_event = False
            last_end = match.start() + 1  # the blank line's first line-end byte
        position = match.end()
    at_boundary = not open_event and position == len(stream)
    return events, at_boundary, last_end


def _split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(stream)) for cut in cuts})
    pieces, start = [], 0
    for point in [*points, len(stream)]:
        pieces.append(stream[start:point])
        start = point
    return pieces


@FAST
@given(streams, st.lists(st.integers(0, 200), max_size=12))
def test_the_scanner_matches_the_reference_however_the_stream_is_split(
        stream: bytes, cuts: list[int]) -> None:
    scanner = SseScanner()
    for piece in _split(stream, cuts):
        scanner.feed(piece)
    events, at_boundary, _ = _reference(stream)
    assert (scanner.events, scanner.at_boundary) == (events, at_boundary)


@FAST
@given(streams, st.lists(st.integers(0, 200), max_size=12))
def test_the_relay_forwards_exactly_the_complete_events(stream: bytes,
                                                        cuts: list[int]) -> None:
    relay = SseRelay(chunked=True)
    forwarded = b""
    seen = b""
    boundary = 0  # the last piece's end at which the stream stood between events
    for piece in _split(stream, cuts):
        seen += piece
        forwarded += relay.relay(piece)
        _, at_boundary, last_end = _reference(seen)
        if at_boundary:
            boundary = len(seen)
        assert forwarded == seen[:max(boundary, last_end)]
    assert forwarded + relay.finish() == stream


@FAST
@given(streams, st.lists(st.integers(0, 200), max_size=12), st.integers(0, 40))
def test_the_client_side_ends_between_events_unless_an_event_outgrew_the_limit(
        stream: bytes, cuts: list[int], hold_limit: int) -> None:
    """With a small hold limit: nothing is lost or reordered, what the client has is
    between events whenever the relay says so, and the error end starts with a blank
    line exactly when it is not."""
    relay = SseRelay(chunked=False, hold_limit=hold_limit)
    forwarded = b""
    for piece in _split(stream, cuts):
        forwarded += relay.relay(piece)
        if relay.client_between_events:
            assert _reference(forwarded)[1]
    between = relay.client_between_events
    tail = relay.error_end(502, "m", b"r")
    assert tail.startswith(b"\n\nevent: error\n") is not between
    assert stream.startswith(forwarded)
