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
yields after :data:`YIELD_EVERY` non-blocking successes in a row, a full read counting
as that many (every :data:`BYTES_PER_OP` bytes count as one more): a connection that
always has data ready cannot starve the others, and the work one turn can carry is
bounded in reads and in bytes. A wait for the socket is a yield, so it starts the count
again: a keep-alive connection that waits for each request and each upstream answer
never pays for an extra turn of the scheduler (each turn costs an ``epoll_wait``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Literal

import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint, wait_readable, wait_writable

TICK = 0.1
"""Seconds between deadline checks by housekeeping."""

now: Callable[[], float] = time.monotonic
"""The clock of every deadline and idle timer (C-speed; the hot path reads it several
times per request)."""

LINGER_IDLE = 1.0
"""Seconds a closing connection waits for more client bytes before it closes (a quiet
client has nothing left in flight)."""
LINGER_TOTAL = 5.0
"""Longest a closing connection drains client bytes (a client that keeps sending is
cut off with a reset after this)."""

YIELD_EVERY = 32
RECV_SIZE = 65536
BYTES_PER_OP = RECV_SIZE // YIELD_EVERY
_BYTES_PER_OP_SHIFT = BYTES_PER_OP.bit_length() - 1

_READABLE = select.POLLIN  # a reset or hang-up is always reported too (POLLERR, POLLHUP)
_DISCARD_FLAGS = int(socket.MSG_TRUNC | socket.MSG_DONTWAIT)
_DISCARD: list[bytearray] = []
"""One 1 MiB buffer per process for lingering (MSG_TRUNC never writes it), made on
first use."""
_GONE_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ESHUTDOWN,
                          errno.ECONNABORTED, errno.ETIMEDOUT})


class PeerGone(Exception):  # noqa: N818 - a condition, like EOFError
    """The other end reset or closed the connection while we were writing."""


class ClientGone(PeerGone):
    """The client's side broke (reset, or a bad TLS record) while the proxy was copying
    its request body upstream: never the upstream peer's fault."""


DeadlineReason = Literal[
    "",               # no deadline set yet
    "handshake",      # the client's TLS handshake
    "header",         # the client's request head
    "idle",           # keep-alive wait for the next request
    "body",           # the client's request body
    "send",           # a write to the client that the kernel cannot take
    "upstream_ttfb",  # the upstream's response head
    "upstream_idle",  # the gap between two pieces of the upstream's body (stall)
    "stream_max",     # the whole upstream response
    "heartbeat",      # not an end: an SSE heartbeat is due (cancels ``Deadline.soft`` only)
    "client_gone",    # not a timer: the client hung up while a request was in flight
    "shutdown",       # not a timer: the graceful stop's shutdown_timeout ran out
]
"""Why a connection's deadline fires. The connection actor answers each differently."""


SOFT_REASONS: frozenset[DeadlineReason] = frozenset({"heartbeat", "upstream_ttfb"})
"""Deadlines the proxy handles itself while :attr:`Deadline.soft` is set."""


class Deadline:
    """When (trio clock) the current operation of a connection must be over, and why.

    ``scope`` is the connection's cancel scope; housekeeping cancels it when ``at``
    passes and records the reason in ``fired``. ``at = inf`` means no deadline. Code
    outside this class changes it only through these methods.
    """

    __slots__ = ("at", "fired", "reason", "scope", "soft")

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.soft: trio.CancelScope | None = None
        """The proxy's scope while it waits on an upstream: a deadline whose reason is in
        :data:`SOFT_REASONS` cancels this one instead of the connection (the proxy sends
        a heartbeat and goes on, or tries its next pool after a first-byte timeout); the
        reason that fired stays in :attr:`reason`."""
        self.at = float("inf")
        self.reason: DeadlineReason = ""
        self.fired: DeadlineReason = ""

    def set(self, seconds: float, reason: DeadlineReason) -> None:
        self.at = now() + seconds
        self.reason = reason

    def set_at(self, at: float, reason: DeadlineReason) -> None:
        self.at = at
        self.reason = reason

    def clear(self) -> None:
        self.at = float("inf")

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """No deadline inside the block (the caller bounds the wait itself); the one that
        was set resumes unchanged after it."""
        saved_at, saved_reason = self.at, self.reason
        self.at = float("inf")
        try:
            yield
        finally:
            self.at, self.reason = saved_at, saved_reason

    @contextlib.contextmanager
    def replaced(self, seconds: float, reason: DeadlineReason) -> Iterator[None]:
        """``seconds`` from now bound the block; the deadline that was set resumes after."""
        saved_at, saved_reason = self.at, self.reason
        self.set(seconds, reason)
        try:
            yield
        finally:
            self.at, self.reason = saved_at, saved_reason

    def expire_now(self, reason: DeadlineReason) -> None:
        """Fire at once (housekeeping saw the client hang up)."""
        self.reason = reason
        self.at = 0.0
        self.expire_if_due(now())

    def expire_if_due(self, now: float) -> None:
        if self.at <= now and not self.fired:
            if self.reason in SOFT_REASONS:
                soft = self.soft
                if soft is not None:
                    self.at = float("inf")  # the proxy re-arms after it handled this
                    soft.cancel()
                    return
                if self.reason == "heartbeat":
                    self.at = float("inf")  # no stream to beat for: nothing to do
                    return
            self.fired = self.reason
            self.scope.cancel()


