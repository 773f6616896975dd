"""Mock upstream: a fast fake OpenAI-compatible inference server (``li-httpd mock-upstream``).

It stands in for an LLM backend in the demo, the integration tests and the benchmarks::

    python -m li_httpd.ops.mock_upstream [--host 127.0.0.1] [--port 8081] [--models a,b]

prints ``mock-upstream listening on http://HOST:PORT`` once it accepts connections
(``--port 0`` picks a free port) and serves until SIGTERM or SIGINT (exit status 0).

Endpoints
    ``POST /v1/chat/completions``, ``POST /v1/completions``: a JSON completion, or with
    ``"stream": true`` an SSE stream (chunked; one SSE event per chunk, each written as
    soon as it is produced): for chat a role event, one event per content token, a
    finish event, a usage event (``choices: []``, always sent) and ``data: [DONE]``;
    the legacy endpoint has no role event. Every event carries ``x_mock_sent_at``
    (``time.time()`` when the event was produced). ``max_tokens`` /
    ``max_completion_tokens`` below ``tokens`` truncate with ``finish_reason: length``.
    ``POST /v1/responses`` (OpenAI Responses API): a ``response`` object, or with
    ``"stream": true`` the named-event stream the openai SDK parses
    (``response.created``, ``response.in_progress``, ``response.output_item.added``,
    ``response.content_part.added``, one ``response.output_text.delta`` per token,
    ``response.output_text.done``, ``response.content_part.done``,
    ``response.output_item.done``, ``response.completed`` with the usage; no
    ``[DONE]``). ``max_output_tokens`` is ignored.
    ``POST /v1/messages`` (Anthropic Messages API): a ``message`` object, or with
    ``"stream": true`` the named-event stream the anthropic SDK parses
    (``message_start`` with the input and cache usage, ``content_block_start``, ``ping``,
    one ``content_block_delta`` per token, ``content_block_stop``, ``message_delta`` with
    the cumulative ``output_tokens``, ``message_stop``). ``max_tokens`` below ``tokens``
    truncates with ``stop_reason: max_tokens``. Errors on this path (``fail``, a bad
    body) use Anthropic's shape ``{"type": "error", "error": {"type", "message"}}``.
    Usage is deterministic: input tokens are the request's whitespace-separated words
    (``messages``/``prompt``/``input``, plus ``system`` for messages), output tokens the
    content tokens; the knobs ``cached_tokens`` and ``cache_write_tokens`` set the cache
    fields (see ``Knobs``).
    ``POST /v1/embeddings``: deterministic unit vectors (``float`` or ``base64``).
    ``GET /v1/models``: the model list. ``/echo`` (any method): what arrived, as JSON
    (method, raw target, version, headers in order with original case, body length and
    SHA-256 of the decoded body, client address). ``GET /health``, ``GET /small`` (a
    fixed ``Hello, world!``), ``GET /bytes?n=N`` (N bytes, see ``BYTES_PATTERN``),
    ``GET /stats`` (counters, see ``Stats``; knobs do not apply to it).
    HEAD works wherever GET does. Unknown path: 404, wrong method: 405, both with an
    OpenAI-style error body.

Knobs: request header ``x-mock-<name>`` or query parameter ``<name>`` (the query wins);
see ``Knobs`` for the list, defaults and limits. A bad value is a 400.

Every response carries ``x-mock-request-count`` (this server's request counter) and
``x-mock-peer`` (the ``host:port`` it listens on).

I/O model: non-blocking stdlib sockets driven with ``trio.lowlevel.wait_readable`` /
``wait_writable`` (the syscall is tried first; we wait only on ``BlockingIOError``),
``httptools`` for parsing, one task per connection. Responses to pipelined requests are
batched into one write; every ``CHECKPOINT_EVERY`` requests (and stream events) the
connection yields so that a busy connection cannot starve the others. While a response
waits (``ttfb_ms``, ``delay_ms``, ``stall_after``) the socket is watched, so a client
that goes away is noticed at once and counted in ``/stats``.

Imports: the standard library, trio, httptools and orjson only — never another
li_httpd package, so it can serve as the upstream of any li_httpd build under test.
"""

from __future__ import annotations

import argparse
import base64
import errno
import hashlib
import math
import signal
import socket
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, TypeAlias
from urllib.parse import parse_qsl

import httptools
import orjson
import trio

__all__ = [
    "BYTES_PATTERN",
    "DEFAULT_MODELS",
    "KnobError",
    "Knobs",
    "MockUpstream",
    "Stats",
    "bind",
    "bytes_content",
    "main",
    "parse_knobs",
    "serve",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8081
DEFAULT_MODELS: tuple[str, ...] = ("mock-chat", "mock-chat-large", "mock-embed")
DEFAULT_MODEL = "mock-chat"
DEFAULT_TOKENS = 8
DEFAULT_BYTES = 1024
DEFAULT_DIMENSIONS = 1536
MAX_TOKENS = 100_000
MAX_BYTES = 64 * 1024 * 1024
MAX_DIMENSIONS = 65_536
MAX_CACHE_TOKENS = 10_000_000
MAX_EVENTS = 1 << 40
MAX_DELAY_MS = 3_600_000.0
MAX_REQUEST_BODY = 64 * 1024 * 1024
CHECKPOINT_EVERY = 16
RECV_SIZE = 256 * 1024
LINGER_SECONDS = 1.0
MODEL_CREATED = 1_700_000_000

#: ``/bytes`` content: byte ``i`` of the body is ``BYTES_PATTERN[i % 64]``.
BYTES_PATTERN = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-\n"
_BYTES_BLOCK = BYTES_PATTERN * 4096  # 256 KiB, a whole number of patterns
_SEND_SLICE = len(_BYTES_BLOCK) - len(BYTES_PATTERN)

_WORDS = (
    "Hello", " from", " the", " li-httpd", " mock", " upstream", ":", " this", " is",
    " a", " fake", " completion", ",", " one", " token", " per", " event", ".",
)

_JSON = b"application/json"
_TEXT = b"text/plain; charset=utf-8"
_SSE = b"text/event-stream; charset=utf-8"
_OCTETS = b"application/octet-stream"
_CHUNKED = -1
_UNTIL_CLOSE = -2
_HEAD_FORMAT = (b"HTTP/1.1 %s\r\ncontent-type: %s\r\n%sdate: %s\r\nx-mock-request-count: %d\r\n"
                b"%s%s%s\r\n")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_DONE = b"data: [DONE]\n\n"
_SMALL_BODY = b"Hello, world!\n"
_HEALTH_BODY = b'{"status":"ok"}'
_GET = frozenset({b"GET", b"HEAD"})
_POST = frozenset({b"POST"})

_STATUS_LINES: dict[int, bytes] = {
    status.value: b"%d %s" % (status.value, status.phrase.encode("ascii"))
    for status in HTTPStatus
}

_ANTHROPIC_ERROR_TYPES = {
    413: "request_too_large",
    529: "overloaded_error",
}

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"%d Status %d" % (status, status)


def _error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def _error_body(status: int, message: str, code: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": _error_type(status),
                                   "param": None, "code": code}})


