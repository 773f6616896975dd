"""Thin trio I/O over non-blocking stdlib sockets, with cheap deadlines.

Why not ``trio.SocketStream``: on the hot path every checkpoint and cancel scope is
measurable (a cancel scope costs ~10 µs on the 2-core dev box, a checkpoint ~5 µs). So
:class:`SocketIO` tries the syscall first and only waits (``wait_readable`` /
``wait_writable``) when the kernel says it would block, and timeouts are not cancel
scopes per operation: each connection owns one :class:`Deadline` that the worker's
housekeeping task (:mod:`.housekeeping`) checks a few times per second, cancelling the
connection's scope when it has passed. A timeout therefore fires within one tick
(:data:`TICK`) after it is due.

Fairness: an operation that does not block does not yield, so :meth:`SocketIO.recv`
yields every :data:`YIELD_EVERY` non-blocking successes; a connection that always has
data ready cannot starve the others.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Callable

import trio
from trio.lowlevel import checkpoint, wait_readable, wait_writable

TICK = 0.1
"""Seconds between deadline checks by housekeeping."""

now: Callable[[], float] = time.monotonic
"""The clock of every deadline and idle timer (C-speed; the hot path reads it several
times per request). Tests may swap in ``trio.current_time`` to drive deadlines with
trio's virtual clock (:func:`use_clock`)."""


def use_clock(clock: Callable[[], float]) -> None:
    global now  # noqa: PLW0603 - one process-wide clock, set once
    now = clock

YIELD_EVERY = 32
RECV_SIZE = 65536

_PEEK = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)  # a plain int: IntFlag "|" is slow
_GONE_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ESHUTDOWN,
                          errno.ECONNABORTED, errno.ETIMEDOUT})


class PeerGone(Exception):  # noqa: N818 - a condition, like EOFError
    """The other end reset or closed the connection while we were writing."""


class ClientGone(PeerGone):
    """The client's side broke (reset, or a bad TLS record) while the proxy was copying
    its request body upstream: never the upstream peer's fault."""


class Deadline:
    """When (trio clock) the current operation of a connection must be over, and why.

    ``scope`` is the connection's cancel scope; housekeeping cancels it when ``at``
    passes and records the reason in ``fired``. ``at = inf`` means no deadline.
    """

    __slots__ = ("at", "fired", "reason", "scope")

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.at = float("inf")
        self.reason = ""
        self.fired = ""

    def set(self, seconds: float, reason: str) -> None:
        self.at = now() + seconds
        self.reason = reason

    def clear(self) -> None:
        self.at = float("inf")

    def expire_if_due(self, now: float) -> None:
        if self.at <= now and not self.fired:
            self.fired = self.reason
            self.scope.cancel()


class SocketIO:
    """A connected non-blocking socket. Not safe for concurrent use by two tasks."""

    __slots__ = ("_ops", "deadline", "fd", "send_timeout", "sent", "sock")

    def __init__(self, sock: socket.socket, deadline: Deadline, send_timeout: float) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.deadline = deadline
        self.send_timeout = send_timeout
        self.sent = 0
        """Bytes handed to send_all/sendfile so far (the access log's bytes_out)."""
        self._ops = 0

    async def recv(self, *, reset_is_error: bool = False) -> bytes:
        """Up to RECV_SIZE bytes; ``b""`` at end of stream, also after a reset unless
        ``reset_is_error`` (then :class:`PeerGone`): where the close ends the message,
        a reset must not pass for a complete one."""
        sock = self.sock
        while True:
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                await wait_readable(sock)
                continue
            except OSError as exc:
                if exc.errno in _GONE_ERRNOS and not reset_is_error:
                    return b""
                raise _gone(exc) from None
            self._ops += 1
            if self._ops >= YIELD_EVERY:
                self._ops = 0
                await checkpoint()
            return data

    async def recv_after_wait(self) -> bytes:
        """Like :meth:`recv`, when the caller knows nothing can be ready yet (it just
        sent a request and awaits the reply), saving the syscall that would fail."""
        try:
            await wait_readable(self.sock)
        except (OSError, trio.ClosedResourceError):
            return b""
        return await self.recv()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write everything or raise :class:`PeerGone`. Waiting is bounded by
        ``send_timeout`` through the connection deadline."""
        sock = self.sock
        self.sent += len(data)
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise _gone(exc) from None
        if sent == len(data):
            return
        await self._send_slow(memoryview(data)[sent:])

    async def _send_slow(self, view: memoryview) -> None:
        deadline = self.deadline
        saved_at, saved_reason = deadline.at, deadline.reason
        deadline.set(self.send_timeout, "send")
        sock = self.sock
        try:
            while view:
                await wait_writable(sock)
                try:
                    view = view[sock.send(view):]
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise _gone(exc) from None
        finally:
            deadline.at, deadline.reason = saved_at, saved_reason

    async def sendfile(self, file_fd: int, offset: int, count: int) -> None:
        """Send ``count`` bytes of a file with sendfile(2), bounded like send_all."""
        deadline = self.deadline
        saved_at, saved_reason = deadline.at, deadline.reason
        sock = self.sock
        self.sent += count
        try:
            while count > 0:
                try:
                    sent = os.sendfile(self.fd, file_fd, offset, min(count, 1 << 20))
                except BlockingIOError:
                    deadline.set(self.send_timeout, "send")
                    await wait_writable(sock)
                    continue
                except OSError as exc:
                    raise _gone(exc) from None
                if sent == 0:
                    raise PeerGone("file shrank while sending")
                offset += sent
                count -= sent
        finally:
            deadline.at, deadline.reason = saved_at, saved_reason

    def close(self) -> None:
        """Close now; wakes any task waiting on this socket (with ClosedResourceError)."""
        if self.sock.fileno() != -1:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    def abort(self) -> None:
        """Close with a TCP reset (SO_LINGER 0): the peer sees the connection die at once."""
        if self.sock.fileno() != -1:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.close()

    def readable_now(self) -> bool:
        """Non-blocking check for pending bytes or end of stream. On an idle pooled
        upstream connection either one means the connection must not be reused."""
        try:
            self.sock.recv(1, _PEEK)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return True


def _gone(exc: OSError) -> Exception:
    if exc.errno in _GONE_ERRNOS:
        return PeerGone(os.strerror(exc.errno or 0))
    return exc
