"""The reload actor: reads and validates a config file on the master's behalf.

A separate process (forked by the master, restarted by it if it dies) serving one
ZeroMQ REP socket on an ``ipc://`` endpoint inside the master's 0700 runtime directory.
Request: ``{"op": "validate", "path": <file or null for the embedded default>}``.
Reply, one message:

- valid: two frames, ``{"ok": true, "filename": ..., "config_hash": ..., "warnings":
  [...]}`` and the pickled :class:`~li_httpd.config.LoadedConfig` the actor built;
- invalid: one frame, ``{"ok": false, "errors": [<"FILE:LINE: key: message" lines>],
  "line": <first error's line>, "reason": <first error>}``.

Why a process: reading and validating a file the operator just edited (TOML parsing,
certificate parsing, filesystem checks) happens outside the master, so a pathological
file can at worst kill or hang the actor, which the master notices (timeout, or the
actor's exit), kills and restarts, keeping the running configuration untouched.

Why the master uses the actor's object and does not validate again: the file is read
once, by the actor, and what the actor validated is exactly what runs (the pickled
object compares equal to the one validated, and its canonical text hashes to the
``config_hash`` of the first frame, which the client checks). Parsing and validating a
second time in the master would cost the master's loop the whole pipeline (about
10 ms against 0.2 ms to unpickle) and would be exposed to whatever made the file
pathological. The filesystem facts validation looked at (static roots exist, the manual
certificate parses and matches its key) are checked once, by the actor, moments before
the switch; they can change afterwards exactly as they can at any time while serving.
The master's TLS setup still reads the certificate again, because it must build the
SSLContext the workers use, and a failure there fails the reload.

Trust: the endpoint lives in the master's private 0700 directory and the actor is the
master's own forked child running the same code as the same user. Even so the client
unpickles with an allowlist (:class:`_ConfigUnpickler`): only classes defined in
li_httpd.config and this module's frozen-mapping helper can be built, so a confused or
compromised actor can at worst hand back a wrong config, never run code in the master.

Only the supervisor imports :class:`ReloadClient`; the actor imports li_httpd.config.
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import signal
import types
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson
import zmq
from li_httpd.config import ConfigError, LoadedConfig, load
from li_httpd.config.loader import EMBEDDED

REPLY_TIMEOUT_MS = 30_000


def _frozen_mapping(items: dict[Any, Any]) -> Mapping[Any, Any]:
    """Rebuilds a read-only mapping of the config model when unpickling."""
    return types.MappingProxyType(items)


def _dump_loaded(loaded: LoadedConfig) -> bytes:
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = copyreg.dispatch_table.copy()
    pickler.dispatch_table[types.MappingProxyType] = lambda m: (_frozen_mapping, (dict(m),))
    pickler.dump(loaded)
    return buffer.getvalue()


class _ConfigUnpickler(pickle.Unpickler):
    """Builds only config model classes (and read-only mappings of them)."""

    def find_class(self, module: str, name: str) -> Any:
        if module == __name__ and name == "_frozen_mapping":
            return _frozen_mapping
        if module.startswith("li_httpd.config.") and "." not in name:
            found = super().find_class(module, name)
            if isinstance(found, type):
                return found
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a config")


def _load_loaded(data: bytes) -> LoadedConfig:
    loaded = _ConfigUnpickler(io.BytesIO(data)).load()
    if not isinstance(loaded, LoadedConfig):
        raise pickle.UnpicklingError(f"expected a LoadedConfig, got {type(loaded).__name__}")
    return loaded


def validate(path: str | None) -> list[bytes]:
    """The actor's answer (the frames of one reply) for one validation request."""
    try:
        loaded = load(path if path is not None else EMBEDDED)
    except ConfigError as exc:
        errors = [p.render(exc.filename) for p in exc.problems]
        first = next((p for p in exc.problems if p.severity == "error"), exc.problems[0])
        return [orjson.dumps({"ok": False, "errors": errors, "line": first.line,
                              "reason": first.render(exc.filename)})]
    header = {"ok": True, "filename": loaded.filename, "config_hash": loaded.hash,
              "warnings": [w.render(loaded.filename) for w in loaded.warnings]}
    return [orjson.dumps(header), _dump_loaded(loaded)]


def _failure(reason: str) -> list[bytes]:
    return [orjson.dumps({"ok": False, "errors": [reason], "line": 0, "reason": reason})]


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
                    reply = _failure("unknown request")
                else:
                    path = request.get("path")
                    reply = validate(path if isinstance(path, str) else None)
            except Exception as exc:  # the actor answers every request, whatever happens
                reply = _failure(f"reload actor: {exc!r}")
            socket.send_multipart(reply)
    finally:
        socket.close()
        context.term()
    return 0


class Validated(NamedTuple):
    """The actor validated the file: this is the config to run."""

    loaded: LoadedConfig
    warnings: tuple[str, ...]


class Rejected(NamedTuple):
    """The file is invalid (or the actor could not answer properly)."""

    reason: str
    line: int = 0
    errors: tuple[str, ...] = ()


Verdict = Validated | Rejected


class ReloadClient:
    """The master's side: one request at a time, never blocking.

    :meth:`ask` sends a request; the master polls :attr:`socket` (a zmq socket, for
    ``zmq.Poller``) and calls :meth:`verdict` until it returns one, or gives up with
    :meth:`reset` (a REQ socket that misses its reply cannot send again).
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.context = zmq.Context()
        self._socket: zmq.Socket[bytes] | None = None
        self._pending = False

    @property
    def socket(self) -> zmq.Socket[bytes]:
        if self._socket is None:
            self._socket = self.context.socket(zmq.REQ)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.connect(self.endpoint)
        return self._socket

    def ask(self, path: str | None) -> None:
        """Ask the actor to validate ``path`` (None: the embedded default)."""
        if self._pending:
            self.reset()  # an abandoned request: a REQ socket cannot send again
        # No wait: with ZeroMQ's default (not "immediate") the request queues until the
        # connection to the actor is up.
        self.socket.send(orjson.dumps({"op": "validate", "path": path}), zmq.NOBLOCK)
        self._pending = True

    def verdict(self) -> Verdict | None:
        """The actor's answer if it has arrived, else None (does not wait)."""
        try:
            frames = self.socket.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return None
        self._pending = False
        try:
            header = orjson.loads(frames[0])
            if not isinstance(header, dict):
                raise ValueError("the header is not an object")
            if not header.get("ok"):
                return Rejected(str(header.get("reason", "invalid config")),
                                int(header.get("line") or 0),
                                tuple(str(e) for e in header.get("errors", ())))
            loaded = _load_loaded(frames[1])
            if loaded.hash != header.get("config_hash"):
                raise ValueError("the config does not match its hash")
        except (ValueError, IndexError, pickle.UnpicklingError, EOFError) as exc:
            return Rejected(f"the reload actor sent an unusable reply: {exc}")
        return Validated(loaded, tuple(str(w) for w in header.get("warnings", ())))

    def reset(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._pending = False

    def close(self) -> None:
        self.reset()
        self.context.term()
