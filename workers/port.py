"""The client side of a request, as handlers see it: :class:`ClientPort`.

Handlers (static files, the reverse proxy) answer one request. They read the request
body and write the response only through this protocol, which the connection actor
implements; they never see the connection's socket, parser or loop state, and this
module is all of the connection they import. Every method may raise
:class:`~.sockio.PeerGone` when the client goes away.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from .exchange import Handled, Outcome, Phase
from .http1 import Header
from .sockio import Deadline


class ClientPort(Protocol):
    @property
    def deadline(self) -> Deadline:
        """The connection's one deadline: handlers set it for each upstream phase."""

    async def receive_body(self) -> bytes | None:
        """The next piece of the decoded request body, or None at its end. Answers
        ``Expect: 100-continue`` before the first read, bounds each read by the body
        timeout and charges the caller's ``bytes_in_per_sec`` (pausing when it sends too
        fast). Raises :class:`~.http1.HttpError` on a malformed or truncated body and
        :class:`~.sockio.ClientGone` when the client's stream breaks."""

    def respond(self, status: int, data: bytes, phase: Phase) -> Awaitable[None]:
        """Write a response head (``data`` may carry body bytes after it); ``phase``
        says how the body that follows is framed. (Like :meth:`send`, a plain method
        returning the write's awaitable: no coroutine layer of its own per response.)"""

    def send(self, data: bytes) -> Awaitable[None]:
        """Write more response body."""

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        """Write ``count`` bytes of a file as response body."""

    async def reject(self, status: int, *, message: str | None = None,
                     headers: tuple[Header, ...] = (), keep_alive: bool = True,
                     outcome: Outcome = "rejected",
                     error_type: str | None = None) -> Handled:
        """Answer with the gateway's JSON error for ``status`` (its ``type`` is
        ``error_type`` when given) instead of a response, and say the request ended with
        ``outcome``. A request whose body was not read to
        its end closes the connection."""

    def abort(self) -> None:
        """Reset the connection: a response already under way must look cut short."""

    def watch_disconnect(self) -> None:
        """From now until :meth:`unwatch_disconnect`, a client hang-up fires the
        deadline (``client_gone``) although nothing reads the client socket."""

    def unwatch_disconnect(self) -> None:
        """Stop watching for a hang-up (idempotent)."""


__all__ = ["ClientPort"]
