"""Fuzz tests of the upstream response framing and the chunked decoder (hypothesis).

test_http1_fuzz.py feeds the response reader arbitrary bytes (checked for totality and
bounded buffering by the shared driver, http1_invariants.py) but only checks split
invariance and exact framing for requests. Here, for responses:

(a) a well-formed response head (Content-Length, chunked, read-until-close, a no-body
    status or a response to HEAD, after optional interim responses) followed by arbitrary
    bytes;
(b) a chunked response whose chunk-size lines, extensions, chunk data and trailers are
    arbitrary (mostly near-valid) bytes.

For every input: only UpstreamProtocolError escapes (checked by the driver, with errors
final and buffering bounded), the body the reader returns never holds more bytes than
were sent after the head (nor more than Content-Length), it is a prefix of those bytes
when the framing leaves nothing to decode (Content-Length, until close), and the events
are the same however the bytes are split, byte by byte included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from li_httpd.workers.http1 import ParseLimits

from .http1_invariants import drive_responses, split

LIMITS = ParseLimits(max_request_line=256, max_header_bytes=1024, max_headers=10,
                     max_chunk_extension=16, max_body=4096)

FAST = settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])

cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@dataclass(frozen=True)
class Head:
    wire: bytes
    framing: str
    """"length", "chunked", "close" (read until close) or "none"."""
    length: int | None
    head_request: bool


_NO_BODY = (204, 304)


@st.composite
def heads(draw: st.DrawFn) -> Head:
    head_request = draw(st.booleans())
    status = draw(st.sampled_from([200, 201, 204, 206, 304, 400, 404, 500, 502, 599]))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    lines = [draw(st.sampled_from([b"HTTP/1.1 ", b"HTTP/1.0 "])) + b"%d x\r\n" % status]
    length = None
    if framing == "length":
        length = draw(st.integers(min_value=0, max_value=200))
        lines.append(b"Content-Length: %d\r\n" % length)
    elif framing == "chunked":
        lines.append(draw(st.sampled_from([b"Transfer-Encoding: chunked\r\n",
                                           b"transfer-encoding: Chunked\r\n"])))
    if draw(st.booleans()):
        lines.insert(1, b"X-A: b\r\n")
    interim = draw(st.sampled_from([b"", b"HTTP/1.1 100 Continue\r\n\r\n",
                                    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"]))
    if head_request or status in _NO_BODY:
        framing = "none"
    return Head(interim + b"".join(lines) + b"\r\n", framing, length, head_request)


_TAIL_FRAGMENTS = [
    b"\r\n", b"\r", b"\n", b"0", b"0\r\n\r\n", b"5\r\nhello\r\n", b"ffffffffffffffff",
    b"10000000000000000", b"-1", b";", b";e=v", b'"', b"X-T: 1\r\n", b":", b" ", b"\t",
    b"\x00", b"\xff", b"HTTP/1.1 200 OK\r\n\r\n", b"a", b"A", b"0x5",
]
tails = (st.binary(max_size=300)
         | st.lists(st.sampled_from(_TAIL_FRAGMENTS) | st.binary(max_size=6),
                    max_size=30).map(b"".join))


def _body(events: list[Any]) -> bytes:
    """The body of the first response: its bytes up to its END (the reader goes on to
    read the next response on the connection after that)."""
    first = events[:events.index("END")] if "END" in events else events
    return b"".join(e for e in first if isinstance(e, bytes))


def _first_is_the_head(events: list[Any]) -> bool:
    return bool(events) and isinstance(events[0], tuple) and events[0][0] == "response"


def _without_status(events: list[Any]) -> list[Any]:
    return [("error",) if isinstance(e, tuple) and e[0] == "error" else e for e in events]


def check_response(data: bytes, head_request: bool, cut_points: list[int]) -> list[Any]:
    """Drive ``data`` whole, split at ``cut_points`` and byte by byte, with and without
    end of stream; the events must agree. Returns the events of the whole stream."""
    whole = drive_responses([data], LIMITS, head=head_request)
    pieces = split(data, cut_points)
    assert _without_status(drive_responses(pieces, LIMITS, head=head_request)) == \
        _without_status(whole)
    bytewise = [data[i:i + 1] for i in range(len(data))]
    assert _without_status(drive_responses(bytewise, LIMITS, head=head_request)) == \
        _without_status(whole)
    open_whole = drive_responses([data], LIMITS, head=head_request, eof=False)
    assert _without_status(drive_responses(pieces, LIMITS, head=head_request, eof=False)) \
        == _without_status(open_whole)
    assert sum(len(e) for e in whole if isinstance(e, bytes)) <= len(data)
    return whole


@FAST
@given(head=heads(), tail=tails, cut_points=cuts)
@example(head=Head(b"HTTP/1.1 200 x\r\nContent-Length: 3\r\n\r\n", "length", 3, False),
         tail=b"abcdef", cut_points=[40])
@example(head=Head(b"HTTP/1.1 200 x\r\nTransfer-Encoding: chunked\r\n\r\n", "chunked", None,
                   False), tail=b"5\r\nhel", cut_points=[])
def test_arbitrary_bytes_after_a_valid_response_head(head: Head, tail: bytes,
                                                     cut_points: list[int]) -> None:
    events = check_response(head.wire + tail, head.head_request, cut_points)
    assert _first_is_the_head(events), events  # valid; interim responses are dropped
    body = _body(events)
    assert len(body) <= len(tail)
    if head.framing == "none":
        assert body == b""
        assert "END" in events
    elif head.framing == "length":
        assert head.length is not None
        assert body == tail[:head.length]
        assert ("END" in events) == (len(tail) >= head.length)
    elif head.framing == "close":
        assert body == tail
    # chunked: the body is decoded from the tail, so at most its length (checked above)


# -- (b) arbitrary chunk-size lines, extensions, data and trailers --------------------------

_HEX = "0123456789abcdefABCDEF"
size_lines = st.one_of(
    st.builds(lambda n, f: (f % n).encode(), st.integers(0, 40),
              st.sampled_from(["%x", "%X", "%03x"])),
    st.text(_HEX, min_size=1, max_size=20).map(str.encode),
    st.sampled_from([b"", b" 5", b"5 ", b"+5", b"-1", b"0x5", b"5\t", b"g", b"\xff",
                     b"ffffffffffffffff", b"10000000000000000"]),
    st.binary(max_size=8))
extensions = st.one_of(
    st.just(b""),
    st.sampled_from([b";a", b";a=b", b';q="x y"', b";" + b"e" * 20, b"; a = b", b";=",
                     b';"', b";\x00", b";a=\xff"]),
    st.binary(max_size=10).map(lambda b: b";" + b))
line_ends = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"", b"\r\r\n"])
trailer_lines = st.one_of(
    st.sampled_from([b"X-T: 1", b"x-t:", b"X-T : 1", b" X-T: 1", b"X-T", b":v",
                     b"X-T: \x00", b"X-T: " + b"v" * 1100, b"Content-Length: 5"]),
    st.binary(max_size=16))


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 5))):
        line = draw(size_lines)
        out += line + draw(extensions) + draw(line_ends)
        try:
            size = int(line, 16)
        except ValueError:
            size = draw(st.integers(0, 8))
        size = max(size, 0)
        size = min(size, 64) if draw(st.booleans()) else draw(st.integers(0, 64))
        out += draw(st.binary(min_size=size, max_size=size)) + draw(line_ends)
    if draw(st.booleans()):
        out += b"0" + draw(extensions) + draw(line_ends)
        for line in draw(st.lists(trailer_lines, max_size=3)):
            out += line + draw(line_ends)
        out += draw(line_ends)
    if draw(st.booleans()):
        out += draw(st.binary(max_size=20))
    return out


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@FAST
@given(encoded=chunked_bodies(), cut_points=cuts)
@example(encoded=b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n", cut_points=[3, 9])
@example(encoded=b"5;" + b"e" * 40 + b"\r\nhello\r\n0\r\n\r\n", cut_points=[])
@example(encoded=b"ffffffffffffffff\r\nab", cut_points=[])
def test_arbitrary_chunked_framing(encoded: bytes, cut_points: list[int]) -> None:
    events = check_response(CHUNKED_HEAD + encoded, False, cut_points)
    # Each chunk's data appears verbatim in the encoding: the body is never longer.
    assert len(_body(events)) <= len(encoded)
    assert _first_is_the_head(events), events


@FAST
@given(encoded=chunked_bodies())
def test_the_chunked_decoder_never_reads_past_the_terminating_chunk(encoded: bytes) -> None:
    """Bytes after the end of a chunked message are never part of its body: the body
    decoded from ``encoded + extra`` equals the one decoded from ``encoded`` whenever
    ``encoded`` alone is a complete message."""
    events = drive_responses([CHUNKED_HEAD + encoded], LIMITS)
    if "END" not in events:
        return
    extra = b"5\r\nXXXXX\r\n0\r\n\r\n"
    longer = drive_responses([CHUNKED_HEAD + encoded + extra], LIMITS)
    assert _body(longer) == _body(events)
    assert "END" in longer
