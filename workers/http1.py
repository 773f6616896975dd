"""Strict HTTP/1.1 message framing: bytes in, events out. No I/O, no trio.

Theory of operation
-------------------
A :class:`RequestReader` (one per client connection) and a :class:`ResponseReader`
(one per upstream connection) each own a receive buffer. The I/O layer feeds them the
bytes it reads (``feed``; ``b""`` means end of stream) and pulls events with
``next_event()``, which returns one of:

- a head (:class:`RequestHead` / :class:`ResponseHead`);
- a ``bytes`` object: the next piece of decoded body;
- :data:`END`: the current message is complete (the next event belongs to the next
  message, which makes pipelining safe: bytes of the next request are never mistaken
  for body, and nothing after a response is ever read as part of it);
- :data:`NEED_DATA`: feed more bytes;
- :data:`CLOSED`: the peer ended the stream cleanly between messages.

Violations raise :class:`HttpError` with the status the client should get (400, 413,
414, 431, 417, 505); after an error the connection must be closed.

Division of labour: the head (request or status line and header fields) is located by
searching for CRLF CRLF, size-checked, then parsed by llhttp (httptools) in its strict
default mode, which rejects obs-fold, whitespace before a colon, control bytes, bare CR
or LF, invalid header names, CL together with TE and malformed Content-Length. llhttp
tolerates a few things SPEC §5 refuses (HTTP/0.9, extra spaces in the request line,
``Transfer-Encoding`` other than a single ``chunked``, TE on HTTP/1.0, missing or repeated
Host, unlimited sizes); those are checked here. Body framing (Content-Length, chunked,
close-delimited) is decoded here too, because httptools cannot report where a message
ends inside a buffer, and exact message ends are what make pipelining and upstream
connection reuse safe. The chunked decoder is strict: hex sizes of at most 16 digits,
CRLF only, a capped chunk extension, trailers parsed, size-checked and dropped; chunk
extensions and trailers of one message share one ``max_header_bytes`` budget, so tiny
chunks with extensions cannot make framing cost a multiple of the body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, NoReturn

import httptools


class HttpError(Exception):
    """A protocol violation: answer ``status`` (when still possible) and close."""

    def __init__(self, status: int, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail or message
        """For logs only; ``message`` is what a client may see."""


class UpstreamProtocolError(HttpError):
    """The upstream's response broke HTTP/1.1 framing or syntax (the client gets 502)."""


class _Signal:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = _Signal("NEED_DATA")
END: Final = _Signal("END")
CLOSED: Final = _Signal("CLOSED")

Header = tuple[bytes, bytes]
"""(lowercase name, value) as received."""


DECISION_HEADERS: Final = frozenset({b"authorization", b"x-agent-id", b"x-model",
                                     b"x-request-id"})
"""Request headers the gateway decides by (auth, limit keys, model selection, the request
id): each may appear at most once, so every reader sees the same value."""


@dataclass(frozen=True, slots=True)
class ParseLimits:
    single_headers: frozenset[bytes] = DECISION_HEADERS
    """Request headers that are a 400 when repeated: :data:`DECISION_HEADERS` plus the
    names that routes match on (the worker adds those from the config)."""
    max_request_line: int = 8192
    max_header_bytes: int = 32768
    max_headers: int = 100
    max_chunk_extension: int = 256
    max_body: int = 1 << 20
    """Chunked bodies above this raise 413; Content-Length is checked by the caller."""


class RequestHead:
    """A parsed, validated request head."""

    __slots__ = ("chunked", "connection_tokens", "content_length", "expect_continue",
                 "headers", "host", "keep_alive", "method", "path", "query", "target",
                 "version")

    def __init__(self, method: bytes, target: bytes, version: bytes,
                 headers: list[Header]) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        path, _, query = target.partition(b"?")
        self.path = path
        self.query = query if _ else None
        self.host: bytes | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.expect_continue = False
        self.connection_tokens: tuple[bytes, ...] = ()

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


