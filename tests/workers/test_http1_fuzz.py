"""Property and fuzz tests of workers/http1.py (hypothesis).

(a) Arbitrary bytes, split arbitrarily, never make a reader raise anything but HttpError,
    never make it spin, and never make it buffer more than its limits plus one feed
    (checked by :func:`drive`, see http1_invariants.py).
(b) Generated valid request streams (random methods, targets, fields, Content-Length or
    chunked bodies with random chunking, extensions and trailers) parse to exactly the
    generated requests, however the bytes are split.
(c) Differential check against h11 on the same streams, and on mutated streams: whenever
    li-httpd accepts a request, h11 reads the same method, target, fields and body.

An atheris entry point with the same invariant is tests/workers/fuzz_http1_atheris.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import h11
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from li_httpd.workers.http1 import ParseLimits

from .http1_invariants import drive_requests, drive_responses, split

SMALL = ParseLimits(max_request_line=256, max_header_bytes=1024, max_headers=10,
                    max_chunk_extension=16, max_body=4096)
ROOMY = ParseLimits(max_request_line=4096, max_header_bytes=16384, max_headers=100,
                    max_chunk_extension=64, max_body=1 << 20)

FAST = settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=120,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- (a) arbitrary bytes ----------------------------------------------------------------------

_FRAGMENTS = [
    b"GET ", b"POST ", b"HEAD ", b"get ", b"CONNECT ", b"/", b"/a?b#c", b"*", b"http://x/",
    b" HTTP/1.1", b" HTTP/1.0", b" HTTP/1.2", b"HTTP/1.1 200 OK", b"HTTP/1.1 100 Continue",
    b"HTTP/1.0 204 No Content", b"HTTP/1.1 304 x", b"\r\n", b"\r\n\r\n", b"\r", b"\n", b" ",
    b"\t", b":", b";", b",", b"\x00", b"\x7f", b"\xff", b"Host: a", b"host: b:80",
    b"Content-Length: ", b"content-length: 5", b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked", b"Connection: close", b"Connection: keep-alive",
    b"Expect: 100-continue", b"X-A: v", b"0", b"5", b"a", b"ff", b"ffffffffffffffff",
    b"10000000000000000", b"-1", b"hello", b";ext=1", b"0\r\n\r\n", b"X-Trailer: t",
]
http_soup = st.lists(st.sampled_from(_FRAGMENTS) | st.binary(max_size=8), max_size=40).map(
    b"".join)
any_bytes = st.binary(max_size=600) | http_soup
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@FAST
@given(data=any_bytes, cuts=cuts)
@example(data=b"\r\n" * 9 + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", cuts=[])
@example(data=b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"5\r\nhelloXX5\r\nhello\r\n0\r\n\r\n", cuts=[60])
def test_request_reader_is_total_and_bounded(data: bytes, cuts: list[int]) -> None:
    drive_requests(split(data, cuts), SMALL)
    drive_requests(split(data, cuts), SMALL, eof=False)


@FAST
@given(data=any_bytes, cuts=cuts, head=st.booleans())
def test_response_reader_is_total_and_bounded(data: bytes, cuts: list[int],
                                              head: bool) -> None:
    drive_responses(split(data, cuts), SMALL, head=head)
    drive_responses(split(data, cuts), SMALL, head=head, eof=False)


def _without_status(events: list[object]) -> list[object]:
    return [("error",) if isinstance(e, tuple) and e[0] == "error" else e for e in events]


@FAST
@given(data=http_soup, cuts=cuts)
@example(data=b"\r\n" * 9 + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", cuts=[])
def test_arbitrary_bytes_give_the_same_events_however_split(data: bytes,
                                                            cuts: list[int]) -> None:
    """Whatever the bytes, splitting them never changes what is accepted. (Which of two
    violations is reported first may depend on the split, hence errors without status.)"""
    whole = drive_requests([data], SMALL)
    assert _without_status(drive_requests(split(data, cuts), SMALL)) == _without_status(whole)
    bytewise = [data[i:i + 1] for i in range(len(data))]
    assert _without_status(drive_requests(bytewise, SMALL)) == _without_status(whole)


# -- (b) valid request streams ------------------------------------------------------------------

_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_PCHAR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%"
_VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))
_RESERVED_NAMES = {"host", "content-length", "transfer-encoding", "connection", "expect",
                   "te", "trailer", "upgrade", "keep-alive"}

methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
targets = st.builds(
    lambda segments, query: "/" + "/".join(segments) + ("" if query is None else "?" + query),
    st.lists(st.text(_PCHAR, max_size=8), max_size=4),
    st.none() | st.text(_PCHAR + "/?", max_size=12))
field_names = st.text(_TCHAR, min_size=1, max_size=12).filter(
    lambda n: n.lower() not in _RESERVED_NAMES)
field_values = st.builds(
    " ".join,
    st.lists(st.text(_VCHAR + "\x80\xff", min_size=1, max_size=10), max_size=4))
ows = st.sampled_from(["", " ", "  ", "\t", " \t"])


@dataclass(frozen=True)
class GenRequest:
    method: str
    target: str
    fields: list[tuple[str, str]]
    """What the reader must report: (lowercase name, value) in order."""
    wire: bytes
    body: bytes


@st.composite
def requests(draw: st.DrawFn) -> GenRequest:
    method = draw(methods)
    target = draw(targets)
    fields = draw(st.lists(st.tuples(field_names, field_values, ows, ows), max_size=8))
    host = draw(st.sampled_from(["example.com", "api.example.com:8443", "127.0.0.1",
                                 "[::1]:80", "A-b.Example"]))
    position = draw(st.integers(min_value=0, max_value=len(fields)))
    fields.insert(position, ("Host", host, draw(ows), draw(ows)))
    kind = draw(st.sampled_from(["none", "length", "chunked"]))
    body = draw(st.binary(max_size=300)) if kind != "none" else b""
    payload = b""
    if kind == "length":
        fields.append(("Content-Length", str(len(body)), draw(ows), draw(ows)))
        payload = body
    elif kind == "chunked":
        fields.append((draw(st.sampled_from(["Transfer-Encoding", "transfer-encoding"])),
                       draw(st.sampled_from(["chunked", "Chunked"])), draw(ows), ""))
        sizes = draw(st.lists(st.integers(min_value=1, max_value=64), max_size=12))
        offset = 0
        for size in sizes:
            piece = body[offset:offset + size]
            if not piece:
                break
            offset += len(piece)
            digits = draw(st.sampled_from(["%x", "%X", "%04x"])) % len(piece)
            extension = draw(st.sampled_from(["", ";a", ";a=b", ';q="x y"', ";" + "e" * 60]))
            payload += f"{digits}{extension}\r\n".encode() + piece + b"\r\n"
        body = body[:offset]
        trailers = draw(st.lists(st.tuples(field_names, field_values), max_size=3))
        payload += b"0\r\n" + b"".join(f"{n}: {v}\r\n".encode("latin-1")
                                       for n, v in trailers) + b"\r\n"
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(
        f"{name}:{before}{value}{after}\r\n" for name, value, before, after in fields) + "\r\n"
    return GenRequest(method, target, [(n.lower(), v) for n, v, _, _ in fields],
                      head.encode("latin-1") + payload, body)


def _expected(stream: list[GenRequest]) -> list[tuple[bytes, bytes, list[tuple[bytes, bytes]],
                                                      bytes]]:
    return [(r.method.encode(), r.target.encode(),
             [(n.encode("latin-1"), v.encode("latin-1")) for n, v in r.fields], r.body)
            for r in stream]


def _parsed(events: list[object]) -> list[tuple[bytes, bytes, list[tuple[bytes, bytes]],
                                                bytes]]:
    """(method, target, fields, body) per request from normalized events."""
    out: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]] = []
    body = b""
    for event in events:
        if isinstance(event, tuple) and event[0] == "request":
            body = b""
            out.append((event[1], event[2], list(event[4]), b""))
        elif isinstance(event, bytes):
            body += event
        elif event == "END":
            out[-1] = (*out[-1][:3], body)
        else:
            raise AssertionError(f"valid stream rejected: {event!r}")
    return out


streams = st.lists(requests(), min_size=1, max_size=5)


@SLOW
@given(stream=streams, cuts=cuts)
def test_valid_streams_parse_exactly_however_split(stream: list[GenRequest],
                                                   cuts: list[int]) -> None:
    data = b"".join(r.wire for r in stream)
    whole = drive_requests([data], ROOMY)
    assert _parsed(whole) == _expected(stream)
    assert whole.count("END") == len(stream)
    assert drive_requests(split(data, cuts), ROOMY) == whole


@settings(max_examples=25)
@given(stream=streams)
def test_valid_streams_byte_by_byte(stream: list[GenRequest]) -> None:
    data = b"".join(r.wire for r in stream)
    assert drive_requests([data[i:i + 1] for i in range(len(data))], ROOMY) == \
        drive_requests([data], ROOMY)


# -- (c) differential against h11 ---------------------------------------------------------------


def h11_parse(data: bytes) -> tuple[list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]],
                                    bool]:
    """Requests h11 reads from ``data`` as a server would (answering each one, ending the
    connection after one that cannot be followed by another) and whether it rejected
    the rest."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
    out: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]] = []
    body = b""
    try:
        conn.receive_data(data)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return out, False
            if isinstance(event, h11.Request):
                body = b""
                out.append((event.method, event.target, list(event.headers.raw_items()), b""))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                out[-1] = (*out[-1][:3], body)
                conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is h11.MUST_CLOSE:
                    # HTTP/1.0 (h11 never keeps it alive) or Connection: close: a server
                    # closes the connection here and reads nothing more.
                    return out, False
                conn.start_next_cycle()
            else:
                return out, False
    except h11.RemoteProtocolError:
        return out, True


