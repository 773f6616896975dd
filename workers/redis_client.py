"""A small Redis client for one trio worker: pipelined connections and script calls.

redis-py's asyncio client needs asyncio, and a thread per worker would cost a thread
hop per decision; this is the RESP2 codec (:mod:`.resp`) over trio streams instead.

Every call is bounded by the pool's ``timeout`` *in total* (connecting, TLS handshake,
AUTH/SELECT, writing, waiting for the reply): the request that asked never waits
longer. The worker's concurrent requests share the pool's few connections: what they
queue at the same moment goes out in one write and their replies come back in order
(:class:`Connection`), so a busy worker makes far fewer system calls than requests. A
request that gives up (its timeout) leaves its reply to be read and dropped; anything
that breaks the byte stream (refused, reset, closed, bytes that are not RESP) fails the
requests waiting on that connection with :class:`BackendError`, and it is replaced.

Scripts are sent as ``EVALSHA`` with the script's SHA-1; a ``NOSCRIPT`` reply (a
restarted or flushed server) is answered by ``EVAL`` with the full text, which also
loads it for the next calls.
"""

from __future__ import annotations

import hashlib
import ssl
from collections import deque

import trio
from li_httpd.config.checks import RedisUrl

from .resp import NeedMore, ProtocolError, Reply, ReplyError, ReplyParser, encode_command

_READ = 16 * 1024


class BackendError(Exception):
    """The backend could not answer (the message says why; never holds a password)."""