def _anthropic_error_body(status: int, message: str) -> bytes:
    """Anthropic's error shape (``/v1/messages``)."""
    kind = _ANTHROPIC_ERROR_TYPES.get(status) or (
        "api_error" if status >= 500 else _error_type(status))
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


# ----------------------------------------------------------------------------- knobs


class KnobError(ValueError):
    """A knob value that cannot be used; the message names the knob."""


@dataclass(frozen=True, slots=True)
class Knobs:
    """Per-request behaviour, from ``x-mock-<name>`` headers or ``<name>`` query parameters.

    tokens         content tokens (one SSE event each), default 8, at most 100000.
    delay_ms       pause between SSE events; for a JSON answer the head waits
                   ``tokens * delay_ms`` (the time the "model" needs to generate).
    ttfb_ms        pause before the response head.
    stall_after    send N SSE events (for a Content-Length body: the head and N body
                   bytes), then send nothing more and keep the connection open until the
                   client goes away.
    close_after    like ``stall_after`` but then close the connection (no terminating
                   chunk, or a short body). If both are set the smaller count wins.
    fail           answer with this HTTP status (200-599) and an OpenAI-style error body.
    body_secret    put this string into the response content (chat/completion text, the
                   error message with ``fail``, the middle of ``/bytes``, field
                   ``x_mock_secret`` of embeddings) — for leak-censor tests.
    secret_split   1: stream the secret as two consecutive events (split in the middle).
    dimensions     embedding size (overrides the request's ``dimensions``), default 1536.
    n              ``/bytes`` length, default 1024, at most 64 MiB.
    cached_tokens  prompt tokens read from the cache, default 0. OpenAI shapes count
                   them inside the prompt (``prompt_tokens``/``input_tokens`` = words +
                   cached_tokens) and report them as ``prompt_tokens_details.cached_tokens``
                   (chat and completions, only when not 0) or
                   ``input_tokens_details.cached_tokens`` (responses); messages report
                   them as ``cache_read_input_tokens`` (``input_tokens`` = words only, as
                   Anthropic excludes cache tokens).
    cache_write_tokens  prompt tokens written to the cache, default 0:
                   ``cache_creation_input_tokens`` of messages and
                   ``input_tokens_details.cache_write_tokens`` of responses.

    Header names may use dashes (``x-mock-delay-ms``). For ``stall_after`` and
    ``close_after`` every SSE event counts: chat sends ``tokens + 4`` of them (role,
    tokens, finish, usage, ``[DONE]``), legacy completions ``tokens + 3``, responses
    ``tokens + 8`` (created, in_progress, output_item.added, content_part.added, tokens,
    output_text.done, content_part.done, output_item.done, completed), messages
    ``tokens + 6`` (message_start, content_block_start, ping, tokens,
    content_block_stop, message_delta, message_stop); a count at or beyond the end still
    withholds the terminating chunk. A client that closes its
    sending side (EOF) counts as gone.
    """

    tokens: int = DEFAULT_TOKENS
    delay_ms: float = 0.0
    ttfb_ms: float = 0.0
    stall_after: int | None = None
    close_after: int | None = None
    fail: int | None = None
    body_secret: str | None = None
    secret_split: bool = False
    dimensions: int | None = None
    n: int = DEFAULT_BYTES
    cached_tokens: int = 0
    cache_write_tokens: int = 0

    def cut(self) -> tuple[int | None, bool]:
        """(count after which the response is cut, True when cut means close)."""
        close, stall = self.close_after, self.stall_after
        if close is not None and (stall is None or close <= stall):
            return close, True
        return stall, False


DEFAULT_KNOBS = Knobs()

_INT_KNOBS: dict[str, tuple[int, int]] = {
    "tokens": (0, MAX_TOKENS),
    "stall_after": (0, MAX_EVENTS),
    "close_after": (0, MAX_EVENTS),
    "fail": (200, 599),
    "secret_split": (0, 1),
    "dimensions": (1, MAX_DIMENSIONS),
    "n": (0, MAX_BYTES),
    "cached_tokens": (0, MAX_CACHE_TOKENS),
    "cache_write_tokens": (0, MAX_CACHE_TOKENS),
}
_MS_KNOBS = frozenset({"delay_ms", "ttfb_ms"})
KNOB_NAMES = frozenset({*_INT_KNOBS, *_MS_KNOBS, "body_secret"})


def parse_knobs(values: dict[str, str]) -> Knobs:
    """Knobs from raw ``name -> value`` strings; unknown names are ignored.

    Raises ``KnobError`` for a value that is not a number or is out of range.
    """
    fields: dict[str, Any] = {}
    for name, raw in values.items():
        if name in _INT_KNOBS:
            low, high = _INT_KNOBS[name]
            try:
                number = int(raw.strip())
            except ValueError:
                raise KnobError(f"mock knob {name}: not an integer: {raw!r}") from None
            if not low <= number <= high:
                raise KnobError(f"mock knob {name}: {number} is outside {low}..{high}")
            fields[name] = bool(number) if name == "secret_split" else number
        elif name in _MS_KNOBS:
            try:
                delay = float(raw.strip())
            except ValueError:
                raise KnobError(f"mock knob {name}: not a number: {raw!r}") from None
            if not 0.0 <= delay <= MAX_DELAY_MS:  # also rejects nan
                raise KnobError(f"mock knob {name}: {raw} is outside 0..{MAX_DELAY_MS:g}")
            fields[name] = delay
        elif name == "body_secret":
            fields[name] = raw
    return Knobs(**fields) if fields else DEFAULT_KNOBS