class ResponseHead:
    """A parsed, validated upstream response head."""

    __slots__ = ("chunked", "connection_tokens", "content_length", "headers", "keep_alive",
                 "reason", "status", "version")

    def __init__(self, status: int, reason: bytes, version: bytes,
                 headers: list[Header]) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.connection_tokens: tuple[bytes, ...] = ()


_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.([01])")
# A well-formed request line whose version is not 1.0/1.1 (505); anything else is 400.
_VERSION_ONLY = re.compile(rb"[^ ]+ [^ ]+ HTTP/(?!1\.[01]\Z)[0-9]\.[0-9]")
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9]) ?([\t\x20-\x7e\x80-\xff]*)")
_HOST_VALUE = re.compile(rb"[A-Za-z0-9.\-]*(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_TOKEN_RE = re.compile(_TOKEN)
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")  # no control bytes, as llhttp
_CRLF2: Final = b"\r\n\r\n"


_FRAMING_FIELDS = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection",
                             b"expect", b"authorization"})


class _HeadCollector:
    """httptools protocol object that collects header fields, setting aside the few
    that decide framing (and the single-valued ones) so the checks after parsing need not
    scan every field."""

    __slots__ = ("complete", "framing", "headers", "single")

    def __init__(self, single: frozenset[bytes] = frozenset()) -> None:
        self.headers: list[Header] = []
        self.framing: list[Header] = []
        self.single = single
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp keeps trailing OWS in the value; RFC 9112 §5 excludes it.
        field = (name.lower(), value.rstrip(b" \t"))
        self.headers.append(field)
        if field[0] in _FRAMING_FIELDS or field[0] in self.single:
            self.framing.append(field)

    def on_headers_complete(self) -> None:
        self.complete = True


def _run_llhttp(parser: httptools.HttpRequestParser | httptools.HttpResponseParser,
                collector: _HeadCollector, head: bytes, error: type[HttpError],
                status: int) -> None:
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass  # Upgrade is never honoured; the header is dropped as hop-by-hop.
    except httptools.HttpParserError as exc:
        raise error(status, "malformed message head", f"llhttp: {exc}") from None
    if not collector.complete:
        raise error(status, "malformed message head")


def _connection_tokens(value: bytes) -> tuple[bytes, ...]:
    if b"," not in value:
        return (value.strip().lower(),)
    return tuple(t.strip().lower() for t in value.split(b",") if t.strip())


def _request_line(data: bytes, line_end: int) -> re.Match[bytes]:
    """The request line ``data[:line_end]``, matched, or the error that refuses it."""
    match = _REQUEST_LINE.fullmatch(data, 0, line_end)
    if match is None:
        if _VERSION_ONLY.fullmatch(data, 0, line_end):
            raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        raise HttpError(400, "malformed request line")
    return match


