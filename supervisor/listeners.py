"""The master's listening sockets: bound before any fork, kept across generations, closed
when no generation serves them any more.

Owns: the table of bound listeners (config address -> socket; the metrics listener
under ``"metrics:<address>"``, the ACME HTTP-01 one under ``"acme:<address>"``), binding
with the gateway's socket options, finding an already bound socket for an address
(``:0`` became a real port), and closing what is no longer served, in the master and in a
freshly forked child.

A listener stays open in the master for as long as some generation serves it, so a
respawned worker serves the same socket and the kernel's accept queue survives a worker
crash. A listener no generation serves is closed at once: a copy left open anywhere keeps
the kernel queueing connections for nobody.

Never forks, never signals or waits for processes.

May import: li_httpd.config.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

from li_httpd.config.checks import split_host_port

BACKLOG = 4096


class StartError(Exception):
    """Binding or starting failed; the message is for the operator."""


def bind_listener(address: str) -> socket.socket:
    """A non-blocking listening socket on ``address`` ("host:port"); raises StartError."""
    parsed = split_host_port(address)
    if parsed is None:
        raise StartError(f"invalid listen address {address!r}")
    host, port = parsed
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if hasattr(socket, "TCP_DEFER_ACCEPT"):
            # accept() only once the request's first bytes are there: saves a wakeup.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise StartError(f"cannot listen on {address}: {exc.strerror or exc}") from exc
    return sock


def listener_url(sock: socket.socket, tls: bool) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


def metrics_key(address: str) -> str:
    """The table key of the metrics listener at ``address``."""
    return "metrics:" + address


def acme_key(address: str) -> str:
    """The table key of the ACME HTTP-01 listener at ``address``."""
    return "acme:" + address


class Listeners:
    """Every listening socket the master holds, by the address the config names.

    Two addresses may name one socket (``127.0.0.1:0`` and the real port it got); a
    socket closes only when no address in the table names it any more.
    """

    def __init__(self) -> None:
        self._by_address: dict[str, socket.socket] = {}

    def __getitem__(self, address: str) -> socket.socket:
        return self._by_address[address]

    def __contains__(self, address: str) -> bool:
        return address in self._by_address

    def addresses(self) -> list[str]:
        return list(self._by_address)

    def sockets(self) -> list[socket.socket]:
        return list(self._by_address.values())

    def bind(self, address: str, key: str | None = None) -> socket.socket:
        """Bind ``address`` (startup: nothing is bound yet) under ``key`` (default: the
        address); raises StartError."""
        self._by_address[key or address] = sock = bind_listener(address)
        return sock

    def ensure(self, address: str, key: str | None = None) -> bool:
        """Make ``address`` available under ``key`` (default: the address), reusing a
        socket already bound at the same host and (non-zero) port; True when a new
        socket was bound (a failed reload closes exactly those again). Raises
        StartError."""
        key = key or address
        if key in self._by_address:
            return False
        existing = self.bound_at(address)
        if existing is not None:
            self._by_address[key] = existing  # e.g. ":0" became its real port
            return False
        self.bind(address, key)
        return True

    def bound_at(self, address: str) -> socket.socket | None:
        """An already bound listener at the same host and (non-zero) port, if any."""
        parsed = split_host_port(address)
        if parsed is None or parsed[1] == 0:
            return None
        for sock in self._by_address.values():
            if sock.getsockname()[:2] == parsed:
                return sock
        return None

    def close(self, addresses: Iterable[str]) -> None:
        """Forget ``addresses``; close each socket no remaining address names."""
        for address in list(addresses):
            sock = self._by_address.pop(address, None)
            if sock is not None and all(s is not sock for s in self._by_address.values()):
                sock.close()

    def close_all(self) -> None:
        self.close(self.addresses())

    def close_unserved(self, served: Iterable[socket.socket]) -> None:
        """Close every listener that is not one of ``served``."""
        keep = {id(s) for s in served}
        self.close([a for a, s in self._by_address.items() if id(s) not in keep])

    def close_in_child(self, keep: Iterable[socket.socket]) -> None:
        """In a freshly forked child: close the copies it does not serve (the table is
        the master's; the child never uses it again)."""
        kept = {id(s) for s in keep}
        for sock in self._by_address.values():
            if id(sock) not in kept:
                sock.close()