def _knob_values(headers: list[tuple[bytes, bytes]], target: bytes) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in headers:
        if len(name) > 7 and name[:7].lower() == b"x-mock-":
            key = name[7:].decode("latin-1").lower().replace("-", "_")
            values[key] = value.decode("utf-8", "replace")
    mark = target.find(b"?")
    if mark >= 0:
        query = target[mark + 1:].decode("latin-1")
        for field, text in parse_qsl(query, keep_blank_values=True, encoding="latin-1"):
            if field in KNOB_NAMES:
                values[field] = text.encode("latin-1").decode("utf-8", "replace")
    return values


# ---------------------------------------------------------------------- content helpers


def _content_pieces(tokens: int, secret: str | None, split: bool) -> list[str]:
    pieces = [_WORDS[index % len(_WORDS)] for index in range(tokens)]
    if secret:
        middle = tokens // 2
        if split and len(secret) > 1:
            half = len(secret) // 2
            pieces[middle:middle] = [" " + secret[:half], secret[half:]]
        else:
            pieces[middle:middle] = [" " + secret]
    return pieces


def _words(value: object) -> int:
    """A rough, deterministic token count: whitespace-separated words."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        if value and all(isinstance(item, int) for item in value):
            return len(value)
        return sum(_words(item) for item in value)
    if isinstance(value, dict):
        if "text" in value:
            return _words(value["text"])
        return _words(value.get("content"))
    return 0


def bytes_content(n: int, secret: str | None = None) -> bytes:
    """The body ``GET /bytes?n=N[&body_secret=S]`` returns (for tests; the server streams it)."""
    body = bytearray((_BYTES_BLOCK * (n // len(_BYTES_BLOCK) + 1))[:n])
    if secret:
        raw = secret.encode()[:n]
        start = (n - len(raw)) // 2
        body[start:start + len(raw)] = raw
    return bytes(body)


def _bytes_pieces(n: int, secret: str | None) -> Iterator[bytes | memoryview]:
    block = memoryview(_BYTES_BLOCK)
    raw = secret.encode()[:n] if secret else b""
    start = (n - len(raw)) // 2
    spans = ((0, start), (start + len(raw), n)) if raw else ((0, n),)
    for index, (low, high) in enumerate(spans):
        if index == 1:
            yield raw
        offset = low
        while offset < high:
            skew = offset % len(BYTES_PATTERN)
            size = min(high - offset, _SEND_SLICE)
            yield block[skew:skew + size]
            offset += size


def _embedding(key: bytes, dimensions: int) -> array[float]:
    raw = array("H", hashlib.shake_256(key).digest(dimensions * 2))
    if sys.byteorder == "big":
        raw.byteswap()
    values = [(item - 32767.5) / 32767.5 for item in raw]
    norm = math.sqrt(math.fsum(item * item for item in values)) or 1.0
    return array("f", [item / norm for item in values])


# ----------------------------------------------------------------------------- server


@dataclass(slots=True)
class Stats:
    """Counters of one ``MockUpstream`` (served as JSON by ``GET /stats``).

    requests                    requests parsed (including the /stats request itself).
    streams_started             SSE responses begun.
    streams_completed           SSE responses that reached ``data: [DONE]``.
    streams_aborted_by_client   SSE responses ended because the client went away.
    open_connections            connections being served now (includes the asker's).
    connections_accepted        connections accepted in total.
    connections_closed_by_peer  connections ended by the client (EOF or reset).
    responses_cut               responses cut by ``close_after``.
    responses_stalled           responses stalled by ``stall_after``.
    requests_aborted_by_client  non-stream responses abandoned because the client left.
    """

    requests: int = 0
    streams_started: int = 0
    streams_completed: int = 0
    streams_aborted_by_client: int = 0
    open_connections: int = 0
    connections_accepted: int = 0
    connections_closed_by_peer: int = 0
    responses_cut: int = 0
    responses_stalled: int = 0
    requests_aborted_by_client: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _PeerGoneError(Exception):
    """The client closed or reset the connection."""


class _Request:
    __slots__ = ("body", "body_size", "continue_sent", "expect_continue", "has_knobs",
                 "headers", "keep_alive", "method", "target", "too_large", "version")

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.body_size = 0
        self.keep_alive = True
        self.has_knobs = False
        self.too_large = False
        self.expect_continue = False
        self.continue_sent = False


def _format_address(address: Any) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, backlog: int = 1024) -> socket.socket:
    """A listening, non-blocking TCP socket (``port=0``: a free port). The caller owns it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=backlog)
    sock.setblocking(False)
    return sock


_Handler: TypeAlias = Callable[["_Connection", _Request, Knobs], Coroutine[Any, Any, bool]]


