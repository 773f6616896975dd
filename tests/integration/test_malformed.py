"""Malformed, ambiguous and smuggling requests against the real gateway, over raw sockets.

One `li-httpd start` (one worker, small `[limits]`) runs for the module in front of a
recording upstream whose catch-all route proxies everything. Each case opens its own
connection, sends its bytes (in one write, or split into several writes), and checks:

(a) what the client got: the statuses of the responses, in order, and that the gateway
    then closed the connection (or that it closed without answering: "closed");
(b) what reached the upstream: the upstream's bytes are parsed per connection with h11
    (an independent parser), and the complete requests it saw must be exactly the ones
    the gateway should have forwarded. A rejected request must leave no byte upstream:
    with request buffering (the default) even a body that turns out malformed or too
    large late is refused before any upstream is contacted. With
    ``request_buffering = false`` such a body (found broken after more than
    REPLAYABLE_BODY bytes, which workers/proxy.py reads before contacting an upstream and
    then streams) must reach the upstream as an aborted, incomplete request, never as a
    complete one: the cases with ``aborted`` run against such a gateway too. Targets
    containing "smuggled" must never appear in any request line the upstream saw.

Where li-httpd is intentionally stricter than nginx (which is not a strict oracle, see
ENGINEERING.md), the case says so in a comment.
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h11
import pytest
from li_httpd.workers.proxy import REPLAYABLE_BODY

from .conftest import (
    BANNER,
    Gateway,
    RawServer,
    RecordingUpstream,
    _spawn,
    cli_command,
    gateway_config,
)

pytestmark = pytest.mark.integration

MAX_BODY = 2 * REPLAYABLE_BODY
"""Above what the gateway decodes before contacting an upstream, so both regimes (body
refused before any upstream byte / body refused while already streaming) are covered."""
LIMITS = f"""[limits]
max_request_line = "1k"
max_header_bytes = "4k"
max_headers = 20
max_body = "{MAX_BODY // 1024}k"
max_chunk_extension = "64"
header_timeout = "300ms"
"""
HEADER_TIMEOUT = 0.3
READ_TIMEOUT = 4.0
"""Longest wait for the gateway to answer and close; a case that needs it fails."""

CLOSED = "closed"


# -- the recording upstream, parsed per connection ------------------------------------------


@dataclass
class Seen:
    """One request as the upstream saw it."""

    method: str
    target: str
    body: bytes = b""
    complete: bool = False

    def label(self) -> str:
        return f"{self.method} {self.target}" + ("" if self.complete else " (aborted)")


def _requests_in(data: bytes) -> list[Seen]:
    """The requests in one upstream connection's bytes (h11 as the parser)."""
    seen: list[Seen] = []
    if not data:
        return seen  # (h11 takes b"" for end of stream)
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            return seen
        if isinstance(event, h11.Request):
            seen.append(Seen(event.method.decode(), event.target.decode("latin-1")))
        elif isinstance(event, h11.Data):
            seen[-1].body += event.data
        elif isinstance(event, h11.EndOfMessage):
            seen[-1].complete = True
            conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
            conn.send(h11.EndOfMessage())
            conn.start_next_cycle()
        else:
            raise AssertionError(f"unexpected upstream event {event!r}")


class ParsingUpstream(RecordingUpstream):
    """The conftest's recording upstream, keeping one recording per connection and
    answering each *complete* request once (h11 framing: the base class answers every
    CRLF CRLF it sees, so a chunked body holding one would get a second response)."""

    def __init__(self) -> None:
        self.segments: list[bytearray] = []
        super().__init__()

    def clear(self) -> None:
        with self._lock:
            self.received.clear()
            for segment in self.segments:
                segment.clear()

    def seen(self) -> list[Seen]:
        with self._lock:
            segments = [bytes(s) for s in self.segments]
        return [request for data in segments for request in _requests_in(data)]

    def handle(self, conn: socket.socket) -> None:
        record = bytearray()
        with self._lock:
            self.segments.append(record)
        parser = h11.Connection(h11.SERVER)
        conn.settimeout(30)
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                with self._lock:
                    self.received += data
                    record += data
                out = b""
                try:
                    parser.receive_data(data)
                    while (event := parser.next_event()) is not h11.NEED_DATA:
                        if isinstance(event, h11.EndOfMessage):
                            out += parser.send(h11.Response(status_code=200, headers=[
                                ("content-type", "text/plain"), ("content-length", "2")]))
                            out += parser.send(h11.Data(data=b"ok"))
                            out += parser.send(h11.EndOfMessage())
                            parser.start_next_cycle()
                except h11.ProtocolError:
                    return  # keep the recording; the test reports what arrived
                if out:
                    try:
                        conn.sendall(out)
                    except OSError:
                        return