def _canonical(items: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]],
               ) -> list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]]:
    """Lowercase names; h11 also lowercases the Transfer-Encoding value."""
    return [(m, t, [(n.lower(), v.lower() if n.lower() == b"transfer-encoding" else v)
                    for n, v in f], b) for m, t, f, b in items]


@SLOW
@given(stream=streams)
def test_h11_reads_the_same_requests(stream: list[GenRequest]) -> None:
    data = b"".join(r.wire for r in stream)
    ours = _parsed(drive_requests([data], ROOMY))
    theirs, rejected = h11_parse(data)
    assert not rejected
    assert _canonical(ours) == _canonical(theirs)


_MUTATION_BYTES = b"\r\n \t:;,\x00\x7f\x80-0aA/"


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(requests()).wire)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        position = draw(st.integers(min_value=0, max_value=len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = draw(st.sampled_from(list(_MUTATION_BYTES)) | st.integers(0, 255))
        if action == "insert":
            data.insert(position, byte)
        elif position < len(data):
            if action == "delete":
                del data[position]
            else:
                data[position] = byte
    return bytes(data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated())
@example(data=b"GET /?0000000 HTTP/1.0\r\nHost: a\r\n\r\n")  # a mutation to HTTP/1.0
def test_whatever_li_httpd_accepts_h11_reads_alike(data: bytes) -> None:
    """li-httpd is the stricter parser: every request it accepts completely, h11 (looser)
    must read with the same method, target, fields and body."""
    events = drive_requests([data], ROOMY)
    accepted = _parsed([e for e in events[:events.index("END") + 1]]) if "END" in events \
        else []
    if not accepted:
        return
    while data.startswith(b"\r\n"):
        data = data[2:]  # RFC 9112 §2.2 lets a server skip empty lines first; h11 does not
    theirs, _ = h11_parse(data)
    assert theirs, f"h11 refused a request li-httpd accepted: {data!r}"
    assert _canonical(theirs[:1]) == _canonical(accepted)


def test_h11_reference_ends_the_connection_after_an_http10_request() -> None:
    """An HTTP/1.0 request (h11 never keeps 1.0 alive) or ``Connection: close`` ends the
    connection after its response, as a real server would: what follows is not read, and
    is not a rejection. A keep-alive 1.1 connection goes on to the next request."""
    first = b"GET /?0000000 HTTP/1.0\r\nHost: a\r\n\r\n"
    closing = b"GET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    following = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
    assert h11_parse(first + following) == ([(b"GET", b"/?0000000", [(b"Host", b"a")], b"")],
                                            False)
    assert h11_parse(closing + following) == (
        [(b"GET", b"/c", [(b"Host", b"a"), (b"Connection", b"close")], b"")], False)
    assert h11_parse(following + following) == (
        [(b"GET", b"/next", [(b"Host", b"a")], b"")] * 2, False)