class MockUpstream:
    """The mock server state: request counter, ``stats``, model list, peer label.

    ``serve(listener)`` accepts connections until cancelled; ``serve_connection(sock)``
    serves one already-connected socket (tests use a ``socket.socketpair()`` end with a
    virtual clock). Neither closes the listening socket it was given.
    """

    def __init__(self, *, models: Sequence[str] = DEFAULT_MODELS, peer: str | None = None,
                 defaults: dict[str, str] | None = None) -> None:
        self.models = tuple(models)
        self.defaults = dict(defaults or {})
        """Server-wide knob values (``--default name=value``), under each request's own."""
        self.stats = Stats()
        self.peer = peer or "unbound"
        self.address: tuple[str, int] | None = None
        self._models_body = orjson.dumps({
            "object": "list",
            "data": [{"id": model, "object": "model", "created": MODEL_CREATED,
                      "owned_by": "li-httpd-mock"} for model in self.models],
        })
        self._peer_line = b""
        self._date_second = -1
        self._date = b""
        self._set_peer(self.peer)

    def _set_peer(self, peer: str) -> None:
        self.peer = peer
        self._peer_line = b"x-mock-peer: " + peer.encode("latin-1") + b"\r\n"

    @property
    def url(self) -> str:
        """``http://host:port`` of the listener (after ``serve`` started)."""
        return f"http://{self.peer}"

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = formatdate(now, usegmt=True).encode("ascii")
        return self._date

    async def serve(self, listener: socket.socket | trio.SocketListener, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and serve connections until cancelled; ``task_status.started()`` once
        listening. A ``trio.SocketListener`` is duplicated (the copy is closed on exit)."""
        owned: socket.socket | None = None
        if isinstance(listener, trio.SocketListener):
            owned = socket.socket(fileno=listener.socket.dup().detach())
            sock = owned
        else:
            sock = listener
        try:
            sock.setblocking(False)
            if self.peer == "unbound":
                self._set_peer(_format_address(sock.getsockname()))
            name = sock.getsockname()
            if isinstance(name, tuple):
                self.address = (name[0], name[1])
            async with trio.open_nursery() as nursery:
                task_status.started()
                await self._accept_loop(sock, nursery)
        finally:
            if owned is not None:
                owned.close()

    async def _accept_loop(self, sock: socket.socket, nursery: trio.Nursery) -> None:
        accepted = 0
        tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        while True:
            try:
                conn, address = sock.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    await trio.sleep(0.1)
                    continue
                if exc.errno == errno.ECONNABORTED:
                    continue
                raise
            conn.setblocking(False)
            if tcp:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            nursery.start_soon(self.serve_connection, conn, address)
            accepted += 1
            if accepted % CHECKPOINT_EVERY == 0:
                await trio.lowlevel.checkpoint()

    async def serve_connection(self, sock: socket.socket, address: Any = None) -> None:
        """Serve one connected socket until either side closes it; closes ``sock``."""
        stats = self.stats
        stats.open_connections += 1
        stats.connections_accepted += 1
        sock.setblocking(False)
        client = _format_address(address) if isinstance(address, tuple) else "local"
        try:
            await _Connection(self, sock, client).run()
        except _PeerGoneError:
            stats.connections_closed_by_peer += 1
        finally:
            stats.open_connections -= 1
            sock.close()


class _Connection:
    """One client connection: the httptools protocol object and the response writer."""

    def __init__(self, server: MockUpstream, sock: socket.socket, client: str) -> None:
        self.server = server
        self.sock = sock
        self.client = client
        self.parser = httptools.HttpRequestParser(self)
        self.ready: deque[_Request] = deque()
        self.current: _Request | None = None
        self.out: list[bytes] = []
        self.inbuf: list[bytes] = []
        self.broken = False
        self.upgraded = False
        self.in_stream = False

    # httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.current = _Request()

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.current
        assert request is not None
        request.headers.append((name, value))
        if len(name) >= 6:
            lowered = name[:7].lower()
            if lowered == b"x-mock-":
                request.has_knobs = True
            elif lowered == b"expect" and value.strip().lower() == b"100-continue":
                request.expect_continue = True

    def on_headers_complete(self) -> None:
        request = self.current
        assert request is not None
        parser = self.parser
        request.method = parser.get_method()
        request.version = parser.get_http_version()
        # An Upgrade (or CONNECT) is answered as a plain request, then the connection
        # closes: httptools stops parsing after it.
        request.keep_alive = parser.should_keep_alive() and not parser.should_upgrade()
        if request.version != "1.1":
            request.expect_continue = False

    def on_body(self, body: bytes) -> None:
        request = self.current
        assert request is not None
        request.body_size += len(body)
        if request.body_size > MAX_REQUEST_BODY:
            request.too_large = True
            request.body.clear()
        elif not request.too_large:
            request.body.append(body)

    def on_message_complete(self) -> None:
        request = self.current
        assert request is not None
        self.ready.append(request)
        self.current = None

    # socket I/O ---------------------------------------------------------------------

    async def _recv(self) -> bytes:
        sock = self.sock
        while True:
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                raise _PeerGoneError from exc
            if not data:
                raise _PeerGoneError
            return data

    async def _send(self, data: bytes | memoryview) -> None:
        sock = self.sock
        view: memoryview | None = None
        while True:
            try:
                sent = sock.send(data)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            except OSError as exc:
                raise _PeerGoneError from exc
            if sent == len(data):
                return
            if view is None:
                view = memoryview(data)
            view = view[sent:]
            data = view

    async def _flush(self, *more: bytes) -> None:
        out = self.out
        if more:
            out.extend(more)
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            await self._send(data)

    def _poll_peer(self) -> None:
        """Non-blocking check for EOF/reset; buffers any pipelined bytes that arrived."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            raise _PeerGoneError from exc
        if not data:
            raise _PeerGoneError
        self.inbuf.append(data)

    async def _pause(self, seconds: float, *, keep_input: bool = True) -> None:
        """Sleep while watching the socket; ``_PeerGoneError`` as soon as the client leaves."""
        if seconds <= 0:
            return
        sock = self.sock
        with trio.move_on_after(seconds):
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    data = sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise _PeerGoneError from exc
                if not data:
                    raise _PeerGoneError
                if keep_input:
                    self.inbuf.append(data)

    async def _close_gracefully(self) -> None:
        """Send FIN, then drain the client's input for a moment so that unread bytes in
        our receive buffer do not turn the close into a reset that destroys the reply."""
        sock = self.sock
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        with trio.move_on_after(LINGER_SECONDS):
            while True:
                try:
                    data = sock.recv(RECV_SIZE)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(sock)
                    continue
                except OSError:
                    return
                if not data:
                    return

    # connection loop ----------------------------------------------------------------

    async def run(self) -> None:
        handled = 0
        while True:
            if self.inbuf:
                data = b"".join(self.inbuf)
                self.inbuf.clear()
            else:
                if self.out:
                    await self._flush()
                data = await self._recv()
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                self.upgraded = True
            except httptools.HttpParserError:
                self.broken = True
            while self.ready:
                request = self.ready.popleft()
                if not await self._dispatch(request):
                    await self._flush()
                    await self._close_gracefully()
                    return
                handled += 1
                if handled % CHECKPOINT_EVERY == 0:
                    await trio.lowlevel.checkpoint()
            if self.broken:
                self.server.stats.requests += 1
                body = _error_body(400, "malformed HTTP request", "bad_request")
                self.out.append(self._head(400, _JSON, len(body),
                                           count=self.server.stats.requests, keep=False) + body)
            if self.broken or self.upgraded:
                await self._flush()
                await self._close_gracefully()
                return
            current = self.current
            if current is not None and current.expect_continue and not current.continue_sent:
                current.continue_sent = True
                self.out.append(_CONTINUE)

    def _head(self, status: int, content_type: bytes, framing: int, *, count: int, keep: bool,
              http10: bool = False, extra: bytes = b"") -> bytes:
        if framing >= 0:
            frame = b"content-length: %d\r\n" % framing
        elif framing == _CHUNKED:
            frame = b"transfer-encoding: chunked\r\n"
        else:
            frame = b""
        if not keep:
            connection = b"connection: close\r\n"
        elif http10:
            connection = b"connection: keep-alive\r\n"
        else:
            connection = b""
        server = self.server
        return _HEAD_FORMAT % (_status_line(status), content_type, frame, server.date(), count,
                               server._peer_line, connection, extra)

    async def _dispatch(self, request: _Request) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        server = self.server
        stats = server.stats
        stats.requests += 1
        self.count = stats.requests
        self.in_stream = False
        target = request.target
        mark = target.find(b"?")
        path = target if mark < 0 else target[:mark]
        route = _ROUTES.get(path)
        if route is None:
            message = f"mock-upstream has no route for {path.decode('latin-1')}"
            return self._simple(request, 404, _JSON,
                                _error_body(404, message, "not_found"))
        handler, methods = route
        if methods is not None and request.method not in methods:
            allow = b", ".join(sorted(methods))
            body = _error_body(405, f"method {request.method.decode('latin-1')} not allowed",
                               "method_not_allowed")
            return self._simple(request, 405, _JSON, body, extra=b"allow: %s\r\n" % allow)
        if request.too_large:
            body = _error_body(413, f"request body over {MAX_REQUEST_BODY} bytes",
                               "body_too_large")
            request.keep_alive = False
            return self._simple(request, 413, _JSON, body)
        knobs = DEFAULT_KNOBS
        if (request.has_knobs or mark >= 0 or self.server.defaults) and path != b"/stats":
            try:
                knobs = parse_knobs({**self.server.defaults,
                                     **_knob_values(request.headers, target)})
            except KnobError as exc:
                return self._simple(request, 400, _JSON,
                                    _error_body(400, str(exc), "invalid_mock_knob"))
        try:
            if knobs is not DEFAULT_KNOBS:
                if knobs.ttfb_ms:
                    await self._flush()
                    await self._pause(knobs.ttfb_ms / 1000.0)
                if knobs.fail is not None:
                    return await self._fail(request, knobs,
                                            anthropic=path == b"/v1/messages")
            return await handler(self, request, knobs)
        except _PeerGoneError:
            if not self.in_stream:
                stats.requests_aborted_by_client += 1
            raise

    # responses ----------------------------------------------------------------------

    def _simple(self, request: _Request, status: int, content_type: bytes, body: bytes, *,
                extra: bytes = b"") -> bool:
        keep = request.keep_alive
        head = self._head(status, content_type, len(body), count=self.count, keep=keep,
                          http10=request.version != "1.1", extra=extra)
        if request.method == b"HEAD":
            self.out.append(head)
        else:
            self.out.append(head + body)
        return keep

    async def _fixed(self, request: _Request, knobs: Knobs, status: int, content_type: bytes, *,
                     length: int, pieces: Iterator[bytes | memoryview],
                     extra: bytes = b"") -> bool:
        """A Content-Length response whose body may be cut by ``close_after``/``stall_after``."""
        cut, close = knobs.cut()
        keep = request.keep_alive and cut is None
        self.out.append(self._head(status, content_type, length, count=self.count, keep=keep,
                                   http10=request.version != "1.1", extra=extra))
        if request.method == b"HEAD":
            pieces = iter(())
        budget = length if cut is None else min(cut, length)
        for sends, piece in enumerate(pieces, 1):
            if budget <= 0:
                break
            if len(piece) > budget:
                piece = piece[:budget]
            budget -= len(piece)
            if self.out:
                self.out.append(bytes(piece))
                await self._flush()
            else:
                await self._send(piece)
            if sends % CHECKPOINT_EVERY == 0:
                await trio.lowlevel.checkpoint()
        await self._flush()
        return await self._after_cut(close) if cut is not None else keep

    async def _after_cut(self, close: bool) -> bool:
        stats = self.server.stats
        if close:
            stats.responses_cut += 1
            return False
        stats.responses_stalled += 1
        await self._pause(math.inf, keep_input=False)
        raise AssertionError("unreachable: _pause(inf) returns only by raising")

    async def _json(self, request: _Request, knobs: Knobs, obj: object) -> bool:
        body = orjson.dumps(obj)
        if knobs.stall_after is None and knobs.close_after is None:
            return self._simple(request, 200, _JSON, body)
        return await self._fixed(request, knobs, 200, _JSON, length=len(body),
                                 pieces=iter((body,)))

    async def _fail(self, request: _Request, knobs: Knobs, *, anthropic: bool = False) -> bool:
        status = knobs.fail
        assert status is not None
        message = f"mock-upstream failure (status {status})"
        if knobs.body_secret:
            message += f": {knobs.body_secret}"
        if status in (204, 304):
            self.out.append(self._head(status, _JSON, _UNTIL_CLOSE, count=self.count,
                                       keep=request.keep_alive,
                                       http10=request.version != "1.1"))
            return request.keep_alive
        if anthropic:
            body = _anthropic_error_body(status, message)
        else:
            body = _error_body(status, message, f"mock_status_{status}")
        extra = b"retry-after: 1\r\n" if status in (429, 503) else b""
        return await self._fixed(request, knobs, status, _JSON, length=len(body),
                                 pieces=iter((body,)), extra=extra)

    async def _stream(self, request: _Request, knobs: Knobs, events: Iterator[bytes], *,
                      framed: bool = False) -> bool:
        """Send an SSE response: each event JSON from ``events`` as its own chunk, as soon
        as it is produced, then ``data: [DONE]`` and the last chunk. ``framed``: the
        items of ``events`` are whole SSE events (named ones), the last one a
        ``_LastEvent``; no ``[DONE]`` follows."""
        stats = self.server.stats
        stats.streams_started += 1
        chunked = request.version == "1.1"
        keep = request.keep_alive and chunked
        cut, close = knobs.cut()
        if cut is not None:
            keep = False
        delay = knobs.delay_ms / 1000.0
        self.out.append(self._head(200, _SSE, _CHUNKED if chunked else _UNTIL_CLOSE,
                                   count=self.count, keep=keep,
                                   extra=b"cache-control: no-cache\r\n"))
        sent = 0
        self.in_stream = True
        try:
            produce = events if framed else _with_done(events)
            final = False
            while not final:  # no pause after the last event
                if sent == cut:
                    break
                if sent:
                    if delay:
                        await self._flush()
                        await self._pause(delay)
                    elif sent % CHECKPOINT_EVERY == 0:
                        self._poll_peer()
                        await trio.lowlevel.checkpoint()
                # Produced (and so stamped with x_mock_sent_at) after the pause, just
                # before it is written: the stamp is the send time a driver compares to.
                payload = next(produce, None)
                if payload is None:
                    break
                final = payload is _DONE or isinstance(payload, _LastEvent)
                event = payload if framed or payload is _DONE else b"data: " + payload + b"\n\n"
                if chunked:
                    event = b"%x\r\n%s\r\n" % (len(event), event)
                    if final and cut is None:
                        event += _LAST_CHUNK
                if self.out:
                    await self._flush(event)
                else:
                    await self._send(event)
                sent += 1
            if cut is None:
                stats.streams_completed += 1
                return keep
            await self._flush()
            return await self._after_cut(close)
        except _PeerGoneError:
            stats.streams_aborted_by_client += 1
            raise

    def _json_request(self, request: _Request) -> dict[str, Any] | bytes:
        """The request body as a JSON object, or an error body."""
        try:
            body = orjson.loads(b"".join(request.body))
        except orjson.JSONDecodeError:
            return _error_body(400, "request body is not valid JSON", "invalid_json")
        if not isinstance(body, dict):
            return _error_body(400, "request body must be a JSON object", "invalid_json")
        return body

    # endpoints ----------------------------------------------------------------------

    async def _small(self, request: _Request, knobs: Knobs) -> bool:
        return await self._text(request, knobs, _SMALL_BODY)

    async def _text(self, request: _Request, knobs: Knobs, body: bytes) -> bool:
        if knobs.stall_after is None and knobs.close_after is None:
            return self._simple(request, 200, _TEXT, body)
        return await self._fixed(request, knobs, 200, _TEXT, length=len(body),
                                 pieces=iter((body,)))

    async def _health(self, request: _Request, knobs: Knobs) -> bool:
        if knobs.stall_after is None and knobs.close_after is None:
            return self._simple(request, 200, _JSON, _HEALTH_BODY)
        return await self._fixed(request, knobs, 200, _JSON, length=len(_HEALTH_BODY),
                                 pieces=iter((_HEALTH_BODY,)))

    async def _stats(self, request: _Request, knobs: Knobs) -> bool:
        return self._simple(request, 200, _JSON,
                            orjson.dumps(self.server.stats.as_dict()))

    async def _models(self, request: _Request, knobs: Knobs) -> bool:
        body = self.server._models_body
        if knobs.stall_after is None and knobs.close_after is None:
            return self._simple(request, 200, _JSON, body)
        return await self._fixed(request, knobs, 200, _JSON, length=len(body),
                                 pieces=iter((body,)))

    async def _bytes(self, request: _Request, knobs: Knobs) -> bool:
        n = knobs.n
        return await self._fixed(request, knobs, 200, _OCTETS, length=n,
                                 pieces=_bytes_pieces(n, knobs.body_secret))

    async def _echo(self, request: _Request, knobs: Knobs) -> bool:
        body = b"".join(request.body)
        return await self._json(request, knobs, {
            "method": request.method.decode("latin-1"),
            "target": request.target.decode("latin-1"),
            "version": request.version,
            "headers": [[name.decode("latin-1"), value.decode("latin-1")]
                        for name, value in request.headers],
            "body_bytes": request.body_size,
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "client": self.client,
        })

    async def _chat(self, request: _Request, knobs: Knobs) -> bool:
        return await self._generate(request, knobs, chat=True)

    async def _completions(self, request: _Request, knobs: Knobs) -> bool:
        return await self._generate(request, knobs, chat=False)

    async def _generate(self, request: _Request, knobs: Knobs, *, chat: bool) -> bool:
        body = self._json_request(request)
        if isinstance(body, bytes):
            return self._simple(request, 400, _JSON, body)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            model = DEFAULT_MODEL
        tokens, finish = knobs.tokens, "stop"
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < tokens:
            tokens, finish = limit, "length"
        pieces = _content_pieces(tokens, knobs.body_secret, knobs.secret_split)
        cached = knobs.cached_tokens
        prompt_tokens = _words(body.get("messages") if chat else body.get("prompt")) + cached
        usage: dict[str, object] = {"prompt_tokens": prompt_tokens,
                                    "completion_tokens": len(pieces),
                                    "total_tokens": prompt_tokens + len(pieces)}
        if cached:
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        created = int(time.time())
        ident = f"{'chatcmpl' if chat else 'cmpl'}-mock{self.count}"
        if body.get("stream") is True:
            maker = _chat_events if chat else _completion_events
            return await self._stream(request, knobs,
                                      maker(ident, created, model, pieces, finish=finish,
                                            usage=usage))
        if knobs.delay_ms and tokens:
            await self._flush()
            await self._pause(tokens * knobs.delay_ms / 1000.0)
        text = "".join(pieces)
        choice: dict[str, object]
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text,
                                              "refusal": None},
                      "logprobs": None, "finish_reason": finish}
        else:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        return await self._json(request, knobs, {
            "id": ident, "object": "chat.completion" if chat else "text_completion",
            "created": created, "model": model, "system_fingerprint": "fp_mock",
            "choices": [choice], "usage": usage,
        })

    async def _responses(self, request: _Request, knobs: Knobs) -> bool:
        body = self._json_request(request)
        if isinstance(body, bytes):
            return self._simple(request, 400, _JSON, body)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            model = DEFAULT_MODEL
        pieces = _content_pieces(knobs.tokens, knobs.body_secret, knobs.secret_split)
        input_tokens = _words(body.get("input")) + knobs.cached_tokens
        usage = {"input_tokens": input_tokens,
                 "input_tokens_details": {"cached_tokens": knobs.cached_tokens,
                                          "cache_write_tokens": knobs.cache_write_tokens},
                 "output_tokens": len(pieces),
                 "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": input_tokens + len(pieces)}
        ident = f"resp_mock{self.count}"
        created = int(time.time())
        if body.get("stream") is True:
            return await self._stream(request, knobs,
                                      _response_events(ident, created, model, pieces, usage),
                                      framed=True)
        if knobs.delay_ms and knobs.tokens:
            await self._flush()
            await self._pause(knobs.tokens * knobs.delay_ms / 1000.0)
        return await self._json(request, knobs, _response_object(
            ident, created, model, "completed", [_response_message(ident, "".join(pieces))],
            usage))

    async def _messages(self, request: _Request, knobs: Knobs) -> bool:
        try:
            body = orjson.loads(b"".join(request.body))
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return self._simple(request, 400, _JSON, _anthropic_error_body(
                400, "request body must be a JSON object"))
        model = body.get("model")
        if not isinstance(model, str) or not model:
            model = DEFAULT_MODEL
        tokens, stop = knobs.tokens, "end_turn"
        limit = body.get("max_tokens")
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < tokens:
            tokens, stop = limit, "max_tokens"
        pieces = _content_pieces(tokens, knobs.body_secret, knobs.secret_split)
        usage = {"input_tokens": _words(body.get("messages")) + _words(body.get("system")),
                 "output_tokens": len(pieces),
                 "cache_creation_input_tokens": knobs.cache_write_tokens,
                 "cache_read_input_tokens": knobs.cached_tokens}
        ident = f"msg_mock{self.count}"
        if body.get("stream") is True:
            return await self._stream(request, knobs,
                                      _message_events(ident, model, pieces, stop, usage),
                                      framed=True)
        if knobs.delay_ms and tokens:
            await self._flush()
            await self._pause(tokens * knobs.delay_ms / 1000.0)
        return await self._json(request, knobs, {
            "id": ident, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "".join(pieces)}],
            "stop_reason": stop, "stop_sequence": None, "usage": usage,
        })

    async def _embeddings(self, request: _Request, knobs: Knobs) -> bool:
        body = self._json_request(request)
        if isinstance(body, bytes):
            return self._simple(request, 400, _JSON, body)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            model = "mock-embed"
        raw = body.get("input")
        inputs: list[object]
        if isinstance(raw, str) or (isinstance(raw, list) and raw
                                    and all(isinstance(item, int) for item in raw)):
            inputs = [raw]
        elif isinstance(raw, list) and raw:
            inputs = list(raw)
        else:
            error = _error_body(400, "input must be a string or a non-empty list", "invalid_input")
            return self._simple(request, 400, _JSON, error)
        dimensions = knobs.dimensions
        if dimensions is None:
            requested = body.get("dimensions")
            if (isinstance(requested, int) and not isinstance(requested, bool)
                    and 1 <= requested <= MAX_DIMENSIONS):
                dimensions = requested
            else:
                dimensions = DEFAULT_DIMENSIONS
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(inputs):
            key = item.encode() if isinstance(item, str) else orjson.dumps(item)
            vector = _embedding(key, dimensions)
            if sys.byteorder == "big":
                vector.byteswap()
                encoded: object = base64.b64encode(vector.tobytes()).decode("ascii")
                vector.byteswap()
            else:
                encoded = base64.b64encode(vector.tobytes()).decode("ascii")
            data.append({"object": "embedding", "index": index,
                         "embedding": encoded if as_base64 else vector.tolist()})
        prompt_tokens = sum(_words(item) for item in inputs)
        answer: dict[str, object] = {
            "object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
        if knobs.body_secret:
            answer["x_mock_secret"] = knobs.body_secret
        return await self._json(request, knobs, answer)


def _with_done(events: Iterator[bytes]) -> Iterator[bytes]:
    yield from events
    yield _DONE


def _chat_events(ident: str, created: int, model: str, pieces: list[str], *,
                 finish: str, usage: dict[str, object]) -> Iterator[bytes]:
    base: dict[str, object] = {"id": ident, "object": "chat.completion.chunk",
                               "created": created, "model": model,
                               "system_fingerprint": "fp_mock"}
    dumps, now = orjson.dumps, time.time
    yield dumps({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                      "logprobs": None, "finish_reason": None}],
                 "x_mock_sent_at": now()})
    for piece in pieces:
        yield dumps({**base, "choices": [{"index": 0, "delta": {"content": piece},
                                          "logprobs": None, "finish_reason": None}],
                     "x_mock_sent_at": now()})
    yield dumps({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                      "finish_reason": finish}], "x_mock_sent_at": now()})
    yield dumps({**base, "choices": [], "usage": usage, "x_mock_sent_at": now()})