# -- cases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    payload: bytes | tuple[bytes, ...]
    """One write, or a tuple of separate writes."""
    expect: int | tuple[int, ...] | str
    """The final status of each response, in order (1xx skipped), or CLOSED."""
    forwarded: tuple[str, ...] = ()
    """Complete requests the upstream must see, as "METHOD /target", in order."""
    aborted: str | None = None
    """A request whose head reached the upstream but whose body was cut off."""
    body: bytes | None = None
    """The body of the last forwarded request, when the case checks it."""
    delay: float = 0.0
    """Pause between writes."""
    stop_on_answer: bool = True
    """With a delay: stop writing once the gateway answered or closed."""
    half_close: bool = False
    """Shut down the sending side after the last write (end of stream)."""
    within: float | None = None
    """The gateway must have answered and closed within this many seconds."""
    not_before: float = 0.0

    @property
    def writes(self) -> tuple[bytes, ...]:
        return self.payload if isinstance(self.payload, tuple) else (self.payload,)

    @property
    def statuses(self) -> tuple[int, ...] | str:
        return (self.expect,) if isinstance(self.expect, int) else self.expect


H = b"Host: gw.test\r\n"
CLOSE = b"Connection: close\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n"


def req(method: str, target: str, fields: bytes = H, body: bytes = b"",
        version: bytes = b"HTTP/1.1") -> bytes:
    return (method.encode() + b" " + target.encode() + b" " + version + b"\r\n" + fields
            + b"\r\n" + body)


def post(target: str, fields: bytes, body: bytes = b"") -> bytes:
    return req("POST", target, H + fields, body)


def chunked(target: str, body: bytes, *, close: bool = True) -> bytes:
    return post(target, b"Transfer-Encoding: chunked\r\n" + (CLOSE if close else b""), body)


def bytewise(data: bytes) -> tuple[bytes, ...]:
    return tuple(data[i:i + 1] for i in range(len(data)))


def at_cr(data: bytes) -> tuple[bytes, ...]:
    """Split after every CR: each CRLF arrives in two writes."""
    pieces = data.split(b"\r")
    out = [pieces[0] + b"\r"]
    out += [p + b"\r" for p in pieces[1:-1]]
    out.append(pieces[-1])
    return tuple(p for p in out if p)


MANY_EXTENSIONS = b"".join(b"1;ext-%03d=%s\r\n%c\r\n" % (i, b"v" * 40, 97 + i % 26)
                           for i in range(300)) + b"0\r\n\r\n"
MANY_EXTENSIONS_BODY = bytes(97 + i % 26 for i in range(300))
BIG = b"%x\r\n" % (MAX_BODY + 16) + b"b" * (MAX_BODY + 16) + b"\r\n0\r\n\r\n"
STREAMED = b"%x\r\n" % (REPLAYABLE_BODY + 100) + b"s" * (REPLAYABLE_BODY + 100) + b"\r\n"
"""A valid first chunk larger than what is decoded before contacting the upstream."""
TOO_MANY_FIELDS = b"".join(b"X-Field-%02d: v\r\n" % i for i in range(20))
LENGTH_LOOKALIKE = b"Content-Length0" + b"a" * 255

