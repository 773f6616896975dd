"""Table tests of the SSE event-boundary scanner and relay (workers/sse.py)."""

from __future__ import annotations

import orjson
import pytest
from li_httpd.workers.sse import HOLD_LIMIT, SseRelay, SseScanner

# (pieces, events ended, at a boundary after the last piece)
CASES = [
    ([], 0, True),
    ([b"data: a\n\n"], 1, True),
    ([b"data: a\n"], 0, False),
    ([b"data: a"], 0, False),
    ([b"data: a\n\ndata: b"], 1, False),
    ([b"data: a\r\n\r\n"], 1, True),
    ([b"data: a\r\r"], 1, True),
    ([b"data: a\r\n"], 0, False),
    ([b"data: a\r", b"\n"], 0, False),
    ([b"data: a\r", b"\n", b"\r", b"\n"], 1, True),
    ([b"data: a\n\r", b"\n"], 1, True),  # the \n completes the blank line's \r\n
    ([b"data: a\n\n\n\n"], 1, True),  # blank lines after an event start none
    ([b"\n\n\r\n"], 0, True),
    ([b"event: x\ndata: 1\ndata: 2\n\n"], 1, True),
    ([b": ping\n\n"], 1, True),  # a comment block counts as an event
    ([b"data: a\n", b"\n", b"data: b\n", b"\n"], 2, True),
    ([b"d", b"a", b"t", b"a", b"\n", b"\n"], 1, True),
    ([b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"], 3, True),
]


@pytest.mark.parametrize(("pieces", "events", "boundary"), CASES)
def test_scanner_table(pieces: list[bytes], events: int, boundary: bool) -> None:
    scanner = SseScanner()
    for piece in pieces:
        scanner.feed(piece)
    assert (scanner.events, scanner.at_boundary) == (events, boundary)


@pytest.mark.parametrize(("data", "end"), [
    (b"data: a\n\n", 9),
    (b"data: a\n\ndata: b", 9),
    (b"data: a\n\ndata: b\n\ndata: c\n", 18),
    (b"data: a", 0),
    (b"data: a\r\n\r\ndata", 10),  # up to the \r that begins the blank line
])
def test_feed_returns_the_end_of_the_last_complete_event(data: bytes, end: int) -> None:
    assert SseScanner().feed(data) == end


def test_relay_holds_a_partial_event_until_it_ends() -> None:
    relay = SseRelay(chunked=True)
    assert relay.relay(b"data: 1\n\ndata: {\"ha") == b"data: 1\n\n"
    assert not relay.complete
    assert relay.relay(b"lf\"}") == b""
    assert relay.relay(b"\n\ndata: 3") == b"data: {\"half\"}\n\n"
    assert relay.finish() == b"data: 3"
    assert relay.error_end(504, "late", b"r") == b""  # the stream already ended


def _event_of(chunked_end: bytes) -> dict[str, object]:
    size, _, rest = chunked_end.partition(b"\r\n")
    event = rest[:int(size, 16)]
    assert rest[int(size, 16):] == b"\r\n0\r\n\r\n"
    assert event.startswith(b"event: error\ndata: ") and event.endswith(b"\n\n")
    parsed: dict[str, object] = orjson.loads(event[len(b"event: error\ndata: "):-2])
    return parsed


def test_error_end_drops_the_held_half_event() -> None:
    relay = SseRelay(chunked=True)
    assert relay.relay(b"data: 1\n\ndata: {\"ha") == b"data: 1\n\n"
    end = relay.error_end(502, "upstream stream broke off", b"r-1")
    assert b"ha" not in end
    assert relay.error_end(504, "stalled", b"r-1") == b""  # one end, never two
    assert _event_of(end) == {"error": {"type": "bad_gateway", "code": 502,
                                        "message": "upstream stream broke off",
                                        "request_id": "r-1"}}


def test_error_end_for_a_close_delimited_response_has_no_chunk_framing() -> None:
    relay = SseRelay(chunked=False)
    end = relay.error_end(504, "upstream stream stalled", b"r-2")
    assert end.startswith(b"event: error\ndata: {") and end.endswith(b"}\n\n")


def test_an_event_beyond_the_hold_limit_flows_and_is_ended_before_the_error() -> None:
    relay = SseRelay(chunked=False)
    big = b"data: " + b"x" * HOLD_LIMIT
    assert relay.client_between_events
    assert relay.relay(big) == big  # too long to hold: forwarded as it comes
    assert not relay.client_between_events
    assert relay.relay(b"yy") == b"yy"
    end = relay.error_end(504, "stalled", b"r-3")
    assert end.startswith(b"\n\nevent: error\n")
    relay = SseRelay(chunked=False)
    relay.relay(big)
    assert relay.relay(b"\n\ndata: next") == b"\n\n"  # the long event ended: hold again
    assert relay.client_between_events and not relay.complete
    assert relay.error_end(504, "m", b"r").startswith(b"event: error\n")