def _completion_events(ident: str, created: int, model: str, pieces: list[str], *,
                       finish: str, usage: dict[str, object]) -> Iterator[bytes]:
    base: dict[str, object] = {"id": ident, "object": "text_completion", "created": created,
                               "model": model, "system_fingerprint": "fp_mock"}
    dumps, now = orjson.dumps, time.time
    for piece in pieces:
        yield dumps({**base, "choices": [{"text": piece, "index": 0, "logprobs": None,
                                          "finish_reason": None}], "x_mock_sent_at": now()})
    yield dumps({**base, "choices": [{"text": "", "index": 0, "logprobs": None,
                                      "finish_reason": finish}], "x_mock_sent_at": now()})
    yield dumps({**base, "choices": [], "usage": usage, "x_mock_sent_at": now()})


class _LastEvent(bytes):
    """A stream's last whole SSE event (a ``framed`` stream has no ``[DONE]``)."""

    __slots__ = ()


def _named(kind: str, data: dict[str, object]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (kind.encode("ascii"), orjson.dumps(data))


def _response_message(ident: str, text: str) -> dict[str, object]:
    return {"type": "message", "id": f"msg_{ident.removeprefix('resp_')}",
            "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [],
                         "logprobs": []}]}


def _response_object(ident: str, created: int, model: str, status: str,
                     output: list[dict[str, object]],
                     usage: dict[str, object] | None) -> dict[str, object]:
    return {"id": ident, "object": "response", "created_at": created, "status": status,
            "error": None, "incomplete_details": None, "instructions": None,
            "max_output_tokens": None, "model": model, "output": output,
            "parallel_tool_calls": True, "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None}, "store": False,
            "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto",
            "tools": [], "top_p": 1.0, "truncation": "disabled", "usage": usage,
            "user": None, "metadata": {}}


