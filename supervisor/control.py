"""The control socket: the master's side (ControlServer) and `li-httpd ctl`'s (request).

Protocol: one JSON object per connection, newline-terminated, each way:
``{"command": "status" | "reload" | "rotate-tickets" | "reopen" | "renew" | "stop"}`` → a
JSON object. The socket is a unix socket with mode 0600 (only the gateway's user may talk
to the master). The master serves it from its synchronous main loop, one short connection
at a time, and never blocks on it: `reload` (and `rotate-tickets`, a reload with the
same config) answers only when the reload has succeeded or failed, so the master keeps
that connection (:class:`PendingReply`) and answers it from a later turn of its loop
while it goes on reaping, answering and handling signals.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import time
from collections.abc import Callable
from typing import Any

import orjson

MAX_MESSAGE = 64 * 1024
CLIENT_TIMEOUT = 120.0
SERVER_READ_TIMEOUT = 2.0
COMMANDS = ("status", "reload", "rotate-tickets", "reopen", "renew", "stop")


class ControlError(Exception):
    """The control socket cannot be used; the message is for the operator."""


Reply = dict[str, Any]
DEFER = None
"""What a dispatcher returns to answer later through the :class:`PendingReply`."""


class PendingReply:
    """A request whose answer comes later (a reload in progress)."""

    def __init__(self, connection: socket.socket, command: str = "") -> None:
        self.connection = connection
        self.command = command
        """The command being answered (``reload`` or ``rotate-tickets``)."""

    def answer(self, reply: Reply) -> None:
        """Send the answer and close (never raises: the client may have gone)."""
        with self.connection:
            try:
                self.connection.settimeout(SERVER_READ_TIMEOUT)
                self.connection.sendall(orjson.dumps(reply) + b"\n")
            except OSError:
                pass


class ControlServer:
    def __init__(self, path: str) -> None:
        self.path = path
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise ControlError(f"{path} exists and is not a socket; refusing to replace it")
            if _listening(path):
                raise ControlError(f"another li-httpd master is running at {path} "
                                   "(to run a second gateway, give it its own socket with "
                                   "[server] control_socket)")
            os.unlink(path)  # left behind by a master that died
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        previous = os.umask(0o177)
        try:
            self.sock.bind(path)
        finally:
            os.umask(previous)
        os.chmod(path, 0o600)
        self.sock.listen(16)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def serve_one(self, dispatch: Callable[[str], Reply | None]) -> PendingReply | None:
        """Accept and answer one pending request (never raises on client errors). When
        ``dispatch`` returns :data:`DEFER` the connection is returned instead, for the
        caller to answer later."""
        try:
            connection, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        try:
            # One deadline for the whole request: a client trickling bytes must not
            # hold the master's loop (reaping, respawns, signals) for longer.
            request = _read_message(connection, time.monotonic() + SERVER_READ_TIMEOUT)
        except (OSError, ValueError):
            connection.close()
            return None
        command = request.get("command") if isinstance(request, dict) else None
        if command not in COMMANDS:
            reply: Reply | None = {"ok": False, "error": f"unknown command {command!r}"}
        else:
            reply = dispatch(str(command))
        pending = PendingReply(connection, str(command))
        if reply is None:  # DEFER
            return pending
        pending.answer(reply)
        return None

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def _read_message(connection: socket.socket, deadline: float | None = None) -> Any:
    data = b""
    while not data.endswith(b"\n"):
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("request not received in time")
            connection.settimeout(remaining)
        chunk = connection.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_MESSAGE:
            raise ValueError("message too large")
    return orjson.loads(data)


def _listening(path: str) -> bool:
    """Whether a process listens on the socket file. Only a refused connection means a
    stale file: a master busy in a reload still has its listener (and its backlog), and
    must not lose its socket to a second master."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True  # e.g. a full backlog: someone is there
    finally:
        probe.close()
    return True


def request(path: str, command: str, timeout: float = CLIENT_TIMEOUT) -> dict[str, Any]:
    """Send one command to a running master; raises ControlError when none answers."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        client.connect(path)
        client.sendall(orjson.dumps({"command": command}) + b"\n")
        reply = _read_message(client)
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(f"no li-httpd master is running at {path}") from None
    except PermissionError:
        raise ControlError(f"permission denied on {path} (run as the gateway's user)") from None
    except (OSError, ValueError) as exc:
        raise ControlError(f"control socket {path}: {exc}") from None
    finally:
        client.close()
    if not isinstance(reply, dict):
        raise ControlError("unexpected answer from the master")
    return reply
