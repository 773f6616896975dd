"""Upstream peers, per-worker keep-alive pools and peer selection.

Each worker keeps, per peer, a LIFO stack of idle keep-alive connections (bounded by
``keepalive``, closed after ``keepalive_timeout`` idle). A connection goes back to the
pool only when its last response was read exactly to its end and the upstream did not
ask to close; before reuse it is checked without blocking for a pending close or stray
bytes (either one discards it). Connection timeouts use their own cancel scope because a
connect failure must fail over to the next peer, not end the client's connection.

Peer choice is smooth weighted round robin (nginx's algorithm) within this worker.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio
from li_httpd.config.model import Upstream
from trio.lowlevel import wait_writable

from .http1 import ParseLimits, ResponseReader
from .sockio import Deadline, PeerGone, SocketIO
from .tls_io import StreamIO, TlsHandshakeError, TlsSocketIO, client_context

DNS_TTL = 30.0
FRESH = 0.25


class UpstreamConnectError(Exception):
    """Could not open a connection to a peer (refused, unreachable, timed out)."""


@dataclass(frozen=True, slots=True)
class PeerTarget:
    index: int
    url: str
    host: str
    port: int
    tls: bool
    weight: int
    host_header: bytes
    label: str
    """``host:port``: how logs and metrics name the peer."""


def peer_targets(upstream: Upstream) -> tuple[PeerTarget, ...]:
    targets = []
    for index, peer in enumerate(upstream.peers):
        parts = urlsplit(peer.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        shown = f"[{host}]" if ":" in host else host
        targets.append(PeerTarget(index, peer.url, host, port, parts.scheme == "https",
                                  peer.weight, f"{shown}:{port}".encode(), f"{shown}:{port}"))
    return tuple(targets)


class UpstreamConn:
    """One connection to a peer, with the reader that frames its responses."""

    __slots__ = ("idle_since", "io", "peer", "reader", "reused")

    def __init__(self, io: StreamIO, peer: PeerTarget, limits: ParseLimits) -> None:
        self.io = io
        self.peer = peer
        self.reader = ResponseReader(limits)
        self.idle_since = 0.0
        self.reused = False

    def close(self) -> None:
        self.io.close()


class PeerPool:
    """Idle keep-alive connections to one peer, for one worker."""

    __slots__ = ("_addresses", "_resolved_at", "idle", "limits", "max_idle", "peer",
                 "settings")

    def __init__(self, peer: PeerTarget, settings: Upstream, limits: ParseLimits) -> None:
        self.peer = peer
        self.settings = settings
        self.limits = limits
        self.max_idle = settings.keepalive
        self.idle: deque[UpstreamConn] = deque()
        self._addresses: list[tuple[int, tuple[str, int]]] = []
        self._resolved_at = -DNS_TTL

    async def acquire(self, deadline: Deadline, send_timeout: float) -> UpstreamConn:
        """A pooled connection if a healthy one is idle, else a new one."""
        now = trio.current_time()
        idle_limit = self.settings.keepalive_timeout / 1000
        while self.idle:
            conn = self.idle.pop()
            idle_for = now - conn.idle_since
            # A connection idle for a moment cannot have hit an upstream keep-alive
            # timeout; skip the peek syscall then (a close it sent anyway is retried).
            if idle_for > idle_limit or (idle_for > FRESH and conn.io.readable_now()):
                conn.close()
                continue
            conn.io.deadline = deadline
            conn.reused = True
            return conn
        io = await self._connect(deadline, send_timeout)
        return UpstreamConn(io, self.peer, self.limits)

    def release(self, conn: UpstreamConn) -> None:
        """Return a connection whose last response was fully read."""
        if len(self.idle) >= self.max_idle or conn.reader.buffered:
            conn.close()
            return
        conn.idle_since = trio.current_time()
        self.idle.append(conn)

    def sweep(self, now: float) -> None:
        """Close connections idle for longer than keepalive_timeout (oldest first)."""
        limit = self.settings.keepalive_timeout / 1000
        while self.idle and now - self.idle[0].idle_since > limit:
            self.idle.popleft().close()

    def close_all(self) -> None:
        while self.idle:
            self.idle.pop().close()

    async def _resolve(self) -> list[tuple[int, tuple[str, int]]]:
        host, port = self.peer.host, self.peer.port
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            return [(family, (host, port))]
        now = trio.current_time()
        if self._addresses and now - self._resolved_at < DNS_TTL:
            return self._addresses
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise UpstreamConnectError(f"cannot resolve {host}: {exc}") from None
        self._addresses = [(info[0], (str(info[4][0]), int(info[4][1]))) for info in infos]
        self._resolved_at = now
        return self._addresses

    async def _connect(self, deadline: Deadline, send_timeout: float) -> StreamIO:
        """Connect (and for https, handshake) within connect_timeout."""
        addresses = await self._resolve()
        last_error = "no address"
        with trio.move_on_after(self.settings.connect_timeout / 1000) as scope:
            for family, address in addresses:
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    code = sock.connect_ex(address)
                    if code == errno.EINPROGRESS:
                        await wait_writable(sock)
                        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                except BaseException:
                    sock.close()
                    raise
                if code == 0:
                    io = SocketIO(sock, deadline, send_timeout)
                    if not self.peer.tls:
                        return io
                    tls = TlsSocketIO(io, client_context(self.settings.ca_file),
                                      server_hostname=self.peer.host)
                    try:
                        await tls.handshake()
                    except (TlsHandshakeError, PeerGone) as exc:
                        io.close()
                        raise UpstreamConnectError(f"{self.peer.label}: TLS: {exc}") from None
                    except BaseException:
                        io.close()
                        raise
                    return tls
                sock.close()
                last_error = os.strerror(code)
        if scope.cancelled_caught:
            last_error = "connect timed out"
        raise UpstreamConnectError(f"{self.peer.label}: {last_error}")


class UpstreamGroup:
    """A configured upstream pool as one worker sees it: peers, pools and selection."""

    __slots__ = ("_current", "name", "peers", "pools", "settings")

    def __init__(self, name: str, settings: Upstream, limits: ParseLimits) -> None:
        self.name = name
        self.settings = settings
        self.peers = peer_targets(settings)
        self.pools = tuple(PeerPool(p, settings, limits) for p in self.peers)
        self._current = [0] * len(self.peers)

    def pick(self, exclude: Iterable[int] = ()) -> PeerPool | None:
        """Smooth weighted round robin over the peers not in ``exclude``."""
        excluded = set(exclude)
        best = -1
        total = 0
        current = self._current
        for index, peer in enumerate(self.peers):
            if index in excluded:
                continue
            current[index] += peer.weight
            total += peer.weight
            if best < 0 or current[index] > current[best]:
                best = index
        if best < 0:
            return None
        current[best] -= total
        return self.pools[best]

    def sweep(self, now: float) -> None:
        for pool in self.pools:
            pool.sweep(now)

    def close_all(self) -> None:
        for pool in self.pools:
            pool.close_all()