def _response_events(ident: str, created: int, model: str, pieces: list[str],
                     usage: dict[str, object]) -> Iterator[bytes]:
    """The Responses API stream of one text message, as the openai SDK parses it."""
    numbers = iter(range(1 << 62))
    item_id = f"msg_{ident.removeprefix('resp_')}"
    text = "".join(pieces)

    def event(kind: str, **fields: object) -> bytes:
        return _named(kind, {"type": kind, "sequence_number": next(numbers), **fields})

    started = _response_object(ident, created, model, "in_progress", [], None)
    yield event("response.created", response=started)
    yield event("response.in_progress", response=started)
    item = {**_response_message(ident, ""), "status": "in_progress", "content": []}
    yield event("response.output_item.added", output_index=0, item=item)
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    place = {"item_id": item_id, "output_index": 0, "content_index": 0}
    yield event("response.content_part.added", **place, part=part)
    for piece in pieces:
        yield event("response.output_text.delta", **place, delta=piece, logprobs=[])
    yield event("response.output_text.done", **place, text=text, logprobs=[])
    yield event("response.content_part.done", **place, part={**part, "text": text})
    message = _response_message(ident, text)
    yield event("response.output_item.done", output_index=0, item=message)
    done = _response_object(ident, created, model, "completed", [message], usage)
    yield _LastEvent(event("response.completed", response=done))


