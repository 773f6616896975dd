"""Where the master keeps its runtime files: the control socket and a private directory.

Defaults: ``$RUNTIME_DIRECTORY`` when systemd provides one (the unit's
``RuntimeDirectory=li-httpd``, i.e. /run/li-httpd); as root ``/run/li-httpd``; otherwise
``$XDG_RUNTIME_DIR/li-httpd``, else ``<tmp>/li-httpd-<uid>``. The master also makes a
fresh 0700 directory of its own under it (``master-XXXX``) for ZeroMQ ``ipc://``
endpoints, so two gateways on one host never share endpoints, and removes it when it
stops.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile

from li_httpd.config.model import Config

CONTROL_NAME = "control.sock"


def runtime_base() -> str:
    systemd = os.environ.get("RUNTIME_DIRECTORY")  # set by RuntimeDirectory= in the unit
    if systemd and os.path.isdir(systemd.split(":")[0]):
        return systemd.split(":")[0]
    if os.geteuid() == 0:
        return "/run/li-httpd"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return os.path.join(xdg, "li-httpd")
    return os.path.join(tempfile.gettempdir(), f"li-httpd-{os.getuid()}")


def control_socket_path(config: Config) -> str:
    configured = config.server.control_socket
    return os.path.join(runtime_base(), CONTROL_NAME) if configured == "auto" else configured


def private_directory(parent: str) -> str:
    """Create ``parent`` (0700, ours) if needed and a fresh 0700 directory inside it."""
    os.makedirs(parent, mode=0o700, exist_ok=True)
    info = os.stat(parent)
    if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise PermissionError(f"{parent} must be owned by this user with mode 0700")
    return tempfile.mkdtemp(prefix="master-", dir=parent)


def remove_directory(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
