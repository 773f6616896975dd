"""The load drivers' minimal HTTP/1.1 client (plain ``http://`` only).

Sockets are non-blocking stdlib sockets driven with ``trio.lowlevel.wait_readable`` /
``wait_writable`` — no trio stream objects, no per-read cancel scopes — so that one
process can keep thousands of connections busy. Reads wait first and then ``recv``
(a driver's reads almost always find the socket empty, so trying first would mostly
raise ``BlockingIOError``); writes try first. Every wait is a trio checkpoint, so the
callers' cancel scopes (timeouts, the run's deadline) work as usual.

Responses are parsed by ``httptools`` (llhttp): status, the headers that decide framing,
``Content-Length`` / chunked / until-close bodies and interim ``1xx`` responses.
``Response.on_body`` receives the decoded body (chunk framing removed) as it arrives;
subclasses override it to look at the body incrementally (``sse.SseResponse``).

Failures raise ``ClientError`` with a ``kind``: ``connect`` (the connection could not be
established or the request could not be written), ``truncated`` (the peer closed or
reset before the response was complete) or ``protocol`` (the response is not HTTP/1.1
we can parse). Timeouts are the callers' business (trio cancel scopes).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

import httptools
import trio

__all__ = [
    "RECV_SIZE",
    "ClientError",
    "Connection",
    "Response",
    "Target",
    "build_request",
    "exchange",
    "parse_header",
    "resolve",
    "split_url",
    "with_query",
]

RECV_SIZE = 64 * 1024
_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY})


class ClientError(Exception):
    """A failed exchange; ``kind`` is ``connect``, ``truncated`` or ``protocol``."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved request target: where to connect and what to put in the request line."""

    family: int
    address: tuple[str, int] | tuple[str, int, int, int]
    host_header: str
    target: str

    def with_query(self, pairs: Iterable[tuple[str, str]]) -> Target:
        return Target(self.family, self.address, self.host_header,
                      with_query(self.target, pairs))


def split_url(url: str) -> tuple[str, int, str, str]:
    """``http://host[:port]/path?query`` -> (host, port, Host header value, origin-form
    target). Raises ``ValueError`` for anything else (https, no host, a fragment is
    dropped)."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"only http:// URLs are supported: {url!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"URL has no host: {url!r}")
    port = parts.port or 80
    netloc = parts.netloc.rpartition("@")[2]
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return host, port, netloc, target


def with_query(target: str, pairs: Iterable[tuple[str, str]]) -> str:
    """``target`` with query parameters merged in: a later value for a name replaces an
    earlier one (including one already in ``target``), first-seen order is kept."""
    path, _, query = target.partition("?")
    merged: dict[str, str] = dict(parse_qsl(query, keep_blank_values=True))
    for name, value in pairs:
        merged.pop(name, None)
        merged[name] = value
    return f"{path}?{urlencode(merged)}" if merged else path


async def resolve(url: str) -> Target:
    """Resolve ``url``'s host once (the drivers never resolve per connection)."""
    host, port, host_header, target = split_url(url)
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise ValueError(f"cannot resolve {host!r}")
    family, _, _, _, address = infos[0]
    return Target(int(family), address, host_header, target)  # type: ignore[arg-type]


def parse_header(text: str) -> tuple[str, str]:
    """``"name: value"`` (or ``name:value``) -> (name, value)."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name or any(c in name for c in " \t\r\n"):
        raise ValueError(f"header must be name:value: {text!r}")
    if "\r" in value or "\n" in value:
        raise ValueError(f"header value contains a line break: {text!r}")
    return name, value.strip()


def build_request(method: str, target: Target, *, body: bytes = b"",
                  headers: Sequence[tuple[str, str]] = (),
                  content_type: str | None = None) -> bytes:
    """The bytes of one request. ``Host`` and ``Content-Length`` (when there is a body
    or the method usually has one) are added unless ``headers`` has them."""
    names = {name.lower() for name, _ in headers}
    lines = [f"{method} {target.target} HTTP/1.1"]
    if "host" not in names:
        lines.append(f"host: {target.host_header}")
    if content_type and body and "content-type" not in names:
        lines.append(f"content-type: {content_type}")
    if "content-length" not in names and (body or method in ("POST", "PUT", "PATCH")):
        lines.append(f"content-length: {len(body)}")
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Connection:
    """One client TCP connection."""

    __slots__ = ("fd", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()  # trio waits on the int without a fileno() call each time

    @classmethod
    async def open(cls, target: Target) -> Connection:
        try:
            sock = socket.socket(target.family, socket.SOCK_STREAM)
        except OSError as error:  # EMFILE: out of file descriptors
            raise ClientError("connect", f"socket: {error}") from None
        try:
            sock.setblocking(False)
            if target.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex(target.address)
            if code in _IN_PROGRESS:
                await trio.lowlevel.wait_writable(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise ClientError("connect", os.strerror(code))
        except OSError as error:
            sock.close()
            raise ClientError("connect", str(error)) from None
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def send_all(self, data: bytes) -> None:
        sock = self.sock
        view = memoryview(data)
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.fd)
                continue
            except OSError as error:
                raise ClientError("connect", f"send: {error}") from None
            view = view[sent:]

    async def receive(self) -> bytes:
        """The next bytes from the peer; ``b""`` at EOF."""
        sock, fd = self.sock, self.fd
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                return sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue
            except OSError as error:
                raise ClientError("truncated", f"recv: {error}") from None

    def close(self) -> None:
        sock = self.sock
        if sock.fileno() >= 0:
            trio.lowlevel.notify_closing(self.fd)
            sock.close()


class Response:
    """An httptools protocol object collecting one response (interim 1xx skipped).

    ``status`` is set once the final response's head is parsed (``headers_done``),
    ``complete`` once its body ended; ``received`` counts raw bytes fed.
    """

    __slots__ = ("_chunked", "_head_only", "_length", "body_bytes", "complete",
                 "headers_done", "keep_alive", "parser", "received", "status")

    def __init__(self, *, head_only: bool = False) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.body_bytes = 0
        self.received = 0
        self._head_only = head_only
        self._chunked = False
        self._length = False

    # httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._chunked = False
        self._length = False

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"transfer-encoding":
            self._chunked = True
        elif lower == b"content-length":
            self._length = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return
        self.status = status
        self.headers_done = True
        if self._head_only or status in (204, 304):
            self._finish()

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        if self.headers_done:
            self._finish()

    def _finish(self) -> None:
        if not self.complete:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()

    # feeding -----------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.complete:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            raise
        except httptools.HttpParserError as error:
            raise ClientError("protocol", str(error)) from None

    def feed_eof(self) -> None:
        """The peer closed: complete an until-close body, else ``ClientError``."""
        if self.complete:
            return
        if self.headers_done and not self._chunked and not self._length:
            self.complete = True
            self.keep_alive = False
            return
        where = "in the body" if self.headers_done else (
            "in the head" if self.received else "before the response")
        raise ClientError("truncated", f"connection closed {where}")


async def exchange(conn: Connection, request: bytes, response: Response) -> Response:
    """Send ``request`` and read until ``response`` is complete."""
    await conn.send_all(request)
    while not response.complete:
        data = await conn.receive()
        if not data:
            response.feed_eof()
            break
        response.feed(data)
    return response