def parse_request_head(head: bytes, limits: ParseLimits) -> RequestHead:
    """Validate and parse a complete request head (ending with CRLF CRLF)."""
    line_end = head.find(b"\r\n")
    match = _request_line(head, line_end)
    method, target, minor = match.group(1), match.group(2), match.group(3)
    if method == b"CONNECT":
        raise HttpError(400, "CONNECT is not supported")
    if target[0] != 0x2F:  # "/": only origin-form targets are accepted
        raise HttpError(400, "only origin-form request targets are accepted")
    if b"#" in target:
        raise HttpError(400, "request target contains a fragment")
    collector = _HeadCollector(limits.single_headers)
    _run_llhttp(httptools.HttpRequestParser(collector), collector, head, HttpError, 400)
    headers = collector.headers
    if len(headers) > limits.max_headers:
        raise HttpError(431, "too many header fields")
    request = RequestHead(method, target, b"1." + minor, headers)
    http11 = minor == b"1"
    hosts = 0
    lengths = 0
    encodings = 0
    credentials = 0
    close = False
    keep_alive_token = False
    single_seen: set[bytes] | None = None
    for name, value in collector.framing:
        if name == b"authorization":
            # One credential per request: with two, the gateway could check one while
            # an upstream that allows the header acts on the other.
            credentials += 1
            if credentials > 1:
                raise HttpError(400, "repeated Authorization header")
        elif name == b"host":
            hosts += 1
            request.host = value
        elif name == b"content-length":
            lengths += 1
            if not value.isdigit() or len(value) > 18:
                raise HttpError(400, "invalid Content-Length")
            request.content_length = int(value)
        elif name == b"transfer-encoding":
            encodings += 1
            if value.lower() != b"chunked":
                raise HttpError(400, "only Transfer-Encoding: chunked is accepted")
        elif name == b"connection":
            tokens = _connection_tokens(value)
            request.connection_tokens += tokens
            close = close or b"close" in tokens
            keep_alive_token = keep_alive_token or b"keep-alive" in tokens
        elif name == b"expect":
            if value.lower() != b"100-continue":
                raise HttpError(417, "only Expect: 100-continue is supported")
            # RFC 9110 §10.1.1: ignored in HTTP/1.0 requests (no 1xx goes to a 1.0 client).
            request.expect_continue = http11
        else:
            # A header the gateway decides by (a route literal, a limit key, the model):
            # repeated, one reader could take the first value and another the last.
            if single_seen is None:
                single_seen = set()
            elif name in single_seen:
                raise HttpError(400, f"repeated {name.decode('latin-1')} header")
            single_seen.add(name)
    if hosts > 1 or (http11 and hosts == 0):
        raise HttpError(400, "a request needs exactly one Host header")
    if request.host is not None and not _HOST_VALUE.fullmatch(request.host):
        raise HttpError(400, "invalid Host header")
    if lengths > 1:
        raise HttpError(400, "repeated Content-Length")
    if encodings:
        if encodings > 1 or lengths or not http11:
            raise HttpError(400, "ambiguous message framing (Transfer-Encoding)")
        request.chunked = True
    request.keep_alive = not close and (http11 or keep_alive_token)  # RFC 9112 §9.3
    return request


def parse_response_head(head: bytes, limits: ParseLimits) -> ResponseHead:
    """Validate and parse an upstream response head. Errors are reported as 502."""
    line_end = head.find(b"\r\n")
    match = _STATUS_LINE.fullmatch(head, 0, line_end)
    if match is None:
        raise UpstreamProtocolError(502, "malformed upstream status line")
    collector = _HeadCollector()
    _run_llhttp(httptools.HttpResponseParser(collector), collector, head,
                UpstreamProtocolError, 502)
    headers = collector.headers
    if len(headers) > limits.max_headers:
        raise UpstreamProtocolError(502, "too many upstream header fields")
    response = ResponseHead(int(match.group(2)), match.group(3), b"1." + match.group(1),
                            headers)
    lengths = 0
    encodings = 0
    close = False
    keep_alive_token = False
    for name, value in collector.framing:
        if name == b"content-length":
            lengths += 1
            if not value.isdigit() or len(value) > 18:
                raise UpstreamProtocolError(502, "invalid upstream Content-Length")
            response.content_length = int(value)
        elif name == b"transfer-encoding":
            encodings += 1
            if value.lower() != b"chunked":
                raise UpstreamProtocolError(502, "unsupported upstream Transfer-Encoding")
        elif name == b"connection":
            tokens = _connection_tokens(value)
            response.connection_tokens += tokens
            close = close or b"close" in tokens
            keep_alive_token = keep_alive_token or b"keep-alive" in tokens
    if lengths > 1:
        raise UpstreamProtocolError(502, "repeated upstream Content-Length")
    if encodings:
        if encodings > 1 or lengths:
            raise UpstreamProtocolError(502, "ambiguous upstream framing")
        response.chunked = True
    http11 = match.group(1) == b"1"
    response.keep_alive = not close and (http11 or keep_alive_token)
    return response


# -- message readers ------------------------------------------------------------------------

