"""systemd's readiness protocol (``sd_notify``) over a unix datagram socket.

Under ``Type=notify`` systemd passes the path of a unix datagram socket in
``$NOTIFY_SOCKET``; the service reports its state by sending newline-separated
``KEY=VALUE`` assignments to it, one datagram per message: ``READY=1`` once it serves,
``RELOADING=1`` plus ``MONOTONIC_USEC=`` when a reload begins (and ``READY=1`` again
when it is done), ``STOPPING=1`` when it begins to stop, ``STATUS=`` free text for
``systemctl status``. A name starting with ``@`` is in the Linux abstract namespace
(the ``@`` stands for a leading NUL byte). See sd_notify(3).

The protocol is these few lines, so there is no libsystemd binding (a C build
dependency, or a ctypes shim, for one ``sendto``). Every function here is a no-op
returning False when ``$NOTIFY_SOCKET`` is unset (not started by systemd, or not with
``Type=notify``), and returns False instead of raising when the send fails: readiness
reporting must never take the server down. A send blocks at most
:data:`SEND_TIMEOUT` seconds (systemd drains the socket at once; a full queue means
PID 1 is wedged, and the master must not hang with it). Only the ``path`` and
``@abstract`` address forms are supported (not ``vsock:``).

Only the master calls this. Forked workers inherit ``$NOTIFY_SOCKET``, but the unit's
``NotifyAccess=main`` makes systemd ignore anything they might send.
"""

from __future__ import annotations

import os
import socket
import time

ENV_VAR = "NOTIFY_SOCKET"
SEND_TIMEOUT = 1.0


def _address() -> str | None:
    """The socket address from ``$NOTIFY_SOCKET``, or None when unset or unsupported."""
    value = os.environ.get(ENV_VAR, "")
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def notify(*fields: str) -> bool:
    """Send ``fields`` (``KEY=VALUE`` strings) as one datagram to ``$NOTIFY_SOCKET``.

    Fields are joined with newlines. Returns True when the datagram was sent; False,
    without sending anything, when ``$NOTIFY_SOCKET`` is unset or not a path/``@name``
    or no field is given; False, without raising, when the socket cannot be reached or
    the send fails or times out. The socket used for sending is closed before returning.
    """
    address = _address()
    if address is None or not fields:
        return False
    message = "\n".join(fields).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendto(message, address)
    except (OSError, ValueError):
        return False
    return True


def _one_line(text: str) -> str:
    """``text`` with line breaks turned into spaces: a newline would start a new field."""
    return " ".join(text.splitlines())


def _with_status(field: str, text: str | None) -> list[str]:
    return [field] if text is None else [field, "STATUS=" + _one_line(text)]


def monotonic_usec() -> int:
    """``CLOCK_MONOTONIC`` in microseconds, the clock ``MONOTONIC_USEC=`` is read on."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def ready(status: str | None = None) -> bool:
    """``READY=1`` (and ``STATUS=``): startup or a reload is complete, the service serves."""
    return notify(*_with_status("READY=1", status))


def reloading(status: str | None = None) -> bool:
    """``RELOADING=1`` with ``MONOTONIC_USEC=`` now: a reload has begun (send
    :func:`ready` when the new generation serves)."""
    fields = ["RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}"]
    if status is not None:
        fields.append("STATUS=" + _one_line(status))
    return notify(*fields)


def stopping(status: str | None = None) -> bool:
    """``STOPPING=1`` (and ``STATUS=``): the service has begun to shut down."""
    return notify(*_with_status("STOPPING=1", status))


def status(text: str) -> bool:
    """``STATUS=text``: a one-line description shown by ``systemctl status``."""
    return notify("STATUS=" + _one_line(text))

