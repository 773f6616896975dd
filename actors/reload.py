"""The reload actor: reads and validates a config file on the master's behalf.

A separate process (forked by the master, restarted by it if it dies) serving one
ZeroMQ REP socket on an ``ipc://`` endpoint inside the master's 0700 runtime directory.
Request: ``{"op": "validate", "path": <file or null for the embedded default>}``.
Reply: ``{"ok": true, "canonical": <explain-config text>, "warnings": [...]}`` or
``{"ok": false, "errors": [<"FILE:LINE: key: message" lines>], "line": <first error's
line>, "reason": <first error>}``.

Why a process: reading and validating a file the operator just edited (TOML parsing,
certificate parsing, filesystem checks) happens outside the master, so a pathological
file can at worst kill or hang the actor, which the master notices (timeout), kills and
restarts, keeping the running configuration untouched. The master rebuilds the config
from the canonical text, which explains to itself by construction.

Only the supervisor imports :class:`ReloadClient`; the actor imports li_httpd.config.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import orjson
import zmq
from li_httpd.config import ConfigError, load

REPLY_TIMEOUT_MS = 30_000


def validate(path: str | None) -> dict[str, Any]:
    """The actor's answer for one validation request."""
    try:
        loaded = load(path)
    except ConfigError as exc:
        errors = [p.render(exc.filename) for p in exc.problems]
        first = next((p for p in exc.problems if p.severity == "error"), exc.problems[0])
        return {"ok": False, "errors": errors, "line": first.line,
                "reason": first.render(exc.filename)}
    return {"ok": True, "canonical": loaded.canonical, "filename": loaded.filename,
            "warnings": [w.render(loaded.filename) for w in loaded.warnings]}


def run_actor(endpoint: str) -> int:
    """Body of the forked actor process: serve requests until the master goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the master coordinates stops
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parent = os.getppid()
    context = zmq.Context()
    socket = context.socket(zmq.REP)
    socket.setsockopt(zmq.LINGER, 0)
    socket.bind(endpoint)
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    try:
        while os.getppid() == parent:
            if not poller.poll(1000):
                continue
            try:
                request = orjson.loads(socket.recv())
                if not isinstance(request, dict) or request.get("op") != "validate":
                    reply: dict[str, Any] = {"ok": False, "errors": ["unknown request"],
                                             "line": 0, "reason": "unknown request"}
                else:
                    path = request.get("path")
                    reply = validate(path if isinstance(path, str) else None)
            except Exception as exc:  # the actor answers every request, whatever happens
                reply = {"ok": False, "errors": [f"reload actor: {exc!r}"], "line": 0,
                         "reason": f"reload actor: {exc!r}"}
            socket.send(orjson.dumps(reply))
    finally:
        socket.close()
        context.term()
    return 0


class ReloadClient:
    """The master's side: one request at a time, with a timeout."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.context = zmq.Context()
        self._socket: zmq.Socket[bytes] | None = None

    def _connect(self) -> zmq.Socket[bytes]:
        if self._socket is None:
            self._socket = self.context.socket(zmq.REQ)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.connect(self.endpoint)
        return self._socket

    def validate(self, path: str | None, timeout_ms: int = REPLY_TIMEOUT_MS) -> dict[str, Any]:
        """Ask the actor; raises TimeoutError when it does not answer in time."""
        socket = self._connect()
        socket.send(orjson.dumps({"op": "validate", "path": path}))
        if not socket.poll(timeout_ms, zmq.POLLIN):
            self.reset()  # a REQ socket that missed its reply cannot send again
            raise TimeoutError("the reload actor did not answer")
        reply = orjson.loads(socket.recv())
        if not isinstance(reply, dict):
            raise TimeoutError("the reload actor sent garbage")
        return reply

    def reset(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def close(self) -> None:
        self.reset()
        self.context.term()