def _message_events(ident: str, model: str, pieces: list[str], stop: str,
                    usage: dict[str, int]) -> Iterator[bytes]:
    """The Anthropic Messages stream of one text block, as the anthropic SDK parses it."""
    start: dict[str, object] = {
        "id": ident, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}
    yield _named("message_start", {"type": "message_start", "message": start})
    yield _named("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}})
    yield _named("ping", {"type": "ping"})
    for piece in pieces:
        yield _named("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": piece}})
    yield _named("content_block_stop", {"type": "content_block_stop", "index": 0})
    yield _named("message_delta", {"type": "message_delta",
                                   "delta": {"stop_reason": stop, "stop_sequence": None},
                                   "usage": {"output_tokens": usage["output_tokens"]}})
    yield _LastEvent(_named("message_stop", {"type": "message_stop"}))


_ROUTES: dict[bytes, tuple[_Handler, frozenset[bytes] | None]] = {
    b"/v1/chat/completions": (_Connection._chat, _POST),
    b"/v1/completions": (_Connection._completions, _POST),
    b"/v1/embeddings": (_Connection._embeddings, _POST),
    b"/v1/responses": (_Connection._responses, _POST),
    b"/v1/messages": (_Connection._messages, _POST),
    b"/v1/models": (_Connection._models, _GET),
    b"/echo": (_Connection._echo, None),
    b"/health": (_Connection._health, _GET),
    b"/small": (_Connection._small, _GET),
    b"/bytes": (_Connection._bytes, _GET),
    b"/stats": (_Connection._stats, _GET),
}