class SocketIO:
    """A connected non-blocking socket. Not safe for concurrent use by two tasks."""

    __slots__ = ("_ops", "_poll", "deadline", "fd", "send_timeout", "sent", "sock")

    def __init__(self, sock: socket.socket, deadline: Deadline, send_timeout: float) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.deadline = deadline
        self.send_timeout = send_timeout
        self.sent = 0
        """Bytes handed to send_all/sendfile so far (the access log's bytes_out)."""
        self._ops = 0
        self._poll: select.poll | None = None

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
                self._ops = 0  # the wait let every other task run
                continue
            except OSError as exc:
                if exc.errno in _GONE_ERRNOS and not reset_is_error:
                    return b""
                raise _gone(exc) from None
            self._ops += 1 + (len(data) >> _BYTES_PER_OP_SHIFT)
            if self._ops >= YIELD_EVERY:
                self._ops = 0
                # Shielded: a cancel here would lose ``data`` (a heartbeat's wake-up must
                # not; a connection deadline lands at the caller's next wait instead).
                await cancel_shielded_checkpoint()
            return data

    async def recv_after_wait(self) -> bytes:
        """Like :meth:`recv`, when the caller knows nothing can be ready yet (it just
        sent a request and awaits the reply), saving the syscall that would fail."""
        try:
            await wait_readable(self.sock)
        except (OSError, trio.ClosedResourceError):
            return b""
        self._ops = 0  # the wait let every other task run
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
        sock = self.sock
        with self.deadline.replaced(self.send_timeout, "send"):
            while view:
                await wait_writable(sock)
                try:
                    view = view[sock.send(view):]
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise _gone(exc) from None

    async def sendfile(self, file_fd: int, offset: int, count: int) -> None:
        """Send ``count`` bytes of a file with sendfile(2), bounded like send_all: each
        wait for the socket to drain gets ``send_timeout``."""
        sock = self.sock
        self.sent += count
        while count > 0:
            try:
                sent = os.sendfile(self.fd, file_fd, offset, min(count, 1 << 20))
            except BlockingIOError:
                with self.deadline.replaced(self.send_timeout, "send"):
                    await wait_writable(sock)
                continue
            except OSError as exc:
                raise _gone(exc) from None
            if sent == 0:
                raise PeerGone("file shrank while sending")
            offset += sent
            count -= sent

    async def linger(self) -> None:
        """Half-close, then read and discard what the client still sends until it closes,
        goes quiet for :data:`LINGER_IDLE`, or :data:`LINGER_TOTAL` passes (nginx's
        lingering close). Closing with unread bytes in the socket makes the kernel send a
        reset, which can destroy responses the client has not read yet (a pipelined burst
        past ``keepalive_requests``, a 413 while the body is still arriving). Nothing read
        here is ever parsed."""
        sock = self.sock
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        if not _DISCARD:
            _DISCARD.append(bytearray(1 << 20))
        discard = _DISCARD[0]
        with trio.move_on_after(LINGER_TOTAL):
            while True:
                # No `continue` inside the `with` (mypyc cannot compile one inside
                # try/finally): an idle period that ran out ends the loop after it.
                with trio.move_on_after(LINGER_IDLE) as idle:
                    try:
                        # MSG_TRUNC on TCP discards in the kernel: nothing is copied.
                        if not sock.recv_into(discard, len(discard), _DISCARD_FLAGS):
                            return
                        await checkpoint()
                    except BlockingIOError:
                        await wait_readable(sock)
                    except (OSError, trio.ClosedResourceError):
                        return
                if idle.cancelled_caught:
                    return

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
        """Non-blocking check for pending bytes, end of stream or a reset. On an idle
        pooled upstream connection any of them means the connection must not be reused
        (a close: a request written to it could fail after the upstream got it; stray
        bytes: they would pass for the next request's response).

        One ``poll(0)`` on a poll object of this socket's own, made on first use (a
        pooled connection keeps it for every reuse): the same one syscall as a
        ``recv(MSG_PEEK)``, without the bytes object and the ``BlockingIOError`` that
        such a peek allocates on every idle connection (about half the time per check:
        ``python -m li_httpd.ops.bench.reuse_check``). Why not a syscall-free check
        (housekeeping watching idle pooled sockets): see docs/benchmarks.md, "Syscalls
        per request"."""
        poll = self._poll
        if poll is None:
            poll = self._poll = select.poll()
            poll.register(self.fd, _READABLE)
        return bool(poll.poll(0))


def _gone(exc: OSError) -> Exception:
    if exc.errno in _GONE_ERRNOS:
        return PeerGone(os.strerror(exc.errno or 0))
    return exc