_HEAD, _BODY_LENGTH, _BODY_CHUNKED, _BODY_UNTIL_CLOSE, _END, _FAILED = range(6)
_CHUNK_SIZE, _CHUNK_DATA, _CHUNK_DATA_CRLF, _CHUNK_TRAILERS = range(4)
_HEX_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")  # _MAX_SIZE_DIGITS
_WHOLE_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n")
CHUNKS_FREE = 4096
"""Chunks a message may have before :data:`MIN_AVERAGE_CHUNK` applies."""
MIN_AVERAGE_CHUNK = 16
"""Past :data:`CHUNKS_FREE` chunks, a chunked body whose chunks average fewer bytes than
this is refused (400 from a client, 502 from an upstream): each chunk costs the worker
the same parsing work whatever its size, so a flood of one-byte chunks would otherwise
buy seconds of CPU with a megabyte of body. Real senders (SDK uploads, SSE events of a
few hundred bytes) are far above it."""
CHUNKS_PER_EVENT = 512
"""Most chunks one body event decodes. A read can hold thousands of small chunks; past
this many the reader hands over what it has and reports :attr:`_MessageReader.paused`,
so the connection yields to its neighbours before decoding the rest (about a
millisecond of work per turn at most, whatever the chunk sizes)."""
_MAX_SIZE_DIGITS = 16
_MAX_LEADING_CRLF = 8