CASES = [
    # --- Content-Length and Transfer-Encoding together (CL.TE / TE.CL) -------------------
    Case("cl_te", post("/cl-te", b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                       b"0\r\n\r\nG"), 400),
    Case("te_cl", post("/te-cl", b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                       b"5c\r\nGPOST /smuggled HTTP/1.1\r\nContent-Length: 15\r\n\r\n"
                       b"x=1\r\n0\r\n\r\n"), 400),
    Case("cl_te_hidden_get", post("/cl-te-get", b"Content-Length: 41\r\n"
                                  b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n" + SMUGGLED),
         400),
    Case("cl0_te", post("/cl0-te", b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
                        b"0\r\n\r\n" + SMUGGLED), 400),
    Case("cl_te_bytewise", bytewise(post("/cl-te-bytewise", b"Content-Length: 41\r\n"
                                         b"Transfer-Encoding: chunked\r\n",
                                         b"0\r\n\r\n" + SMUGGLED)), 400, delay=0.0005),
    # --- Content-Length syntax ---------------------------------------------------------------
    # Stricter than RFC 9110 §8.6, which lets a recipient accept repeated identical values.
    Case("cl_duplicate_equal", post("/cl-dup", b"Content-Length: 5\r\nContent-Length: 5\r\n",
                                    b"hello"), 400),
    Case("cl_duplicate_different", post("/cl-dup2", b"Content-Length: 5\r\n"
                                        b"Content-Length: 46\r\n", b"hello" + SMUGGLED), 400),
    Case("cl_list", post("/cl-list", b"Content-Length: 5, 5\r\n", b"hello"), 400),
    Case("cl_plus_sign", post("/cl-plus", b"Content-Length: +5\r\n", b"hello"), 400),
    Case("cl_negative", post("/cl-neg", b"Content-Length: -1\r\n", b"hello"), 400),
    Case("cl_inner_space", post("/cl-space", b"Content-Length: 1 0\r\n", b"0123456789"), 400),
    Case("cl_hex", post("/cl-hex", b"Content-Length: 0x5\r\n", b"hello"), 400),
    Case("cl_overflow", post("/cl-overflow", b"Content-Length: 18446744073709551621\r\n",
                             b"hello"), 400),
    Case("cl_empty", post("/cl-empty", b"Content-Length: \r\n"), 400),
    # An empty value before a valid one: a server taking the first as 0 would read the
    # body as the next request.
    Case("cl_empty_then_valid", post("/cl-empty-2", b"Content-Length: \r\nContent-Length: %d\r\n"
                                     % len(SMUGGLED), SMUGGLED), 400),
    # A 270-byte name starting with "content-length" (a length kept in 8 bits wraps to
    # 14): an ordinary field; the request hidden in the body stays body.
    Case("cl_name_length_wrap", post("/name-wrap", LENGTH_LOOKALIKE + b":\r\nContent-Length: %d"
                                     b"\r\n" % len(SMUGGLED) + CLOSE, SMUGGLED), 200,
         forwarded=("POST /name-wrap",), body=SMUGGLED),
    # --- Transfer-Encoding values (only a single "chunked" is accepted) ------------------------
    # RFC 9112 §6.1 suggests 501 for an unknown coding (nginx answers 501); SPEC §5: 400.
    Case("te_gzip", post("/te-gzip", b"Transfer-Encoding: gzip\r\n", b"0\r\n\r\n"), 400),
    Case("te_gzip_chunked", post("/te-gz-ch", b"Transfer-Encoding: gzip, chunked\r\n",
                                 b"0\r\n\r\n"), 400),
    Case("te_chunked_chunked", post("/te-ch-ch", b"Transfer-Encoding: chunked, chunked\r\n",
                                    b"0\r\n\r\n"), 400),
    Case("te_leading_comma", post("/te-comma", b"Transfer-Encoding: ,chunked\r\n",
                                  b"0\r\n\r\n"), 400),
    Case("te_identity", post("/te-identity", b"Transfer-Encoding: identity\r\n"
                             b"Content-Length: 5\r\n", b"hello"), 400),
    Case("te_twice", post("/te-twice", b"Transfer-Encoding: chunked\r\n"
                          b"Transfer-Encoding: x\r\n", b"0\r\n\r\n"), 400),
    Case("te_vertical_tab", post("/te-vt", b"Transfer-Encoding:\x0bchunked\r\n",
                                 b"0\r\n\r\n"), 400),
    Case("te_space_before_colon", post("/te-colon", b"Transfer-Encoding : chunked\r\n"
                                       b"Content-Length: 5\r\n", b"0\r\n\r\n"), 400),
    Case("te_obs_fold", post("/te-fold", b"Transfer-Encoding:\r\n chunked\r\n",
                             b"0\r\n\r\n"), 400),
    # Stricter than RFC 9112 §6.1 (which says: treat as faulty framing, close after).
    Case("te_http10", req("POST", "/te-10", H + b"Transfer-Encoding: chunked\r\n",
                          b"0\r\n\r\n", b"HTTP/1.0"), 400),
    # Trailing OWS is not part of a field value (RFC 9112 §5): this *is* chunked, and the
    # body after the last chunk is a pipelined request that the close ends unread.
    Case("te_trailing_space", chunked("/te-space", b"3\r\nabc\r\n0\r\n\r\n" + SMUGGLED)
         .replace(b"chunked\r\n", b"chunked \r\n"), 200,
         forwarded=("POST /te-space",), body=b"abc"),
    Case("te_capitalized", chunked("/te-cap", b"3\r\nabc\r\n0\r\n\r\n")
         .replace(b"chunked", b"Chunked"), 200, forwarded=("POST /te-cap",), body=b"abc"),
    # An empty value is not an absent header: refused, not skipped.
    Case("te_empty", post("/te-empty", b"Transfer-Encoding: \r\n", b"0\r\n\r\n" + SMUGGLED), 400),
    # A lookalike name is an ordinary field (dropped by the ingress allowlist): the body
    # is framed by Content-Length.
    Case("te_underscore_lookalike", post("/te-underscore", b"Transfer_Encoding: chunked\r\n"
                                         b"Content-Length: 5\r\n" + CLOSE, b"hello"), 200,
         forwarded=("POST /te-underscore",), body=b"hello"),
    # --- field syntax -----------------------------------------------------------------------
    Case("obs_fold", req("GET", "/obs-fold", H + b"X-A: b\r\n c\r\n"), 400),
    Case("bare_lf_request_line", b"GET /bare-lf HTTP/1.1\nHost: gw.test\r\n\r\n", 400),
    Case("bare_lf_header", req("GET", "/bare-lf-h", H + b"X-A: b\nX-B: c\r\n"), 400),
    # Stricter than nginx, which accepts bare LF line endings; refused before the head ends.
    Case("bare_lf_only", b"GET /lf-only HTTP/1.1\nHost: gw.test\n\n", 400),
    Case("bare_cr", req("GET", "/bare-cr", H + b"X-A: b\rX-B: c\r\n"), 400),
    Case("nul_in_value", req("GET", "/nul-v", H + b"X-A: b\x00c\r\n"), 400),
    Case("nul_in_name", req("GET", "/nul-n", H + b"X-\x00A: b\r\n"), 400),
    Case("ctl_in_value", req("GET", "/ctl-v", H + b"X-A: b\x01c\r\n"), 400),
    Case("del_in_value", req("GET", "/del-v", H + b"X-A: b\x7fc\r\n"), 400),
    Case("space_before_colon", req("GET", "/sp-colon", H + b"X-A : b\r\n"), 400),
    Case("tab_before_colon", req("GET", "/tab-colon", H + b"X-A\t: b\r\n"), 400),
    Case("empty_name", req("GET", "/empty-name", H + b": b\r\n"), 400),
    Case("name_with_space", req("GET", "/name-sp", H + b"X A: b\r\n"), 400),
    Case("name_with_at", req("GET", "/name-at", H + b"X@A: b\r\n"), 400),
    Case("name_with_slash", req("GET", "/name-slash", H + b"X/A: b\r\n"), 400),
    Case("line_without_colon", req("GET", "/no-colon", H + b"NoColon\r\n"), 400),
    # --- limits -------------------------------------------------------------------------------
    Case("request_line_414", req("GET", "/" + "a" * 1100, H), 414),
    Case("request_line_414_unterminated", b"GET /" + b"a" * 1500, 414),
    Case("header_block_431", req("GET", "/big-head", H + b"X-Big: " + b"v" * 5000 + b"\r\n"),
         431),
    Case("too_many_fields_431", req("GET", "/many", H + TOO_MANY_FIELDS), 431),
    # One header value growing slowly: refused as soon as the buffer passes the cap,
    # long before the header timeout.
    Case("huge_value_slowly", (b"GET /slow-value HTTP/1.1\r\nHost: gw.test\r\nX-Big: ",
                               *(b"v" * 1024 for _ in range(12))), 431, delay=0.01,
         within=HEADER_TIMEOUT),
    Case("body_cl_413", post("/cl-413", b"Content-Length: %d\r\n" % (MAX_BODY + 1)), 413),
    # max_body is above REPLAYABLE_BODY: without request buffering, by the time a chunked
    # body is too large the first REPLAYABLE_BODY bytes are streaming upstream; the
    # request ends there, aborted (``aborted``: what an unbuffered gateway's upstream sees).
    Case("body_chunked_413", chunked("/chunked-413", BIG), 413, aborted="POST /chunked-413"),
    Case("chunk_error_while_streaming", chunked("/late-error", STREAMED + b"zz\r\n"), 400,
         aborted="POST /late-error"),
    # --- chunked body framing (the head was valid: the request was already streaming) --------
    Case("chunk_size_not_hex", chunked("/chunk-zz", b"zz\r\nhello\r\n0\r\n\r\n"), 400),
    Case("chunk_size_negative", chunked("/chunk-neg", b"-5\r\nhello\r\n0\r\n\r\n"), 400),
    Case("chunk_size_17_digits", chunked("/chunk-17", b"00000000000000005\r\nhello\r\n"
                                         b"0\r\n\r\n"), 400),
    Case("chunk_size_overflow", chunked("/chunk-overflow", b"10000000000000005\r\nhello\r\n"
                                        b"0\r\n\r\n"), 400),
    Case("chunk_size_16_digits", chunked("/chunk-16", b"ffffffffffffffff\r\n"
                                         + b"c" * (MAX_BODY + 16)), 413,
         aborted="POST /chunk-16"),
    Case("chunk_missing_crlf", chunked("/chunk-nocrlf", b"5\r\nhelloXX" + SMUGGLED), 400),
    # Stricter than nginx, which accepts bare LF in chunk lines.
    Case("chunk_bare_lf", chunked("/chunk-lf", b"5\nhello\r\n0\r\n\r\n"), 400),
    # Stricter than nginx (no limit on chunk extensions): 64 bytes here.
    Case("chunk_extension_too_long", chunked("/chunk-ext", b"5;" + b"e" * 65 +
                                             b"\r\nhello\r\n0\r\n\r\n"), 400),
    Case("chunk_extension_at_cap", chunked("/chunk-ext-cap", b"5;" + b"e" * 64 +
                                           b"\r\nhello\r\n0\r\n\r\n"), 200,
         forwarded=("POST /chunk-ext-cap",), body=b"hello"),
    Case("chunk_extension_ctl", chunked("/chunk-ext-ctl", b"5;a=\x01\r\nhello\r\n0\r\n\r\n"),
         400),
    # Each extension is under its cap, but together they exceed max_header_bytes (4k):
    # extensions and trailers of one message share that budget.
    Case("many_chunks_with_extensions", chunked("/many-ext", MANY_EXTENSIONS), 400),
    Case("a_few_chunks_with_extensions", chunked("/few-ext", MANY_EXTENSIONS[:55 * 20]
                                                  + b"0\r\n\r\n"), 200,
         forwarded=("POST /few-ext",), body=MANY_EXTENSIONS_BODY[:20]),
    Case("trailer_invalid_name", chunked("/trailer-bad", b"5\r\nhello\r\n0\r\n"
                                         b"bad name: x\r\n\r\n"), 400),
    Case("trailer_without_colon", chunked("/trailer-nocolon", b"0\r\nX-Trailer\r\n\r\n"),
         400),
    Case("trailer_valid_dropped", chunked("/trailer-ok", b"5\r\nhello\r\n0\r\n"
                                          b"X-Checksum: 1\r\n\r\n"), 200,
         forwarded=("POST /trailer-ok",), body=b"hello"),
    # --- smuggling through bodies and pipelining ----------------------------------------------
    Case("chunk_data_holds_request", chunked("/chunk-hides", b"%x\r\n%s\r\n0\r\n\r\n"
                                             % (len(SMUGGLED), SMUGGLED)), 200,
         forwarded=("POST /chunk-hides",), body=SMUGGLED),
    Case("cl_body_holds_request", post("/cl-hides", b"Content-Length: %d\r\n" % len(SMUGGLED)
                                       + CLOSE, SMUGGLED), 200,
         forwarded=("POST /cl-hides",), body=SMUGGLED),
    Case("close_then_hidden_request", req("GET", "/first", H + CLOSE) + SMUGGLED, 200,
         forwarded=("GET /first",)),
    Case("pipelined_after_malformed", req("GET", "/first", H) + req("GET", "/bad", H +
                                                                    b"X-A : b\r\n") + SMUGGLED,
         (200, 400), forwarded=("GET /first",)),
    Case("pipelined_valid", req("GET", "/p1", H) + post("/p2", b"Content-Length: 3\r\n", b"abc")
         + chunked("/p3", b"2\r\nxy\r\n0\r\n\r\n"), (200, 200, 200),
         forwarded=("GET /p1", "POST /p2", "POST /p3"), body=b"xy"),
    Case("bytewise_body_holds_request", bytewise(post("/split", b"Content-Length: %d\r\n"
                                                      % len(SMUGGLED) + CLOSE, SMUGGLED)), 200,
         forwarded=("POST /split",), body=SMUGGLED, delay=0.0005),
    Case("split_between_cr_and_lf", at_cr(req("GET", "/crlf-split", H) +
                                                chunked("/crlf-split2", b"3\r\nabc\r\n0\r\n\r\n")),
         (200, 200), forwarded=("GET /crlf-split", "POST /crlf-split2"), body=b"abc",
         delay=0.002, stop_on_answer=False),
    # --- request line ------------------------------------------------------------------------
    # Stricter than nginx, which accepts absolute-form targets.
    Case("absolute_form", b"GET http://gw.test/abs HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400),
    Case("connect_authority_form", b"CONNECT upstream.test:443 HTTP/1.1\r\n"
                                   b"Host: upstream.test:443\r\n\r\n", 400),
    # Stricter than RFC 9112 §3.2.4: asterisk-form is refused, there is no server-wide
    # OPTIONS here.
    Case("options_asterisk", b"OPTIONS * HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400),
    # Stricter than nginx, which still speaks HTTP/0.9.
    Case("http09", b"GET /http09\r\n\r\n", 400),
    Case("http09_then_eof", b"GET /http09\r\n", 400, half_close=True),
    # nginx takes any HTTP/1.x as 1.1 (even HTTP/1.32).
    Case("http_1_2", req("GET", "/v12", H, version=b"HTTP/1.2"), 505),
    Case("http_2_0", req("GET", "/v20", H, version=b"HTTP/2.0"), 505),
    Case("h2_preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    Case("version_lowercase", req("GET", "/v-lower", H, version=b"http/1.1"), 400),
    Case("lowercase_method", req("get", "/lower", H), 400),
    Case("unknown_method", req("FROB", "/frob", H), 400),
    Case("two_spaces", b"GET  /two-spaces HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400),
    Case("tab_separator", b"GET\t/tab HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400),
    Case("nul_in_target", b"GET /nul\x00 HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400),
    Case("fragment", req("GET", "/frag#x", H), 400),
    Case("missing_host", req("GET", "/no-host", b""), 400),
    Case("repeated_host", req("GET", "/two-hosts", H + b"Host: other.test\r\n"), 400),
    Case("invalid_host", req("GET", "/bad-host", b"Host: gw.test/evil\r\n"), 400),
    Case("host_with_userinfo", req("GET", "/userinfo", b"Host: user@gw.test\r\n"), 400),
    Case("http10_without_host", req("GET", "/ten", b"", version=b"HTTP/1.0"), 200,
         forwarded=("GET /ten",)),
    Case("expect_unknown", post("/expect", b"Expect: 200-ok\r\nContent-Length: 5\r\n",
                                b"hello"), 417),
    # --- encoded traversal (router's path normalization; the connection stays usable, so
    # the requests ask for close) ---------------------------------------------------------
    Case("encoded_dotdot", req("GET", "/a/%2e%2e/etc", H + CLOSE), 400),
    Case("encoded_dotdot_upper", req("GET", "/a/%2E%2E/etc", H + CLOSE), 400),
    Case("encoded_slash", req("GET", "/a%2fb", H + CLOSE), 400),
    Case("encoded_backslash", req("GET", "/a%5cb", H + CLOSE), 400),
    Case("encoded_nul", req("GET", "/a%00b", H + CLOSE), 400),
    Case("raw_dotdot", req("GET", "/a/../b", H + CLOSE), 400),
    # --- timeouts and end of stream ------------------------------------------------------------
    Case("partial_head_408", b"GET /partial HTTP/1.1\r\nHost: gw.test\r\n", 408,
         within=HEADER_TIMEOUT + 1.0, not_before=HEADER_TIMEOUT - 0.05),
    # A slowloris keeps sending header bytes; the header timeout still ends it.
    Case("slowloris", (b"GET /slowloris HTTP/1.1\r\nHost: gw.test\r\n",
                       *(b"X-%d: %d\r\n" % (i, i) for i in range(60))), 408, delay=0.05,
         within=HEADER_TIMEOUT + 1.0, not_before=HEADER_TIMEOUT - 0.05),
    Case("eof_inside_head", b"GET /eof HTTP/1.1\r\nHost: gw", 400, half_close=True),
    Case("eof_inside_cl_body", post("/eof-body", b"Content-Length: 10\r\n", b"abc"), 400,
         half_close=True),
    Case("empty_connection", b"", CLOSED, half_close=True),
    Case("only_empty_lines", b"\r\n\r\n", CLOSED, half_close=True),
]


# -- fixtures and driver ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[ParsingUpstream]:
    server = ParsingUpstream()
    yield server
    server.close()


def _start(upstream: ParsingUpstream, tmp_path_factory: pytest.TempPathFactory,
           extra: str) -> Gateway:
    path: Path = tmp_path_factory.mktemp("malformed") / "gateway.toml"
    config = gateway_config(upstream.origin, routes='"/" = "proxy:main"\n',
                            extra=LIMITS + extra, workers=1)
    # Two gateways of this module may run at once: each its own control socket.
    path.write_text(config.replace("[server]\n", f'[server]\ncontrol_socket = '
                                   f'"{path.parent / "control.sock"}"\n', 1))
    popen, lines, found = _spawn(cli_command("start", "-c", str(path)), BANNER)
    return Gateway(popen, found.group(1), lines, path)


@pytest.fixture(scope="module")
def gateway(upstream: ParsingUpstream, tmp_path_factory: pytest.TempPathFactory,
            ) -> Iterator[Gateway]:
    process = _start(upstream, tmp_path_factory, "")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def streaming_gateway(upstream: ParsingUpstream, tmp_path_factory: pytest.TempPathFactory,
                      ) -> Iterator[Gateway]:
    process = _start(upstream, tmp_path_factory, "\n[defaults]\nrequest_buffering = false\n")
    yield process
    process.stop()


@dataclass
class Exchange:
    received: bytes
    closed: bool
    elapsed: float


def exchange(port: int, case: Case) -> Exchange:
    """Send the case's writes on a fresh connection; read until the gateway closes."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for index, piece in enumerate(case.writes):
            if index and case.delay and case.stop_on_answer:
                answered, _, _ = select.select([sock], [], [], case.delay)
                if answered:
                    break  # the gateway answered (or closed): stop writing
            elif index and case.delay:
                time.sleep(case.delay)
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
        if case.half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks: list[bytes] = []
        give_up = time.monotonic() + READ_TIMEOUT
        while True:
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                return Exchange(b"".join(chunks), False, time.monotonic() - started)
            sock.settimeout(remaining)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                return Exchange(b"".join(chunks), True, time.monotonic() - started)
            chunks.append(data)


_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [^\r\n]*\r\n")
_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *([0-9]+)\r\n")


def final_statuses(data: bytes) -> list[int]:
    """Statuses of the responses in ``data`` (1xx skipped); every response must be
    complete and Content-Length framed, with nothing after the last one."""
    statuses = []
    position = 0
    while position < len(data):
        line = _STATUS_LINE.match(data, position)
        assert line, f"not a status line at {position}: {data[position:position + 80]!r}"
        end = data.index(b"\r\n\r\n", position) + 4
        status = int(line.group(1))
        if status >= 200:
            length = _LENGTH.search(data, position, end)
            assert length, f"response without Content-Length: {data[position:end]!r}"
            end += int(length.group(1))
            assert end <= len(data), "truncated response body"
            statuses.append(status)
        position = end
    return statuses


def _expected(case: Case, streaming: bool) -> list[str]:
    aborted = [f"{case.aborted} (aborted)"] if case.aborted and streaming else []
    return [*case.forwarded, *aborted]


def upstream_view(upstream: ParsingUpstream, case: Case,
                  streaming: bool) -> tuple[list[str], list[Seen]]:
    """What the upstream saw, once it has settled (or after a bounded wait)."""
    expected = _expected(case, streaming)
    give_up = time.monotonic() + 2.0
    time.sleep(0.03)
    while True:
        seen = upstream.seen()
        labels = [s.label() for s in seen]
        if labels == expected or time.monotonic() > give_up:
            return labels, seen
        time.sleep(0.02)


def crash_reports(gateway: Gateway) -> list[str]:
    return [line for line in gateway.output.text().splitlines()
            if "connection error" in line or "Traceback" in line]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_request(case: Case, gateway: Gateway, upstream: ParsingUpstream) -> None:
    _check(case, gateway, upstream, streaming=False)


STREAMED_CASES = [c for c in CASES if c.aborted]


@pytest.mark.parametrize("case", STREAMED_CASES, ids=[c.id for c in STREAMED_CASES])
def test_late_body_error_without_request_buffering(case: Case, streaming_gateway: Gateway,
                                                   upstream: ParsingUpstream) -> None:
    _check(case, streaming_gateway, upstream, streaming=True)


def _check(case: Case, gateway: Gateway, upstream: ParsingUpstream, *,
           streaming: bool) -> None:
    upstream.clear()
    crashes_before = len(crash_reports(gateway))
    result = exchange(gateway.port, case)
    assert result.closed, f"gateway kept the connection open; got {result.received[:200]!r}"
    if case.statuses == CLOSED:
        assert result.received == b""
    else:
        assert final_statuses(result.received) == list(case.statuses), result.received[:300]
    if case.within is not None:
        assert result.elapsed < case.within, f"took {result.elapsed:.2f} s"
    assert result.elapsed >= case.not_before, f"answered after {result.elapsed:.2f} s"

    labels, seen = upstream_view(upstream, case, streaming)
    assert not [s for s in seen if "smuggled" in s.target], labels
    assert labels == _expected(case, streaming)
    if not seen:
        assert upstream.data() == b"", "the upstream received bytes of a rejected request"
    if case.body is not None:
        assert seen[len(case.forwarded) - 1].body == case.body
    assert len(crash_reports(gateway)) == crashes_before, crash_reports(gateway)


def test_case_table_is_large_and_unique() -> None:
    assert len(CASES) >= 45
    assert len({c.id for c in CASES}) == len(CASES)


# -- behaviour beyond the table ---------------------------------------------------------------


def test_trace_is_never_proxied(gateway: Gateway, upstream: ParsingUpstream) -> None:
    """Config refuses TRACE in routes (cross-site tracing); a catch-all route must not
    forward it either. (At b972b9e the catch-all proxied it.)"""
    upstream.clear()
    case = Case("trace", req("TRACE", "/trace", H + CLOSE + b"Authorization: Bearer sk-x\r\n"),
                405)
    result = exchange(gateway.port, case)
    statuses = final_statuses(result.received)
    assert statuses and statuses[0] in (400, 405, 501)
    labels, _ = upstream_view(upstream, case, False)
    assert labels == []


def test_keep_alive_after_rejected_path(gateway: Gateway, upstream: ParsingUpstream) -> None:
    """A path refused by the router (head fully read, no body) leaves the connection
    usable: the next pipelined request is served."""
    upstream.clear()
    case = Case("after_reject", req("GET", "/a%2fb", H) + req("GET", "/next", H + CLOSE),
                (400, 200), forwarded=("GET /next",))
    result = exchange(gateway.port, case)
    assert result.closed and final_statuses(result.received) == [400, 200]
    labels, _ = upstream_view(upstream, case, False)
    assert labels == ["GET /next"]


def test_concurrent_slow_clients_do_not_block_others(gateway: Gateway,
                                                      upstream: ParsingUpstream) -> None:
    """Twenty clients hold partial heads; a well-formed request is still served at once,
    and each slow client gets its 408."""
    upstream.clear()
    results: list[bytes] = []

    def slow() -> None:
        case = Case("slow", b"GET /slow HTTP/1.1\r\nHost: gw", 408)
        results.append(exchange(gateway.port, case).received)

    threads = [threading.Thread(target=slow) for _ in range(20)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    fast = exchange(gateway.port, Case("fast", req("GET", "/fast", H + CLOSE), 200))
    assert final_statuses(fast.received) == [200] and fast.elapsed < HEADER_TIMEOUT
    for thread in threads:
        thread.join(READ_TIMEOUT + 1)
    assert len(results) == 20
    assert all(final_statuses(r) == [408] for r in results)
    labels, _ = upstream_view(upstream, Case("fast", b"", 200, forwarded=("GET /fast",)),
                              False)
    assert labels == ["GET /fast"]


class _InjectingUpstream(RawServer):
    """Answers each request with its own target as the body; after answering ``/evil``
    it also sends an unsolicited second response a moment later, as an upstream that
    parsed one request as two (a desync on the upstream side) would."""

    def handle(self, conn: socket.socket) -> None:
        pending = b""
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                pending += data
                while b"\r\n\r\n" in pending:
                    head, _, pending = pending.partition(b"\r\n\r\n")
                    target = head.split(b" ")[1]
                    try:
                        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s"
                                     % (len(target), target))
                        if target == b"/evil":
                            time.sleep(0.01)
                            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n"
                                         b"INJECTED")
                    except OSError:
                        return


def test_unsolicited_upstream_bytes_never_reach_the_next_client(start_gateway) -> None:
    """Bytes an upstream sends after a complete response must make its pooled connection
    unusable, never become the next request's response (a response desync). At b972b9e
    PeerPool.acquire skipped the readable check for connections idle < 250 ms."""
    upstream = _InjectingUpstream()
    try:
        gateway = start_gateway(gateway_config(upstream.origin, routes='"/" = "proxy:main"\n',
                                               workers=1))
        first = exchange(gateway.port, Case("evil", req("GET", "/evil", H + CLOSE), 200))
        assert first.received.endswith(b"/evil")
        time.sleep(0.03)  # the stray response has arrived; the pooled connection is "fresh"
        victim = exchange(gateway.port, Case("victim", req("GET", "/victim", H + CLOSE), 200))
        assert victim.received.endswith(b"/victim"), victim.received
    finally:
        upstream.close()
