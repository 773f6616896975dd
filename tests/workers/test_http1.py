"""Unit tests of the strict HTTP/1.1 framing core (workers/http1.py), without sockets.

Every reader test goes through :func:`drive` (tests/workers/http1_invariants.py), which
also checks the readers' invariants (only HttpError escapes, errors are final, bounded
buffering, no NEED_DATA after end of stream) on every input used here.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
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
    parse_request_head,
    parse_response_head,
)

from .http1_invariants import drive_requests, drive_responses, split

LIMITS = ParseLimits(max_request_line=128, max_header_bytes=512, max_headers=8,
                     max_chunk_extension=16, max_body=1024)
HOST = b"Host: example.com\r\n"


def request(method: bytes = b"GET", target: bytes = b"/", headers: bytes = HOST,
            body: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return method + b" " + target + b" " + version + b"\r\n" + headers + b"\r\n" + body


def head(data: bytes, limits: ParseLimits = LIMITS) -> RequestHead:
    return parse_request_head(data, limits)


def status_of(data: bytes, limits: ParseLimits = LIMITS) -> int:
    with pytest.raises(HttpError) as caught:
        parse_request_head(data, limits)
    return caught.value.status


def request_events(data: bytes | list[bytes], limits: ParseLimits = LIMITS,
                   eof: bool = True) -> list[object]:
    return drive_requests([data] if isinstance(data, bytes) else data, limits, eof=eof)


def body_of(events: list[object]) -> bytes:
    return b"".join(e for e in events if isinstance(e, bytes))


def error_of(events: list[object]) -> int | None:
    last = events[-1] if events else None
    return last[1] if isinstance(last, tuple) and last[0] == "error" else None


# -- request heads ------------------------------------------------------------------------


def test_simple_get_head() -> None:
    parsed = head(b"GET /v1/models?limit=2&x HTTP/1.1\r\nHost: api.example.com\r\n"
                  b"Accept: */*\r\nX-Trace: AbC\r\nx-trace: second\r\n\r\n")
    assert parsed.method == b"GET"
    assert parsed.target == b"/v1/models?limit=2&x"
    assert parsed.path == b"/v1/models"
    assert parsed.query == b"limit=2&x"
    assert parsed.version == b"1.1"
    assert parsed.host == b"api.example.com"
    # Names are lowercased, values kept as sent, order and repetitions preserved.
    assert parsed.headers == [(b"host", b"api.example.com"), (b"accept", b"*/*"),
                              (b"x-trace", b"AbC"), (b"x-trace", b"second")]
    assert parsed.keep_alive and not parsed.has_body and not parsed.chunked
    assert parsed.content_length is None and not parsed.expect_continue


@pytest.mark.parametrize(("target", "path", "query"), [
    (b"/", b"/", None),
    (b"/a?", b"/a", b""),
    (b"/a?b?c", b"/a", b"b?c"),
    (b"/a/b%20c?q=%2F", b"/a/b%20c", b"q=%2F"),
])
def test_path_and_query_split(target: bytes, path: bytes, query: bytes | None) -> None:
    parsed = head(request(target=target))
    assert (parsed.path, parsed.query) == (path, query)


def test_header_values_lose_surrounding_whitespace() -> None:
    """RFC 9112 §5: OWS before and after a field value is not part of the value."""
    parsed = head(request(headers=b"Host:  example.com \r\nX-A:\t b c\t \r\n"
                                  b"Content-Length: 3 \r\n"))
    assert parsed.headers == [(b"host", b"example.com"), (b"x-a", b"b c"),
                              (b"content-length", b"3")]
    assert parsed.content_length == 3


@pytest.mark.parametrize(("version", "connection", "keep_alive"), [
    (b"HTTP/1.1", b"", True),
    (b"HTTP/1.1", b"Connection: close\r\n", False),
    (b"HTTP/1.1", b"Connection: Close\r\n", False),
    (b"HTTP/1.1", b"Connection: keep-alive\r\n", True),
    (b"HTTP/1.1", b"Connection: keep-alive, close\r\n", False),
    (b"HTTP/1.1", b"Connection: x-model ,  CLOSE \r\n", False),
    (b"HTTP/1.1", b"Connection: keep-alive\r\nConnection: close\r\n", False),
    (b"HTTP/1.1", b"Connection: closed\r\n", True),
    (b"HTTP/1.1", b"Connection: upgrade\r\nUpgrade: websocket\r\n", True),
    (b"HTTP/1.0", b"", False),
    (b"HTTP/1.0", b"Connection: keep-alive\r\n", True),
    (b"HTTP/1.0", b"Connection: Keep-Alive\r\n", True),
    (b"HTTP/1.0", b"Connection: x, keep-alive\r\n", True),
    # RFC 9112 §9.3: "close" wins over everything, on HTTP/1.0 too.
    (b"HTTP/1.0", b"Connection: keep-alive, close\r\n", False),
    (b"HTTP/1.0", b"Connection: keep-alive\r\nConnection: close\r\n", False),
])
def test_keep_alive_rules(version: bytes, connection: bytes, keep_alive: bool) -> None:
    parsed = head(request(version=version, headers=HOST + connection))
    assert parsed.keep_alive is keep_alive


def test_connection_tokens_are_collected_lowercase() -> None:
    parsed = head(request(headers=HOST + b"Connection: X-Model, ,Keep-Alive\r\n"
                                         b"Connection: TE\r\n"))
    assert parsed.connection_tokens == (b"x-model", b"keep-alive", b"te")


def test_host_rules() -> None:
    assert head(request(version=b"HTTP/1.0", headers=b"")).host is None
    assert status_of(request(headers=b"")) == 400
    assert status_of(request(headers=HOST + HOST)) == 400
    assert status_of(request(headers=HOST + b"host: other\r\n")) == 400


@pytest.mark.parametrize("value", [
    b"example.com", b"EXAMPLE.com:8080", b"127.0.0.1", b"[::1]", b"[::1]:443",
    b"a-b.c", b"",  # RFC 9112 §3.2: an empty Host is how a client says "no authority"
])
def test_valid_host_values(value: bytes) -> None:
    assert head(request(headers=b"Host: " + value + b"\r\n")).host == value


@pytest.mark.parametrize("value", [
    b"a b", b"a/b", b"user@example.com", b"a,b", b"a:b:c", b"a:123456", b"a:", b"[::1",
    b"a_b", b"\x80", b"a;b", b"a\\b", b"a%20b",
])
def test_invalid_host_values(value: bytes) -> None:
    assert status_of(request(headers=b"Host: " + value + b"\r\n")) == 400


@pytest.mark.parametrize(("value", "length"), [
    (b"0", 0), (b"5", 5), (b"000012", 12), (b"999999999999999999", 999999999999999999),
])
def test_valid_content_length(value: bytes, length: int) -> None:
    parsed = head(request(b"POST", headers=HOST + b"Content-Length: " + value + b"\r\n"))
    assert parsed.content_length == length
    assert parsed.has_body is (length > 0)


@pytest.mark.parametrize("value", [
    b"", b"+5", b"-1", b"5 5", b"0x10", b"1e3", b"5,5", b"5, 5", b"five", b"\xb5",
    b"1000000000000000000", b"99999999999999999999999",
])
def test_invalid_content_length(value: bytes) -> None:
    data = request(b"POST", headers=HOST + b"Content-Length: " + value + b"\r\n")
    assert status_of(data) == 400


@pytest.mark.parametrize("fields", [
    b"Content-Length: 5\r\nContent-Length: 5\r\n",
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Content-Length: 5\r\ncontent-length: 5\r\n",
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked, chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Transfer-Encoding: ,chunked\r\n",
    b"Transfer-Encoding: chunked,\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Transfer-Encoding: identity\r\n",
    b"Transfer-Encoding: xchunked\r\n",
    b"Transfer-Encoding: chunk\r\n",
    b"Transfer-Encoding: \"chunked\"\r\n",
    b"Transfer-Encoding: chunked;q=1\r\n",
    b"Transfer-Encoding:\x0bchunked\r\n",
    b"Transfer-Encoding : chunked\r\n",
    b"Transfer-Encoding:\r\n chunked\r\n",
])
def test_ambiguous_framing_is_refused(fields: bytes) -> None:
    assert status_of(request(b"POST", headers=HOST + fields)) == 400


def test_transfer_encoding_trailing_tab_is_refused_by_llhttp() -> None:
    """A quirk: llhttp refuses "chunked<TAB>" (but not "chunked<SP>"). Refusing is safe."""
    data = request(b"POST", headers=HOST + b"Transfer-Encoding: chunked\t\r\n")
    assert status_of(data) == 400


def test_underscore_lookalikes_are_ordinary_fields() -> None:
    """``Transfer_Encoding`` is another field name, not framing: the body is framed by
    Content-Length. (Such a field only reaches an upstream through an egress allowlist.)"""
    parsed = head(request(b"POST", headers=HOST + b"Transfer_Encoding: chunked\r\n"
                                                  b"Content-Length: 5\r\n"))
    assert parsed.content_length == 5 and not parsed.chunked


@pytest.mark.parametrize("value", [b"", b" ", b"\t"])
def test_an_empty_transfer_encoding_is_refused(value: bytes) -> None:
    """An empty Transfer-Encoding is not "absent": a server that skips it frames the
    body one way while one that reads it as a (broken) coding frames it another."""
    data = request(b"POST", headers=HOST + b"Transfer-Encoding:" + value + b"\r\n",
                   body=b"0\r\n\r\n")
    assert status_of(data) == 400


@pytest.mark.parametrize("value", [b"", b"0", b"60"])
def test_a_long_field_name_never_becomes_framing(value: bytes) -> None:
    """A 270-byte name that starts with "content-length" (270 = 256 + 14: a length kept
    in 8 bits would wrap to the length of "content-length") is an ordinary field;
    framing comes from the exact Content-Length field only, whatever its neighbours."""
    lookalike = b"Content-Length0" + b"a" * 255
    assert len(lookalike) == 270
    parsed = head(request(b"POST", headers=HOST + lookalike + b": " + value + b"\r\n"
                                            + b"Content-Length: 5\r\n"))
    assert parsed.content_length == 5 and not parsed.chunked
    assert (lookalike.lower(), value) in parsed.headers


def test_transfer_encoding_on_http10_is_refused() -> None:
    data = request(b"POST", version=b"HTTP/1.0", headers=b"Transfer-Encoding: chunked\r\n")
    assert status_of(data) == 400


@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b"CHUNKED", b"chunked  "])
def test_chunked_is_case_insensitive(value: bytes) -> None:
    parsed = head(request(b"POST", headers=HOST + b"Transfer-Encoding: " + value + b"\r\n"))
    assert parsed.chunked and parsed.has_body and parsed.content_length is None


def test_one_authorization_header_at_most() -> None:
    assert head(request(headers=HOST + b"Authorization: Bearer a\r\n")).headers
    twice = request(headers=HOST + b"Authorization: Bearer a\r\nAuthorization: Bearer b\r\n")
    assert status_of(twice) == 400


@pytest.mark.parametrize("name", [b"X-Model", b"x-agent-id", b"X-Request-Id"])
def test_a_decision_header_appears_at_most_once(name: bytes) -> None:
    once = request(headers=HOST + name + b": a\r\nX-Other: 1\r\nX-Other: 2\r\n")
    assert head(once).headers  # other repeated headers are the upstream's business
    twice = request(headers=HOST + name + b": a\r\nAccept: */*\r\n" + name + b": b\r\n")
    assert status_of(twice) == 400
    with pytest.raises(HttpError, match="repeated"):
        head(twice)


def test_route_literal_names_join_the_single_valued_headers() -> None:
    limits = dataclasses.replace(LIMITS, single_headers=LIMITS.single_headers | {b"x-tier"})
    twice = request(headers=HOST + b"X-Tier: gold\r\nx-tier: free\r\n")
    assert status_of(twice, limits) == 400
    assert head(twice).headers  # without a route reading it, not the gateway's concern


def test_expect() -> None:
    parsed = head(request(b"POST", headers=HOST + b"Expect: 100-Continue\r\n"
                                                  b"Content-Length: 3\r\n"))
    assert parsed.expect_continue
    # RFC 9110 §10.1.1: an HTTP/1.0 request's 100-continue is ignored (no 1xx to 1.0).
    parsed = head(request(b"POST", headers=HOST + b"Expect: 100-continue\r\n"
                                                  b"Content-Length: 3\r\n",
                          version=b"HTTP/1.0"))
    assert not parsed.expect_continue
    for value in (b"foo", b"100-continue, foo", b"200-ok", b""):
        data = request(b"POST", headers=HOST + b"Expect: " + value + b"\r\n")
        assert status_of(data) == 417, value


@pytest.mark.parametrize(("line", "status"), [
    (b"GET / HTTP/1.2", 505),
    (b"GET / HTTP/2.0", 505),
    (b"GET / HTTP/0.9", 505),
    (b"GET / HTTP/3.0", 505),
    (b"PRI * HTTP/2.0", 505),
    (b"GET / HTTP/1.10", 400),
    (b"GET / HTTP/01.1", 400),
    (b"GET / http/1.1", 400),
    (b"GET / HTTP/1", 400),
    (b"GET / HTTP/1.1 ", 400),
    (b"GET /", 400),                      # HTTP/0.9
    (b"GET", 400),
    (b"", 400),
    (b"GET  / HTTP/1.1", 400),            # two spaces (llhttp accepts these)
    (b" GET / HTTP/1.1", 400),
    (b"GET\t/ HTTP/1.1", 400),
    (b"GET / \tHTTP/1.1", 400),
    (b"GET /a b HTTP/1.1", 400),
    (b"get / HTTP/1.1", 400),             # methods are case-sensitive; llhttp knows none
    (b"FOO / HTTP/1.1", 400),             # unknown to llhttp's method table
    (b"G(T / HTTP/1.1", 400),
    (b"GET http://example.com/ HTTP/1.1", 400),   # absolute-form
    (b"GET example.com:80 HTTP/1.1", 400),
    (b"CONNECT example.com:443 HTTP/1.1", 400),   # authority-form / tunnels
    (b"CONNECT /x HTTP/1.1", 400),
    (b"OPTIONS * HTTP/1.1", 400),         # asterisk-form: stricter than RFC 9112 §3.2.4
    (b"GET /a#frag HTTP/1.1", 400),
    (b"GET /\x00 HTTP/1.1", 400),
    (b"GET /\x7f HTTP/1.1", 400),
    (b"GET /\xff HTTP/1.1", 400),         # a bad target is not a bad version
])
def test_bad_request_lines(line: bytes, status: int) -> None:
    assert status_of(line + b"\r\n" + HOST + b"\r\n") == status


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE",
                                    b"OPTIONS", b"PURGE", b"QUERY"])
def test_methods_llhttp_knows_are_accepted(method: bytes) -> None:
    assert head(request(method)).method == method


@pytest.mark.parametrize("fields", [
    b"X-A: b\r\n c\r\n",                   # obs-fold
    b"X-A: b\r\n\tc\r\n",
    b"X-A : b\r\n",                        # whitespace before the colon
    b"X-A\t: b\r\n",
    b": b\r\n",                            # empty name
    b"X A: b\r\n",
    b"X@A: b\r\n",
    b"X(A): b\r\n",
    b"X\"A: b\r\n",
    b"X/A: b\r\n",
    b"X\x00A: b\r\n",
    b"X-A: b\x00c\r\n",
    b"X-A: b\x01c\r\n",
    b"X-A: b\x1fc\r\n",
    b"X-A: b\x7fc\r\n",
    b"X-A: b\x0bc\r\n",
    b"X-A: b\x0cc\r\n",
    b"X-A: b\rc\r\n",                      # bare CR
    b"X-A: b\r\r\n",
    b"X-A: b\nX-B: c\r\n",                 # bare LF
    b"X-A: b\n\r\n",
    b"NoColon\r\n",
    b"\xffX: b\r\n",
])
def test_malformed_fields(fields: bytes) -> None:
    assert status_of(request(headers=HOST + fields)) == 400


def test_field_values_may_hold_tab_and_obs_text() -> None:
    parsed = head(request(headers=HOST + b"X-A: a\tb \x80\xff\r\n"))
    assert parsed.headers[-1] == (b"x-a", b"a\tb \x80\xff")


def test_header_count_limit() -> None:
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(LIMITS.max_headers - 1))
    assert len(head(request(headers=HOST + fields)).headers) == LIMITS.max_headers
    assert status_of(request(headers=HOST + fields + b"X-last: v\r\n")) == 431


def test_parse_request_head_is_total_on_fragments() -> None:
    for data in (b"", b"\r\n", b"\r\n\r\n", b"GET / HTTP/1.1", b"GET / HTTP/1.1\r\n",
                 b"\x00\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\n"):
        with pytest.raises(HttpError):
            parse_request_head(data, LIMITS)


# -- response heads -----------------------------------------------------------------------


def test_response_head() -> None:
    parsed = parse_response_head(b"HTTP/1.1 201 Created Here\r\nContent-Type: a/b\r\n"
                                 b"Content-Length: 2\r\n\r\n", LIMITS)
    assert (parsed.status, parsed.reason, parsed.version) == (201, b"Created Here", b"1.1")
    assert parsed.headers == [(b"content-type", b"a/b"), (b"content-length", b"2")]
    assert parsed.content_length == 2 and parsed.keep_alive and not parsed.chunked
    assert parse_response_head(b"HTTP/1.1 204\r\n\r\n", LIMITS).reason == b""


@pytest.mark.parametrize(("version", "connection", "keep_alive"), [
    (b"HTTP/1.1", b"", True),
    (b"HTTP/1.1", b"Connection: close\r\n", False),
    (b"HTTP/1.0", b"", False),
    (b"HTTP/1.0", b"Connection: keep-alive\r\n", True),
    (b"HTTP/1.0", b"Connection: keep-alive, close\r\n", False),
])
def test_response_keep_alive_rules(version: bytes, connection: bytes, keep_alive: bool) -> None:
    parsed = parse_response_head(version + b" 200 OK\r\n" + connection +
                                 b"Content-Length: 0\r\n\r\n", LIMITS)
    assert parsed.keep_alive is keep_alive


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 20 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 099 OK\r\n\r\n",
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.2 200 OK\r\n\r\n",
    b"ICY 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\x00\r\n\r\n",
    b"http/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A : b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: b\nX-B: c\r\n\r\n",
])
def test_malformed_response_heads_are_502(data: bytes) -> None:
    with pytest.raises(UpstreamProtocolError) as caught:
        parse_response_head(data, LIMITS)
    assert caught.value.status == 502 and isinstance(caught.value, HttpError)


# -- request readers ----------------------------------------------------------------------

PIPELINE = b"".join([
    b"\r\n",                                                     # tolerated empty line
    request(b"GET", b"/one"),
    request(b"POST", b"/two", HOST + b"Content-Length: 11\r\n", b"hello world"),
    request(b"POST", b"/three", HOST + b"Transfer-Encoding: chunked\r\n",
            b"5;name=value\r\nhello\r\n1\r\n \r\n000005\r\nworld\r\n0\r\n"
            b"X-Trailer: t\r\n\r\n"),
    request(b"HEAD", b"/four", HOST + b"Content-Length: 0\r\n"),
    request(b"PUT", b"/five", HOST + b"Content-Length: 4\r\nExpect: 100-continue\r\n",
            b"GET "),
    request(b"GET", b"/six", HOST + b"Connection: close\r\n"),
])


def test_pipelined_requests_in_one_feed() -> None:
    events = request_events(PIPELINE)
    heads = [e for e in events if isinstance(e, tuple)]
    assert [(h[1], h[2]) for h in heads] == [
        (b"GET", b"/one"), (b"POST", b"/two"), (b"POST", b"/three"), (b"HEAD", b"/four"),
        (b"PUT", b"/five"), (b"GET", b"/six")]
    assert events.count("END") == 6
    assert [e for e in events if isinstance(e, bytes)] == [b"hello world", b"hello world",
                                                           b"GET "]
    assert error_of(events) is None


def test_event_sequence_is_independent_of_splits() -> None:
    whole = request_events(PIPELINE)
    assert request_events([bytes([b]) for b in PIPELINE]) == whole
    for offset in range(1, len(PIPELINE)):
        assert request_events([PIPELINE[:offset], PIPELINE[offset:]]) == whole, offset
    rng = random.Random(1234)
    for _ in range(200):
        cuts = [rng.randrange(len(PIPELINE)) for _ in range(rng.randrange(1, 30))]
        assert request_events(split(PIPELINE, cuts)) == whole


def test_split_independence_also_for_errors() -> None:
    data = request(b"GET", b"/ok") + request(b"POST", b"/bad", HOST + b"Transfer-Encoding:"
                                             b" chunked\r\n", b"5\r\nhelloXX")
    whole = request_events(data)
    assert error_of(whole) == 400
    for offset in range(1, len(data)):
        assert request_events([data[:offset], data[offset:]]) == whole, offset


def test_reader_api_between_messages() -> None:
    reader = RequestReader(LIMITS)
    assert reader.buffered == 0 and reader.next_event() is NEED_DATA
    reader.feed(request(b"POST", b"/a", HOST + b"Content-Length: 3\r\n", b"abcGET"))
    assert isinstance(reader.next_event(), RequestHead)
    assert reader.next_event() == b"abc" and reader.body_bytes == 3
    assert reader.next_event() is END
    assert reader.buffered == 3  # the start of a pipelined request stays buffered
    assert reader.next_event() is NEED_DATA
    reader.feed(b" /b HTTP/1.1\r\n" + HOST + b"\r\n")
    second = reader.next_event()
    assert isinstance(second, RequestHead) and second.path == b"/b"
    assert reader.next_event() is END and reader.buffered == 0
    reader.feed(b"")
    assert reader.next_event() is CLOSED
    assert reader.next_event() is CLOSED


def test_content_length_body_in_pieces() -> None:
    reader = RequestReader(LIMITS)
    reader.feed(request(b"POST", b"/", HOST + b"Content-Length: 10\r\n", b"0123"))
    assert isinstance(reader.next_event(), RequestHead)
    assert reader.next_event() == b"0123"
    assert reader.next_event() is NEED_DATA
    reader.feed(b"456789GET / HTTP/1.1\r\n")
    assert reader.next_event() == b"456789"
    assert reader.next_event() is END
    assert reader.body_bytes == 10
    assert reader.next_event() is NEED_DATA


def test_content_length_bodies_are_not_capped_by_the_reader() -> None:
    """The connection actor compares Content-Length with max_body before reading."""
    body = b"x" * (LIMITS.max_body + 1)
    events = request_events(request(b"POST", b"/", HOST + b"Content-Length: %d\r\n"
                                    % len(body), body))
    assert body_of(events) == body and events[-1] == "END"


def test_chunked_body_with_extensions_and_trailers() -> None:
    chunked = (b"3;a=b;c=\"d e\"\r\nabc\r\n"
               b"0A\r\n0123456789\r\n"
               b"0000000000000001\r\n!\r\n"           # 16 hex digits: the most allowed
               b"0;last\r\nX-Checksum: 1\r\nX-Other:\r\n\r\n")
    events = request_events(request(b"POST", b"/", HOST + b"Transfer-Encoding: chunked\r\n",
                                    chunked))
    assert body_of(events) == b"abc0123456789!"
    assert events[-1] == "END"


def chunked_request(chunked: bytes) -> bytes:
    return request(b"POST", b"/", HOST + b"Transfer-Encoding: chunked\r\n", chunked)


def test_chunk_extension_at_the_cap_and_one_over() -> None:
    cap = LIMITS.max_chunk_extension
    at_cap = b"1;" + b"e" * cap + b"\r\nx\r\n0\r\n\r\n"
    assert body_of(request_events(chunked_request(at_cap))) == b"x"
    over = b"1;" + b"e" * (cap + 1) + b"\r\nx\r\n0\r\n\r\n"
    assert error_of(request_events(chunked_request(over))) == 400
    # The cap also holds before the line ends: no waiting for a CRLF that never comes.
    endless = chunked_request(b"1;" + b"e" * (cap + 20))
    assert error_of(request_events(endless, eof=False)) == 400


@pytest.mark.parametrize("chunked", [
    b"zz\r\n",                              # not hex
    b"-5\r\nhello\r\n0\r\n\r\n",            # negative
    b"+5\r\nhello\r\n0\r\n\r\n",
    b"0x5\r\nhello\r\n0\r\n\r\n",
    b" 5\r\nhello\r\n0\r\n\r\n",
    b"5 \r\nhello\r\n0\r\n\r\n",
    b"5 ;a\r\nhello\r\n0\r\n\r\n",          # BWS before ";": stricter than RFC 9112 §7.1.1
    b"\r\nhello\r\n0\r\n\r\n",              # empty size
    b";a\r\nhello\r\n0\r\n\r\n",
    b"00000000000000005\r\nhello\r\n0\r\n\r\n",   # 17 digits, even with a small value
    b"10000000000000000\r\nhello\r\n",     # 2**64: overflow
    b"5\r\nhelloXX0\r\n\r\n",               # chunk data not followed by CRLF
    b"5\r\nhello\n0\r\n\r\n",
    b"5\r\nhello\r0\r\n\r\n",
    b"5\nhello\r\n0\r\n\r\n",               # bare LF after the size
    b"5\rhello\r\n0\r\n\r\n",               # bare CR after the size
    b"5;a=\x00\r\nhello\r\n0\r\n\r\n",      # control bytes in an extension
    b"5;a=\x7f\r\nhello\r\n0\r\n\r\n",
    b"5;a\rb\r\nhello\r\n0\r\n\r\n",
    b"0\r\nbad name: x\r\n\r\n",           # invalid trailer names
    b"0\r\n: x\r\n\r\n",
    b"0\r\nno-colon\r\n\r\n",
    b"0\r\n folded: x\r\n\r\n",
    b"0\r\nX-A: b\nX-B: c\r\n\r\n",
    b"0\r\nX-A: b\x00c\r\n\r\n",          # control bytes in trailer values
    b"0\r\nX-A: \x01\r\n\r\n",
    b"0\r\nX-A: b\x7f\r\n\r\n",
    b"0\r\n\n",
])
def test_invalid_chunked_framing(chunked: bytes) -> None:
    assert error_of(request_events(chunked_request(chunked))) == 400


def test_trailer_section_size_is_capped() -> None:
    trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 50) for i in range(12))
    assert len(trailers) > LIMITS.max_header_bytes
    assert error_of(request_events(chunked_request(b"0\r\n" + trailers + b"\r\n"))) == 400
    one_long = b"0\r\nX-T: " + b"v" * (LIMITS.max_header_bytes + 1)
    assert error_of(request_events(chunked_request(one_long), eof=False)) == 400


def test_chunked_body_cap() -> None:
    cap = LIMITS.max_body
    exact = b"%x\r\n%s\r\n0\r\n\r\n" % (cap, b"a" * cap)
    assert len(body_of(request_events(chunked_request(exact)))) == cap
    pieces = b"%x\r\n%s\r\n1\r\nb\r\n0\r\n\r\n" % (cap, b"a" * cap)
    events = request_events(chunked_request(pieces))
    assert error_of(events) == 413
    huge = b"ffffffffffffffff\r\n" + b"a" * (cap + 1)
    assert error_of(request_events(chunked_request(huge), eof=False)) == 413


@pytest.mark.parametrize(("data", "status"), [
    (b"GET / HTTP/1.1\r\nHost: a\r\n", 400),                                 # inside a head
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r", 400),
    (request(b"POST", headers=HOST + b"Content-Length: 5\r\n", body=b"abc"), 400),
    (chunked_request(b"5\r\nhel"), 400),
    (chunked_request(b"5\r\nhello"), 400),
    (chunked_request(b"5\r\nhello\r\n"), 400),
    (chunked_request(b"5\r\nhello\r\n0\r\n"), 400),                           # no final CRLF
    (chunked_request(b"5\r\nhello\r\n0\r\nX-T: 1\r\n"), 400),
])
def test_end_of_stream_inside_a_request_is_an_error(data: bytes, status: int) -> None:
    assert error_of(request_events(data)) == status


def test_end_of_stream_between_requests_is_clean() -> None:
    assert request_events(b"") == []
    assert request_events([b"\r\n"]) == []
    assert request_events(request())[-1] == "END"


def test_leading_empty_lines() -> None:
    assert request_events(b"\r\n" * 8 + request())[-1] == "END"
    assert error_of(request_events(b"\r\n" * 9 + request())) == 400
    # The count holds across feeds: the split must not change the verdict.
    assert error_of(request_events([b"\r", b"\n"] * 9 + [request()])) == 400
    assert request_events([b"\r\n"] * 8 + [request()])[-1] == "END"
    assert error_of(request_events(b"\n" + request())) == 400


def test_bare_lf_is_refused_before_the_head_ends() -> None:
    """A bare-LF client that never sends CRLF CRLF is refused at once, not left to
    time out (stock nginx would accept it as a line ending)."""
    assert error_of(request_events(b"GET / HTTP/1.1\nHost: a\n\n", eof=False)) == 400
    assert error_of(request_events([b"GET / HTTP/1.1\r\n", b"Host: a\n"], eof=False)) == 400


# -- limits, each with its status ---------------------------------------------------------

def _line_of(length: int) -> bytes:
    """A request line of exactly ``length`` bytes."""
    prefix, suffix = b"GET /", b" HTTP/1.1"
    return prefix + b"a" * (length - len(prefix) - len(suffix)) + suffix


def _fields_of(length: int) -> bytes:
    """Header fields (Host first) whose block, counted from the CRLF that ends the
    request line to the end of the head, is exactly ``length`` bytes."""
    filler = length - 4 - len(HOST) - len(b"X: \r\n")
    return HOST + b"X: " + b"v" * filler + b"\r\n"


def test_limits_at_the_cap_pass() -> None:
    line = _line_of(LIMITS.max_request_line)
    assert request_events(line + b"\r\n" + HOST + b"\r\n")[-1] == "END"
    fields = _fields_of(LIMITS.max_header_bytes)
    assert request_events(b"GET / HTTP/1.1\r\n" + fields + b"\r\n")[-1] == "END"
    # A partial line exactly at the cap still waits for more.
    assert request_events(line, eof=False) == []


@pytest.mark.parametrize(("name", "data", "status"), [
    ("request line", _line_of(LIMITS.max_request_line + 1) + b"\r\n" + HOST + b"\r\n", 414),
    ("request line, unterminated", _line_of(LIMITS.max_request_line + 1), 414),
    ("request line, huge", b"GET /" + b"a" * 100_000, 414),
    ("header block", b"GET / HTTP/1.1\r\n" + _fields_of(LIMITS.max_header_bytes + 1)
     + b"\r\n", 431),
    ("header block, unterminated", b"GET / HTTP/1.1\r\n" + HOST + b"X: " + b"v" * 2000, 431),
    ("header count", b"GET / HTTP/1.1\r\n" + HOST
     + b"".join(b"X-%d: v\r\n" % i for i in range(LIMITS.max_headers)) + b"\r\n", 431),
    ("chunk extension", chunked_request(b"1;" + b"e" * (LIMITS.max_chunk_extension + 1)
                                        + b"\r\nx\r\n0\r\n\r\n"), 400),
    ("chunked body", chunked_request(b"%x\r\n" % (LIMITS.max_body + 1)
                                     + b"a" * (LIMITS.max_body + 1)), 413),
    ("expectation", request(headers=HOST + b"Expect: gzip\r\n"), 417),
    ("version", request(version=b"HTTP/1.2"), 505),
])
def test_each_request_limit_has_its_status(name: str, data: bytes, status: int) -> None:
    assert error_of(request_events(data, eof=False)) == status, name
    # Byte by byte the verdict is the same (limits are enforced while bytes arrive).
    assert error_of(request_events([bytes([b]) for b in data[:3000]] + [data[3000:]],
                                   eof=False)) == status, name


@pytest.mark.parametrize(("name", "data"), [
    ("status line", b"HTTP/1.1 200 " + b"r" * 200 + b"\r\n\r\n"),
    ("status line, unterminated", b"HTTP/1.1 200 " + b"r" * 200),
    ("header block", b"HTTP/1.1 200 OK\r\nX: " + b"v" * 600 + b"\r\n\r\n"),
    ("header count", b"HTTP/1.1 200 OK\r\n"
     + b"".join(b"X-%d: v\r\n" % i for i in range(LIMITS.max_headers + 1)) + b"\r\n"),
    ("chunk extension", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;"
     + b"e" * 17 + b"\r\nx\r\n0\r\n\r\n"),
])
def test_each_response_limit_is_a_502(name: str, data: bytes) -> None:
    assert error_of(drive_responses([data], LIMITS, eof=False)) == 502, name


# -- response readers ---------------------------------------------------------------------


def response_events(data: bytes | list[bytes], *, head: bool = False,
                    eof: bool = True) -> list[object]:
    return drive_responses([data] if isinstance(data, bytes) else data, LIMITS, head=head,
                           eof=eof)


def test_response_with_content_length() -> None:
    events = response_events(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert events[0][:2] == ("response", 200)
    assert events[1:] == [b"hello", "END"]


def test_interim_responses_are_skipped() -> None:
    data = (b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 102 Processing\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    events = response_events(data)
    assert [e[1] for e in events if isinstance(e, tuple)] == [200]
    assert events[-2:] == [b"ok", "END"]
    for offset in range(1, len(data)):
        assert response_events([data[:offset], data[offset:]]) == events


def test_an_unsolicited_protocol_switch_is_an_error() -> None:
    """The gateway never asks for a switch: a 101 is a broken upstream, whatever follows
    (here an HTTP response a lenient reader would frame and relay)."""
    data = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    for offset in range(1, len(data)):
        events = response_events([data[:offset], data[offset:]])
        assert error_of(events) == 502, (offset, events)
        assert not any(isinstance(e, tuple) and e[0] == "response" for e in events)


@pytest.mark.parametrize(("status_line", "head"), [
    (b"HTTP/1.1 200 OK", True),
    (b"HTTP/1.1 204 No Content", False),
    (b"HTTP/1.1 304 Not Modified", False),
])
def test_bodiless_responses(status_line: bytes, head: bool) -> None:
    """No body whatever the framing headers say; what follows is the next response."""
    for framing in (b"Content-Length: 10\r\n", b"Transfer-Encoding: chunked\r\n", b""):
        first = status_line + b"\r\n" + framing + b"\r\n"
        second = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
        events = response_events(first + second, head=head)
        if head:
            assert events.count("END") == 2 and b"x" not in events
        else:
            assert events[1] == "END"
            assert events[2][1] == 200 and events[3:] == [b"x", "END"]


def test_chunked_response_with_trailers() -> None:
    data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\ndata\r\n5;x=y\r\n: yes\r\n0\r\nX-Usage: 12\r\n\r\n")
    events = response_events(data)
    assert events[0][6] is True  # chunked
    assert events[1:] == [b"data: yes", "END"]


@pytest.mark.parametrize("size_line", [b"5 ", b" 5", b"5\t", b"5 ;a=b"])
def test_whitespace_around_an_upstream_chunk_size_is_a_502(size_line: bytes) -> None:
    """As strict as for requests: a parser elsewhere in the chain that skips (or does
    not skip) such blanks would disagree on where the body ends."""
    data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size_line
            + b"\r\nhello\r\n0\r\n\r\n")
    assert error_of(response_events(data)) == 502


def test_chunked_response_is_not_capped() -> None:
    size = LIMITS.max_body * 4
    data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
            % (size, b"z" * size))
    assert len(body_of(response_events(data))) == size


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK"])
def test_close_delimited_response(status_line: bytes) -> None:
    data = status_line + b"\r\nContent-Type: text/plain\r\n\r\npart one, "
    events = response_events([data, b"part two"])
    assert events[0][7] is False  # keep_alive: the close ends the body
    assert events[1:] == [b"part one, part two", "END"]
    # Without end of stream the body simply continues.
    assert response_events(data, eof=False)[-1] == b"part one, "


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Le",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
])
def test_truncated_responses_raise(data: bytes) -> None:
    assert error_of(response_events(data)) == 502


def test_end_of_stream_before_a_response_is_closed() -> None:
    assert response_events(b"") == []
    assert response_events(b"HTTP/1.1 100 Continue\r\n\r\n") == []


def test_extra_bytes_after_a_response_stay_buffered() -> None:
    reader = ResponseReader(LIMITS)
    reader.expect_response(False)
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nC")
    assert reader.next_event().status == 200  # type: ignore[union-attr]
    assert reader.next_event() == b"ok"
    assert reader.next_event() is END
    assert reader.buffered == len(b"HTTP/1.1 200 OK\r\nC")  # the pool refuses such a conn
    junk = response_events(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokjunk\r\n\r\n")
    assert junk[-2:] == ["END", ("error", 502)]


def test_response_split_independence() -> None:
    data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            b"HTTP/1.1 204 No Content\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nxyz"
            b"HTTP/1.0 200 OK\r\n\r\nuntil close")
    whole = response_events(data)
    assert whole.count("END") == 4
    assert response_events([bytes([b]) for b in data]) == whole
    for offset in range(1, len(data)):
        assert response_events([data[:offset], data[offset:]]) == whole, offset


def test_response_errors_are_upstream_protocol_errors() -> None:
    reader = ResponseReader(LIMITS)
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n")
    with pytest.raises(UpstreamProtocolError) as caught:
        reader.next_event()
    assert caught.value.status == 502
    with pytest.raises(UpstreamProtocolError):
        reader.next_event()


def _tiny_chunks(count: int, size: int = 1) -> bytes:
    return (b"%x\r\n" % size + b"a" * size + b"\r\n") * count + b"0\r\n\r\n"


def test_a_flood_of_tiny_chunks_is_refused_by_the_chunk_budget() -> None:
    """Past CHUNKS_FREE chunks a body must average MIN_AVERAGE_CHUNK bytes a chunk: a
    megabyte in one-byte chunks costs milliseconds, not seconds, and is refused."""
    from li_httpd.workers.http1 import CHUNKS_FREE, MIN_AVERAGE_CHUNK
    limits = dataclasses.replace(LIMITS, max_body=1 << 20, max_header_bytes=1 << 16)
    post = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    flood = request_events(post + _tiny_chunks(1 << 20), limits)
    assert error_of(flood) == 400
    assert len(body_of(flood)) == CHUNKS_FREE  # nothing past the budget was decoded
    within = request_events(post + _tiny_chunks(CHUNKS_FREE), limits)
    assert body_of(within) == b"a" * CHUNKS_FREE and within[-1] == "END"
    fair = request_events(post + _tiny_chunks(2 * CHUNKS_FREE, MIN_AVERAGE_CHUNK), limits)
    assert len(body_of(fair)) == 2 * CHUNKS_FREE * MIN_AVERAGE_CHUNK and fair[-1] == "END"


def test_the_chunk_budget_holds_for_upstream_responses_too() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    flood = response_events(head + _tiny_chunks(1 << 16))
    assert error_of(flood) == 502


def test_chunks_decoded_from_one_read_come_as_one_piece() -> None:
    post = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    events = request_events(post + _tiny_chunks(50, 3))
    assert [e for e in events if isinstance(e, bytes)] == [b"aaa" * 50]


def test_one_body_event_decodes_at_most_chunks_per_event_chunks() -> None:
    """Thousands of small chunks in one read come out as bounded events: after each full
    batch the reader says it paused (the caller yields), and nothing is lost or repeated
    across the pauses, also when a paused chunk line carries an extension."""
    from li_httpd.workers.http1 import CHUNKS_PER_EVENT
    count = 2 * CHUNKS_PER_EVENT + 7
    body = (b"1;e=x\r\nb\r\n" + _tiny_chunks(count - 1)[:-5]) + b"0\r\n\r\n"
    reader = RequestReader(dataclasses.replace(LIMITS, max_body=1 << 20))
    reader.feed(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert isinstance(reader.next_event(), RequestHead)
    sizes, pauses = [], []
    while (event := reader.next_event()) is not END:
        assert isinstance(event, bytes), event
        sizes.append(len(event))
        pauses.append(reader.paused)
    assert sizes == [CHUNKS_PER_EVENT, CHUNKS_PER_EVENT, 7]
    assert pauses == [True, True, False]
    assert not reader.paused and reader.body_bytes == count
    response = ResponseReader(LIMITS)
    response.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert isinstance(response.next_event(), ResponseHead)
    first = response.next_event()
    assert first == b"b" + b"a" * (CHUNKS_PER_EVENT - 1) and response.paused


@pytest.mark.parametrize("line", [b"GET /http09\r\n", b"GET  /x HTTP/1.1\r\n",
                                  b"GET /x HTTP/1.32\r\nHost: a\r\n", b"PRI * HTTP/2.0\r\n"])
def test_a_malformed_request_line_is_refused_before_the_head_ends(line: bytes) -> None:
    """The request line is checked as soon as it is complete: an HTTP/0.9 line (which
    never gets a blank line after it) is refused at once, not at the header timeout."""
    reader = RequestReader(LIMITS)
    reader.feed(line)
    with pytest.raises(HttpError) as caught:
        reader.next_event()
    assert caught.value.status in (400, 505)


def test_a_well_formed_request_line_waits_for_the_rest_of_the_head() -> None:
    reader = RequestReader(LIMITS)
    reader.feed(b"GET /x HTTP/1.1\r\nHost: a\r\n")
    assert reader.next_event() is NEED_DATA
    reader.feed(b"\r\n")
    assert isinstance(reader.next_event(), RequestHead)