class _MessageReader:
    """Buffering and body framing shared by the request and response readers."""

    __slots__ = (
        "_body_cap",
        "_buf",
        "_chunk_left",
        "_chunk_state",
        "_chunks",
        "_deferred",
        "_eof",
        "_error",
        "_error_status",
        "_leading_crlf",
        "_limits",
        "_overhead_bytes",
        "_paused",
        "_remaining",
        "_scanned",
        "_scanned_line",
        "_state",
        "body_bytes",
    )

    def __init__(self, limits: ParseLimits, error: type[HttpError], error_status: int,
                 body_cap: int | None) -> None:
        self._limits = limits
        self._error = error
        self._error_status = error_status
        self._body_cap = body_cap
        self._buf = b""
        self._eof = False
        self._state = _HEAD
        self._scanned = 0
        self._scanned_line = False
        self._leading_crlf = 0
        self._remaining = 0
        self._chunk_state = _CHUNK_SIZE
        self._chunk_left = 0
        self._chunks = 0
        self._overhead_bytes = 0
        self._deferred: HttpError | None = None
        self._paused = False
        self.body_bytes = 0

    # -- feeding --------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Append received bytes; ``b""`` marks the end of the stream."""
        if not data:
            self._eof = True
        elif self._buf:
            self._buf += data
        else:
            self._buf = data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def paused(self) -> bool:
        """The last body event stopped at :data:`CHUNKS_PER_EVENT` with more chunks
        already buffered: the caller should yield, then ask for the next event (no read
        is needed for it)."""
        return self._paused

    # -- heads --------------------------------------------------------------------------------

    def _find_head(self) -> bytes | None:
        """Return a complete head, or None when more data is needed. Enforces sizes."""
        buf = self._buf
        skipped = self._leading_crlf  # counted across feeds: the split must not matter
        while buf.startswith(b"\r\n") and skipped < _MAX_LEADING_CRLF:
            buf = buf[2:]
            skipped += 1
        if skipped != self._leading_crlf:
            self._leading_crlf = skipped
            self._buf = buf
            self._scanned = 0
        end = buf.find(_CRLF2, max(0, self._scanned - 3))
        limits = self._limits
        if end < 0:
            line_end = buf.find(b"\r\n")
            if (line_end < 0 and len(buf) > limits.max_request_line) or \
                    line_end > limits.max_request_line:
                self._fail(414, "request line too long")
            if len(buf) > limits.max_request_line + limits.max_header_bytes:
                self._fail(431, "header block too large")
            if b"\n" in buf.replace(b"\r\n", b""):
                self._fail(400, "bare LF line ending")
            if line_end >= 0 and not self._scanned_line:
                # The first line is complete: refuse a malformed one now (an HTTP/0.9
                # "GET /x" line would otherwise wait for a blank line that never comes).
                self._first_line(buf, line_end)
                self._scanned_line = True
            self._scanned = len(buf)
            return None
        head_end = end + 4
        line_end = buf.find(b"\r\n")
        if line_end > limits.max_request_line:
            self._fail(414, "request line too long")
        if head_end - line_end > limits.max_header_bytes:
            self._fail(431, "header block too large")
        self._buf = buf[head_end:]
        self._scanned = 0
        self._scanned_line = False
        self._leading_crlf = 0
        return buf[:head_end]

    def _first_line(self, buf: bytes, line_end: int) -> None:
        """Check a head's first line as soon as it is complete (requests only)."""

    def _fail(self, request_status: int, message: str) -> NoReturn:
        status = request_status if self._error is HttpError else self._error_status
        raise self._error(status, message)

    # -- bodies ---------------------------------------------------------------------------------

    def _start_body(self, content_length: int | None, chunked: bool,
                    until_close: bool) -> None:
        self.body_bytes = 0
        if chunked:
            self._state = _BODY_CHUNKED
            self._chunk_state = _CHUNK_SIZE
            self._overhead_bytes = 0
            self._chunks = 0
        elif content_length:
            self._state = _BODY_LENGTH
            self._remaining = content_length
        elif until_close:
            self._state = _BODY_UNTIL_CLOSE
        else:
            self._state = _END

    def _body_event(self) -> bytes | _Signal:
        state = self._state
        if state == _END:
            self._state = _HEAD
            return END
        if state == _BODY_LENGTH:
            buf = self._buf
            if not buf:
                if self._eof:
                    self._state = _FAILED
                    raise self._error(self._error_status, "message body truncated")
                return NEED_DATA
            remaining = self._remaining
            if len(buf) <= remaining:
                piece, self._buf = buf, b""
            else:
                piece, self._buf = buf[:remaining], buf[remaining:]
            self._remaining = remaining - len(piece)
            if not self._remaining:
                self._state = _END
            self.body_bytes += len(piece)
            return piece
        if state == _BODY_UNTIL_CLOSE:
            if self._buf:
                piece, self._buf = self._buf, b""
                self.body_bytes += len(piece)
                return piece
            if self._eof:
                self._state = _HEAD
                return END
            return NEED_DATA
        if state == _BODY_CHUNKED:
            try:
                return self._chunked_event()
            except HttpError:
                self._state = _FAILED  # errors are final: never parse past a bad chunk
                raise
        raise self._error(self._error_status, "reader used after an error")

    def _chunked_event(self) -> bytes | _Signal:
        """All chunk data decodable from the buffer, as one piece (or END, NEED_DATA).

        One pass over the buffer with a position, one slice of the rest at the end: tiny
        chunks cost a few operations each, never a copy of the buffer per chunk. Data
        decoded before a framing error in the same buffer is returned first; the error
        is raised on the next call."""
        deferred = self._deferred
        if deferred is not None:
            self._deferred = None
            raise deferred
        self._paused = False
        buf = self._buf
        pos = 0
        pieces: list[bytes] = []
        try:
            event = self._decode_chunks(buf, pieces)
        except HttpError as exc:
            if not pieces:
                raise
            self._deferred = exc
            self._buf = b""
            return b"".join(pieces)
        pos, ended = event
        self._buf = buf[pos:] if pos else buf
        if pieces:
            if ended:
                self._state = _END  # the next event is END
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if ended:
            self._state = _HEAD
            return END
        if self._eof:
            self._state = _FAILED
            raise self._error(self._error_status, "chunked body truncated")
        return NEED_DATA

    def _decode_chunks(self, buf: bytes, pieces: list[bytes]) -> tuple[int, bool]:
        """Decode from ``buf``, appending chunk data to ``pieces``; returns (position
        reached, whether the message ended)."""
        limits = self._limits
        error_status = self._error_status
        body_cap = self._body_cap
        size = len(buf)
        pos = 0
        chunks_left = CHUNKS_PER_EVENT
        whole_chunk = _WHOLE_CHUNK_SIZE.match
        while True:
            chunk_state = self._chunk_state
            if chunk_state == _CHUNK_SIZE and chunks_left:
                # Fast path: a plain size line whose data and CRLF are all buffered is
                # taken in one step. Anything else (extensions, the last chunk, a chunk
                # cut by the read, a framing error) goes the general way below, which
                # starts again from the same size line.
                found = whole_chunk(buf, pos)
                if found is not None:
                    chunk_size = int(found.group(1), 16)
                    data_start = found.end()
                    data_end = data_start + chunk_size
                    if chunk_size and data_end + 2 <= size and buf[data_end] == 0x0D \
                            and buf[data_end + 1] == 0x0A:
                        chunks = self._chunks + 1
                        body_bytes = self.body_bytes + chunk_size
                        if chunks > CHUNKS_FREE and body_bytes < chunks * MIN_AVERAGE_CHUNK:
                            raise self._error(error_status,
                                              "chunked body: too many tiny chunks")
                        if body_cap is not None and body_bytes > body_cap:
                            raise HttpError(413, "request body too large")
                        self._chunks = chunks
                        self.body_bytes = body_bytes
                        pieces.append(buf[data_start:data_end])
                        pos = data_end + 2
                        chunks_left -= 1
                        continue
            if chunk_state == _CHUNK_DATA:
                if pos >= size:
                    return pos, False
                left = self._chunk_left
                take = left if size - pos >= left else size - pos
                if body_cap is not None and self.body_bytes + take > body_cap:
                    raise HttpError(413, "request body too large")  # none of it passes
                pieces.append(buf[pos:pos + take])
                pos += take
                self._chunk_left = left - take
                if not self._chunk_left:
                    self._chunk_state = _CHUNK_DATA_CRLF
                self.body_bytes += take
                continue
            if chunk_state == _CHUNK_DATA_CRLF:
                if size - pos < 2:
                    return pos, False
                if buf[pos] != 0x0D or buf[pos + 1] != 0x0A:
                    raise self._error(error_status, "chunk data not followed by CRLF")
                pos += 2
                self._chunk_state = _CHUNK_SIZE
                continue
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                cap = (_MAX_SIZE_DIGITS + 1 + limits.max_chunk_extension
                       if chunk_state == _CHUNK_SIZE else limits.max_header_bytes)
                if size - pos > cap:
                    raise self._error(error_status, "chunk size line or trailer too long")
                carriage = buf.find(b"\r", pos)
                if buf.find(b"\n", pos) >= 0 or (0 <= carriage < size - 1):
                    raise self._error(error_status, "bare CR or LF in chunked framing")
                return pos, False
            line = buf[pos:line_end]
            line_start, pos = pos, line_end + 2
            if b"\r" in line or b"\n" in line:
                raise self._error(error_status, "bare CR or LF in chunked framing")
            if chunk_state == _CHUNK_SIZE:
                if not chunks_left:
                    self._paused = True
                    return line_start, False  # this size line is decoded next turn
                chunk_size = self._chunk_size(line, error_status)
                if chunk_size:
                    chunks_left -= 1
                    self._chunks += 1
                    if self._chunks > CHUNKS_FREE and \
                            self.body_bytes + chunk_size < self._chunks * MIN_AVERAGE_CHUNK:
                        raise self._error(error_status, "chunked body: too many tiny chunks")
                    self._chunk_left = chunk_size
                    self._chunk_state = _CHUNK_DATA
                else:
                    self._chunk_state = _CHUNK_TRAILERS
                continue
            # _CHUNK_TRAILERS: header-like lines until an empty one; validated, dropped.
            if not line:
                return pos, True
            self._overhead_bytes += len(line) + 2
            if self._overhead_bytes > limits.max_header_bytes:
                raise self._error(error_status, "chunk extensions and trailers too large")
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN_RE.fullmatch(name) or \
                    not _FIELD_VALUE.fullmatch(value):
                raise self._error(error_status, "malformed trailer field")

    def _chunk_size(self, line: bytes, error_status: int) -> int:
        if _HEX_SIZE.fullmatch(line):  # the common line: a size, no extension
            return int(line, 16)
        size_text, semicolon, extension = line.partition(b";")
        if not _HEX_SIZE.fullmatch(size_text):
            raise self._error(error_status, "invalid chunk size")
        if semicolon:
            if len(extension) > self._limits.max_chunk_extension:
                raise self._error(error_status, "chunk extension too long")
            # Extensions and trailers of one message share max_header_bytes, so tiny
            # chunks with extensions cannot make parsing cost a multiple of the body.
            self._overhead_bytes += len(extension)
            if self._overhead_bytes > self._limits.max_header_bytes:
                raise self._error(error_status, "chunk extensions and trailers too large")
            if any(c < 0x20 and c != 0x09 for c in extension) or 0x7F in extension:
                raise self._error(error_status, "control byte in chunk extension")
        return int(size_text, 16)