async def serve(listener: socket.socket | trio.SocketListener, *,
                models: Sequence[str] = DEFAULT_MODELS,
                task_status: trio.TaskStatus[MockUpstream] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a ``MockUpstream`` on ``listener`` until cancelled; ``nursery.start(serve, sock)``
    returns the server object (for ``stats`` and ``url``)."""
    server = MockUpstream(models=models)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listener)
        task_status.started(server)


# -------------------------------------------------------------------------------- CLI


async def _run(sock: socket.socket, models: Sequence[str],
               defaults: dict[str, str] | None = None) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            server = MockUpstream(models=models, defaults=defaults)
            await nursery.start(server.serve, sock)
            print(f"mock-upstream listening on {server.url}", flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    """``li-httpd mock-upstream``: serve until SIGTERM/SIGINT; 0 on a clean stop, 1 when
    the address cannot be bound."""
    parser = argparse.ArgumentParser(
        prog="li-httpd mock-upstream",
        description="Fake OpenAI-compatible inference server (JSON and SSE streaming) for "
                    "demos, tests and benchmarks. Knobs: x-mock-<name> headers or query "
                    "parameters: tokens, delay_ms, ttfb_ms, stall_after, close_after, fail, "
                    "body_secret, secret_split, dimensions, n, cached_tokens, "
                    "cache_write_tokens.")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="port to listen on; 0 picks a free one")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help="comma-separated model ids for GET /v1/models")
    parser.add_argument("--default", action="append", default=[], metavar="KNOB=VALUE",
                        help="a knob value for every request that does not set it "
                             "(e.g. --default ttfb_ms=50 makes a slow peer); repeatable")
    args = parser.parse_args(argv)
    defaults: dict[str, str] = {}
    for item in args.default:
        name, sep, value = item.partition("=")
        if not sep or name not in KNOB_NAMES:
            print(f"mock-upstream: --default expects KNOB=VALUE with a knob of "
                  f"{', '.join(sorted(KNOB_NAMES))}", file=sys.stderr)
            return 2
        defaults[name] = value
    try:
        parse_knobs(defaults)
    except KnobError as exc:
        print(f"mock-upstream: {exc}", file=sys.stderr)
        return 2
    models = [model.strip() for model in args.models.split(",") if model.strip()]
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        print(f"mock-upstream: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    with sock:
        trio.run(_run, sock, models, defaults)
    return 0


if __name__ == "__main__":
    sys.exit(main())