class Script:
    """A Lua script and its SHA-1 (what EVALSHA names it by)."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


class _Waiter:
    """One expected reply on a connection, and whether its asker still waits for it.
    ``last`` is the last waiter of the same request: the one its asker waits on."""

    __slots__ = ("abandoned", "done", "event", "last", "reply")

    def __init__(self) -> None:
        self.done = False
        self.abandoned = False
        self.reply: Reply = None
        self.event = trio.Event()
        self.last = self


class Connection:
    """One connection shared by the worker's concurrent requests (pipelining).

    A request appends its commands to :attr:`unsent` and one :class:`_Waiter` per reply
    to :attr:`pending` (in the same step, so replies and waiters stay in order). The
    first request to find nobody writing writes everything queued so far in one
    ``send_all`` (after one yield, so that the other ready tasks add theirs first); the
    first to find nobody reading reads replies and hands each to its waiter until its
    own has come, then wakes the next waiter still waiting to carry on reading. A
    request whose timeout fires leaves its waiters behind, marked abandoned: their
    replies are read and dropped in turn, so the connection stays usable. Anything that
    breaks the byte stream (a failed or cancelled write, a closed connection, bytes
    that are not RESP) fails every waiter and the connection is replaced.
    """

    __slots__ = ("broken", "parser", "pending", "reading", "stream", "unsent", "writing")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.parser = ReplyParser()
        self.pending: deque[_Waiter] = deque()
        self.unsent: list[bytes] = []
        self.writing = False
        self.reading = False
        self.broken = ""

    async def request(self, payload: bytes, replies: int = 1) -> list[Reply]:
        """Send ``payload`` (``replies`` commands); their replies, in order."""
        if self.broken:
            raise BackendError(self.broken)
        waiters = [_Waiter() for _ in range(replies)]
        last = waiters[-1]
        for waiter in waiters:
            waiter.last = last
        self.pending.extend(waiters)
        self.unsent.append(payload)
        try:
            if not self.writing:
                await self._write()
            while not last.done:
                if self.broken:
                    raise BackendError(self.broken)
                if self.reading:
                    await last.event.wait()
                    if not last.done:  # woken to take over the reading
                        last.event = trio.Event()
                else:
                    await self._read_until(last)
        except BaseException:
            for waiter in waiters:
                waiter.abandoned = True
            if not self.reading:  # it may have been the one woken to read: pass it on
                self._wake_next_reader()
            raise
        return [waiter.reply for waiter in waiters]

    async def _write(self) -> None:
        self.writing = True
        try:
            await trio.lowlevel.cancel_shielded_checkpoint()  # let the others queue theirs
            while self.unsent:
                data = b"".join(self.unsent)
                self.unsent.clear()
                await self.stream.send_all(data)
        except BaseException as exc:  # a partial write leaves the stream unusable
            self._break(f"write to Redis failed: {exc!r:.100}")
            raise
        finally:
            self.writing = False

    async def _read_until(self, target: _Waiter) -> None:
        self.reading = True
        parser = self.parser
        try:
            while not target.done:
                reply = parser.next()
                if isinstance(reply, NeedMore):
                    data = await self.stream.receive_some(_READ)
                    if not data:
                        raise BackendError("connection closed by the server")
                    parser.feed(data)
                    continue
                if not self.pending:
                    raise ProtocolError("a reply nobody asked for")
                waiter = self.pending.popleft()
                waiter.reply = reply
                waiter.done = True
                waiter.event.set()
        except trio.Cancelled:
            if isinstance(self.stream, trio.SSLStream):  # a cancelled TLS read may break it
                self._break("a TLS read was cancelled")
            raise
        except BaseException as exc:
            self._break(f"reading from Redis failed: {exc!r:.100}")
            raise
        finally:
            self.reading = False
            self._wake_next_reader()

    def _wake_next_reader(self) -> None:
        """Wake the first request still waiting, to read on (a reader that gave up is
        marked abandoned only after this runs in :meth:`_read_until`, so
        :meth:`request` calls it again then)."""
        for waiter in self.pending:
            if not waiter.abandoned:
                waiter.last.event.set()  # its asker waits on its last reply
                break

    def _break(self, why: str) -> None:
        if self.broken:
            return
        self.broken = why
        for waiter in self.pending:
            waiter.event.set()
        self.pending.clear()
        self.close_now()

    async def aclose(self) -> None:
        self._break("closed")
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
    """``size`` connections to one server, opened on demand, each shared by concurrent
    requests (see :class:`Connection`); requests take them in turn."""

    def __init__(self, url: RedisUrl, password: str | None, size: int, timeout_s: float,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = url
        self._password = password
        self.timeout_s = timeout_s
        self._ssl = ssl_context
        self._connections: list[Connection | None] = [None] * size
        self._opening = [trio.Lock() for _ in range(size)]
        self._turn = 0

    async def call(self, *args: bytes | str | int) -> Reply:
        """One command; an error reply is raised as :class:`BackendError`."""
        with trio.move_on_after(self.timeout_s):
            conn = await self._connection()
            return _checked((await conn.request(encode_command(*args)))[0])
        raise BackendError(f"no answer within {self.timeout_s * 1000:.0f} ms")

    async def run_script(self, script: Script, keys: tuple[bytes, ...],
                         args: tuple[bytes | str | int, ...],
                         before: ScriptCall | None = None) -> Reply:
        """EVALSHA ``script`` (EVAL on NOSCRIPT), within one timeout. ``before``: a
        script call sent ahead of it in the same write (one round trip for both; its
        reply is not returned, an error in it is ignored: it must be safe to lose)."""
        with trio.move_on_after(self.timeout_s):
            conn = await self._connection()
            payload = _evalsha(script, keys, args)
            if before is not None:
                first, reply = await conn.request(_evalsha(*before) + payload, 2)
                if isinstance(first, ReplyError) and first.kind == "NOSCRIPT":
                    await conn.request(_eval(*before))
            else:
                reply = (await conn.request(payload))[0]
            if isinstance(reply, ReplyError) and reply.kind == "NOSCRIPT":
                reply = (await conn.request(_eval(script, keys, args)))[0]
            return _checked(reply)
        raise BackendError(f"no answer within {self.timeout_s * 1000:.0f} ms")

    async def _connection(self) -> Connection:
        index = self._turn % len(self._connections)
        self._turn += 1
        conn = self._connections[index]
        if conn is not None and not conn.broken:
            return conn
        async with self._opening[index]:
            conn = self._connections[index]
            if conn is None or conn.broken:
                conn = self._connections[index] = await self._open()
        return conn

    async def _open(self) -> Connection:
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
                _checked((await conn.request(encode_command(*auth)))[0])
            if url.db:
                _checked((await conn.request(encode_command("SELECT", url.db)))[0])
        except BaseException:
            await conn.aclose()
            raise
        return conn

    def reset(self) -> None:
        """Drop every connection (after a failure: the server may have closed them all;
        requests still waiting on one fail at once). No await."""
        for conn in self._connections:
            if conn is not None:
                conn._break("reset after a failure")
        self._connections = [None] * len(self._connections)

    async def aclose(self) -> None:
        for conn in self._connections:
            if conn is not None:
                await conn.aclose()
        self._connections = [None] * len(self._connections)


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