class RequestReader(_MessageReader):
    """Client side: request heads and request bodies, in order, pipelining-safe."""

    __slots__ = ()

    def __init__(self, limits: ParseLimits) -> None:
        super().__init__(limits, HttpError, 400, body_cap=limits.max_body)

    def _first_line(self, buf: bytes, line_end: int) -> None:
        _request_line(buf, line_end)

    def next_event(self) -> RequestHead | bytes | _Signal:
        if self._state != _HEAD:
            return self._body_event()
        if not self._buf:
            return CLOSED if self._eof else NEED_DATA
        try:
            head = self._find_head()
            if head is None:
                if self._eof:
                    raise HttpError(400, "connection closed inside a request head")
                return NEED_DATA
            request = parse_request_head(head, self._limits)
        except HttpError:
            self._state = _FAILED
            raise
        self._start_body(request.content_length, request.chunked, until_close=False)
        return request


_NO_BODY_STATUS = frozenset({204, 304})


class ResponseReader(_MessageReader):
    """Upstream side: one response head (after any 1xx) and its body."""

    __slots__ = ("request_was_head",)

    def __init__(self, limits: ParseLimits) -> None:
        super().__init__(limits, UpstreamProtocolError, 502, body_cap=None)
        self.request_was_head = False

    def take_whole_body(self) -> bytes | None:
        """Fast path: when the current response's body is a Content-Length (or empty)
        body that has fully arrived, take it and finish the message in one step;
        otherwise None and nothing changes (use :meth:`next_event`)."""
        state = self._state
        if state == _END:
            self._state = _HEAD
            return b""
        if state == _BODY_LENGTH and len(self._buf) >= self._remaining:
            buf, remaining = self._buf, self._remaining
            self._buf = buf[remaining:] if len(buf) > remaining else b""
            self.body_bytes += remaining
            self._remaining = 0
            self._state = _HEAD
            return buf[:remaining] if len(buf) > remaining else buf
        return None

    def expect_response(self, to_head_request: bool) -> None:
        """Prepare for the response to the request just sent."""
        self.request_was_head = to_head_request

    def next_event(self) -> ResponseHead | bytes | _Signal:
        if self._state != _HEAD:
            return self._body_event()
        while True:
            if not self._buf and self._eof:
                return CLOSED
            try:
                head = self._find_head()
                if head is None:
                    if self._eof:
                        raise UpstreamProtocolError(502, "upstream closed inside a response head")
                    return NEED_DATA
                response = parse_response_head(head, self._limits)
            except HttpError:
                self._state = _FAILED
                raise
            if response.status == 101:
                # The gateway never asks an upstream to switch protocols (Upgrade is
                # hop-by-hop and never forwarded): whatever follows is not HTTP/1.1 this
                # reader may frame, and the connection must never be reused.
                self._state = _FAILED
                raise UpstreamProtocolError(502, "unsolicited 101 Switching Protocols")
            if 100 <= response.status < 200:
                continue  # interim responses (100 Continue, 103 Early Hints) are dropped
            no_body = self.request_was_head or response.status in _NO_BODY_STATUS
            if no_body:
                self._start_body(None, False, until_close=False)
            else:
                self._start_body(response.content_length, response.chunked,
                                 until_close=response.content_length is None
                                 and not response.chunked)
                if response.content_length is None and not response.chunked:
                    response.keep_alive = False
            return response
