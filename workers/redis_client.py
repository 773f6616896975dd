"""A small Redis client for one trio worker: a connection pool and script calls.

redis-py's asyncio client needs asyncio, and a thread per worker would cost a thread
hop per decision; this is the RESP2 codec (:mod:`.resp`) over trio streams instead.

Every call is bounded by the pool's ``timeout`` *in total* (waiting for a pooled
connection, connecting, TLS handshake, AUTH/SELECT, the command and its reply): the
request that asked never waits longer. Any failure (refused, reset, timed out, a
malformed or error reply) raises :class:`BackendError`; a connection that saw one is
closed, never reused (after a timeout its reply could still arrive and be read as the
answer to the next command).

Scripts are sent as ``EVALSHA`` with the script's SHA-1; a ``NOSCRIPT`` reply (a
restarted or flushed server) is answered by ``EVAL`` with the full text, which also
loads it for the next calls.
"""

from __future__ import annotations

import hashlib
import ssl

import trio
from li_httpd.config.checks import RedisUrl

from .resp import NEED_MORE, ProtocolError, Reply, ReplyError, ReplyParser, encode_command

_READ = 16 * 1024


class BackendError(Exception):
    """The backend could not answer (the message says why; never holds a password)."""


class Script:
    """A Lua script and its SHA-1 (what EVALSHA names it by)."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


class Connection:
    """One connection: a byte stream and the parser of its replies."""

    __slots__ = ("parser", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.parser = ReplyParser()

    async def request(self, payload: bytes) -> Reply:
        """Send ``payload`` (one or more commands); the first reply."""
        await self.stream.send_all(payload)
        return await self.receive()

    async def receive(self) -> Reply:
        """The next reply."""
        parser = self.parser
        while True:
            reply = parser.next()
            if reply is not NEED_MORE:
                return reply  # type: ignore[return-value]
            data = await self.stream.receive_some(_READ)
            if not data:
                raise BackendError("connection closed by the server")
            parser.feed(data)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.stream)

    def close_now(self) -> None:
        """Close the socket without the TLS goodbye (no await)."""
        stream = self.stream
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        if isinstance(stream, trio.SocketStream):
            stream.socket.close()


class RedisPool:
    """At most ``size`` connections to one server, opened on demand and kept."""

    def __init__(self, url: RedisUrl, password: str | None, size: int, timeout_s: float,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = url
        self._password = password
        self.timeout_s = timeout_s
        self._ssl = ssl_context
        self._slots = trio.Semaphore(size)
        self._idle: list[Connection] = []

    async def call(self, *args: bytes | str | int) -> Reply:
        """One command; an error reply is raised as :class:`BackendError`."""
        return _checked(await self._request(encode_command(*args)))

    async def run_script(self, script: Script, keys: tuple[bytes, ...],
                         args: tuple[bytes | str | int, ...],
                         before: ScriptCall | None = None) -> Reply:
        """EVALSHA ``script`` (EVAL on NOSCRIPT), within one timeout. ``before``: a
        script call sent ahead of it in the same write (one round trip for both; its
        reply is not returned, an error in it is ignored: it must be safe to lose)."""
        with trio.move_on_after(self.timeout_s):
            async with self._slots:
                conn = await self._connection()
                try:
                    payload = _evalsha(script, keys, args)
                    if before is not None:
                        first = await conn.request(_evalsha(*before) + payload)
                        reply = await conn.receive()
                        if isinstance(first, ReplyError) and first.kind == "NOSCRIPT":
                            await conn.request(_eval(*before))
                    else:
                        reply = await conn.request(payload)
                    if isinstance(reply, ReplyError) and reply.kind == "NOSCRIPT":
                        reply = await conn.request(_eval(script, keys, args))
                except BaseException:
                    await conn.aclose()
                    raise
                self._idle.append(conn)
                return _checked(reply)
        raise BackendError(f"no answer within {self.timeout_s * 1000:.0f} ms")

    async def _request(self, payload: bytes) -> Reply:
        with trio.move_on_after(self.timeout_s):
            async with self._slots:
                conn = await self._connection()
                try:
                    reply = await conn.request(payload)
                except BaseException:
                    await conn.aclose()
                    raise
                self._idle.append(conn)
                return reply
        raise BackendError(f"no answer within {self.timeout_s * 1000:.0f} ms")

    async def _connection(self) -> Connection:
        if self._idle:
            return self._idle.pop()
        url = self.url
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(url.host, url.port)
        except OSError as exc:
            raise BackendError(f"connect to {url.host}:{url.port}: {exc.strerror or exc}") \
                from None
        if self._ssl is not None:
            stream = trio.SSLStream(stream, self._ssl, server_hostname=url.host)
        conn = Connection(stream)
        try:
            if isinstance(stream, trio.SSLStream):
                try:
                    await stream.do_handshake()
                except trio.BrokenResourceError as broken:  # wraps the SSL error
                    raise BackendError(f"TLS with {url.host}:{url.port}: "
                                       f"{broken.__cause__ or broken}") from None
            if self._password is not None:
                auth = (("AUTH", url.username, self._password) if url.username
                        else ("AUTH", self._password))
                _checked(await conn.request(encode_command(*auth)))
            if url.db:
                _checked(await conn.request(encode_command("SELECT", url.db)))
        except BaseException:
            await conn.aclose()
            raise
        return conn

    def discard_idle(self) -> None:
        """Forget the idle connections (after a failure; their sockets are closed when
        collected, no await needed)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close_now()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()


ScriptCall = tuple[Script, tuple[bytes, ...], tuple[bytes | str | int, ...]]
"""A script, its keys and its arguments."""


def _evalsha(script: Script, keys: tuple[bytes, ...],
             args: tuple[bytes | str | int, ...]) -> bytes:
    return encode_command("EVALSHA", script.sha, len(keys), *keys, *args)


def _eval(script: Script, keys: tuple[bytes, ...], args: tuple[bytes | str | int, ...]) -> bytes:
    return encode_command("EVAL", script.text, len(keys), *keys, *args)


def _checked(reply: Reply) -> Reply:
    if isinstance(reply, ReplyError):
        raise BackendError(f"Redis error: {reply.message[:200]}")
    return reply


def connection_errors() -> tuple[type[BaseException], ...]:
    """What a pool call can raise besides :class:`BackendError` when the server or the
    network misbehaves (callers turn these into a backend failure)."""
    return (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError,
            ssl.SSLError)


__all__ = ["BackendError", "Connection", "RedisPool", "Script", "ScriptCall",
           "connection_errors"]
