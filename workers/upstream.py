"""Upstream peers, per-worker keep-alive pools and peer selection.

Each worker keeps, per peer, a LIFO stack of idle keep-alive connections (bounded by
``keepalive``, closed after ``keepalive_timeout`` idle). A connection goes back to the
pool only when its last response was read exactly to its end and the upstream did not
ask to close; before reuse it is checked without blocking for a pending close or stray
bytes (either one discards it). Connection timeouts use their own cancel scope because a
connect failure must fail over to the next peer, not end the client's connection.

Peer choice (:class:`UpstreamGroup`) uses the shared state, so it holds across workers.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal
from urllib.parse import urlsplit

import trio
from li_httpd.config.model import Upstream
from li_httpd.ops.log.writer import WorkerLog
from li_httpd.shm import CircuitPolicy, CircuitStep, SharedState, peer_cap
from li_httpd.shm.circuit import OPEN as CIRCUIT_OPEN
from li_httpd.shm.circuit import STATE_NAMES
from li_httpd.shm.saturation import SATURATED
from trio.lowlevel import wait_writable

from . import sockio
from .http1 import ParseLimits, ResponseReader
from .retry import HealthFailure
from .shared_limits import RemoteLimits
from .sockio import Deadline, PeerGone, SocketIO
from .tls_io import StreamIO, TlsHandshakeError, TlsSocketIO, client_context

DNS_TTL = 30.0

Unavailable = Literal["down", "saturated"]
"""Why :meth:`UpstreamGroup.take` found no peer: none usable, or each usable one at its
``max_concurrent`` cap."""


class UpstreamConnectError(Exception):
    """Could not open a connection to a peer (refused, unreachable, timed out)."""


@dataclass(frozen=True, slots=True)
class PeerTarget:
    index: int
    """Position in its pool."""
    shared_id: int
    """Number in the shared-memory peer table (health, active requests)."""
    url: str
    host: str
    port: int
    tls: bool
    weight: int
    host_header: bytes
    label: str
    """``host:port``: how logs and metrics name the peer."""


def peer_targets(upstream: Upstream, shared_ids: tuple[int, ...]) -> tuple[PeerTarget, ...]:
    targets = []
    for index, peer in enumerate(upstream.peers):
        parts = urlsplit(peer.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        shown = f"[{host}]" if ":" in host else host
        targets.append(PeerTarget(index, shared_ids[index], peer.url, host, port,
                                  parts.scheme == "https",
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
        now = sockio.now()
        idle_limit = self.settings.keepalive_timeout / 1000
        while self.idle:
            conn = self.idle.pop()
            # Any byte (or close) pending on an idle connection means the upstream sent
            # something after its response: reusing it could hand those bytes to the next
            # request as its response, so it is discarded.
            if now - conn.idle_since > idle_limit or conn.io.readable_now():
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
        conn.idle_since = sockio.now()
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
        now = sockio.now()
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
    """A configured upstream pool as one worker sees it: peers, pools and selection.

    Selection reads and updates the shared state, so it holds across workers:
    ``round_robin`` is one smooth weighted round robin for all workers (under the
    pool's lock), ``least_conn`` picks the peer with the fewest active requests per
    weight summed over every worker. Peers marked down by passive health, peers whose
    circuit breaker is open and, in a pool with a ``health_check``, peers the health actor
    has not found ready are skipped; a peer whose circuit is half-open is chosen only when
    it admits the request as a probe.
    """

    __slots__ = ("_breaker", "_caps", "_ids", "_probed", "_rotate", "_weights", "log", "name",
                 "peers", "pool_index", "pools", "probe_taken", "remote", "settings", "shared")

    def __init__(self, name: str, settings: Upstream, limits: ParseLimits, shared: SharedState,
                 pool_index: int, shared_ids: tuple[int, ...],
                 log: WorkerLog | None = None, remote: RemoteLimits | None = None) -> None:
        self.name = name
        self.log = log
        """Where a peer marked down or up gets its line (one line, from the one worker
        whose failure or success changed the shared state)."""
        self.settings = settings
        self.shared = shared
        self.pool_index = pool_index
        self.peers = peer_targets(settings, shared_ids)
        self.pools = tuple(PeerPool(p, settings, limits) for p in self.peers)
        self._ids = shared_ids
        self._weights = tuple(p.weight for p in self.peers)
        self._rotate = 0
        self._probed = settings.health_check is not None
        self._breaker = CircuitPolicy.of(settings.circuit_breaker)
        self.remote = remote if self._breaker.enabled else None
        """With ``[state] backend = "redis"``: where this pool's circuit openings are
        published, and openings by other instances come from."""
        if self.remote is not None:
            for peer in self.peers:
                self.remote.watch_circuit(self._circuit_name(peer),
                                          partial(self._adopt_open, peer))
        self.probe_taken = False
        """Whether the last :meth:`pick` admitted its peer as a half-open probe (read it
        at once, before any await): that attempt reports with :meth:`circuit_result`,
        or :meth:`circuit_abandoned` when it ends without a result."""
        caps = tuple(peer_cap(settings, p) for p in settings.peers)
        self._caps: tuple[int, ...] | None = caps if any(caps) else None
        """Per-peer ``max_concurrent`` (0 = no cap); None when no peer has one, so that an
        uncapped pool keeps its lock-free path."""

    def _not_ready(self, exclude: Sequence[int]) -> Sequence[int]:
        """``exclude`` plus the positions of peers active health has not found ready
        (lock-free loads of the actor's column)."""
        ready = self.shared.peer_ready
        ids = self._ids
        out = [p for p in range(len(ids)) if not ready(ids[p])]
        if not out:
            return exclude
        out.extend(exclude)
        return out

    @property
    def caps(self) -> tuple[int, ...]:
        return self._caps or (0,) * len(self.peers)

    def take(self, exclude: Sequence[int] = ()) -> PeerPool | Unavailable:
        """The next peer to try with one request counted in flight to it (give it back
        with ``shared.add_active(peer.shared_id, -1)``), or why there is none. Capped
        pools check and count under the pool's lock, so that the caps hold across
        workers; uncapped ones add to this worker's column only. Peers not ready (active
        health) or whose circuit is open count as down, never as saturated. As with
        :meth:`pick`, :attr:`probe_taken` says whether the peer was admitted as a
        half-open probe (read it at once)."""
        caps = self._caps
        if caps is None:
            pool = self.pick(exclude)
            if pool is None:
                return "down"
            self.shared.add_active(pool.peer.shared_id, 1)
            return pool
        self.probe_taken = False
        if self._probed:
            exclude = self._not_ready(exclude)
        shared = self.shared
        skipped: list[int] = []
        while True:
            self._rotate += 1
            position = shared.pick_capped(self.pool_index, self._ids, self._weights, caps,
                                          [*exclude, *skipped] if skipped else exclude,
                                          self.settings.balance == "least_conn",
                                          self._rotate % len(self._ids))
            if position < 0:
                return "saturated" if position == SATURATED else "down"
            if self._circuit_admits(position):
                return self.pools[position]
            shared.add_active(self._ids[position], -1)  # its half-open places are taken
            skipped.append(position)

    def pick(self, exclude: Sequence[int] = ()) -> PeerPool | None:
        """The next peer to try, or None when every peer is excluded, down, open or not
        ready."""
        self.probe_taken = False
        if self._probed:
            exclude = self._not_ready(exclude)
        skipped: list[int] = []
        while True:
            position = self._choose([*exclude, *skipped] if skipped else exclude)
            if position < 0:
                return None
            if self._circuit_admits(position):
                return self.pools[position]
            skipped.append(position)  # its half-open places were taken meanwhile

    def _circuit_admits(self, position: int) -> bool:
        """The breaker's word on a chosen peer; no lock while its circuit is closed."""
        peer = self.peers[position]
        step = self.shared.circuit_admit(peer.shared_id, self._breaker)
        self._log_circuit(peer, step, "the open time is over")
        if step.admission == "refused":
            return False
        self.probe_taken = step.admission == "probe"
        return True

    def _choose(self, exclude: Sequence[int]) -> int:
        if len(self.pools) == 1:  # nothing to balance: skip the shared lock
            up = not exclude and self.shared.peer_usable(self._ids[0], self.shared.clock())
            return 0 if up else -1
        if self.settings.balance == "least_conn":
            self._rotate += 1
            position = self.shared.pick_least_conn(self._ids, self._weights, exclude,
                                                   self._rotate % len(self._ids))
        else:
            position = self.shared.pick_round_robin(self.pool_index, self._ids, self._weights,
                                                    exclude)
        return position

    def failed(self, peer: PeerTarget, kind: HealthFailure) -> None:
        """Passive health: count a failure against ``peer`` (all workers see it), when
        the pool's ``health_failures`` says this kind counts."""
        settings = self.settings
        if kind not in settings.health_failures:
            return
        if self.shared.peer_failed(peer.shared_id, settings.max_fails,
                                   settings.fail_timeout * 1_000_000) and self.log:
            self.log.diagnostic("warn", "upstream peer marked down", peer=peer.label,
                                pool=self.name, reason=kind,
                                retry_after_s=settings.fail_timeout / 1000)

    def seconds_until_a_peer_is_up(self) -> int:
        """Whole seconds until the first down or open peer is tried again (at least 1):
        the ``Retry-After`` of a pool whose every peer is down or open."""
        shared = self.shared
        check = self.settings.health_check
        if check is not None and not any(shared.peer_ready(p) for p in self._ids):
            return max(1, -(-check.interval // 1000))  # the next probe round may bring one
        now = shared.clock()
        # A peer the health actor has not found ready serves no sooner than the next
        # probe round, whatever its passive health and circuit say.
        probe_at = now + check.interval * 1_000_000 if check is not None else 0
        soonest = min(max(shared.health(peer).down_until_ns, shared.circuit_available_at(peer),
                          0 if check is None or shared.peer_ready(peer) else probe_at)
                      for peer in self._ids)
        return max(1, -(-(soonest - now) // 1_000_000_000))

    def circuit_result(self, peer: PeerTarget, failure: HealthFailure | None,
                       probe: bool) -> None:
        """The breaker's count of one attempt: ``failure`` None for a response head
        that is not a failure the pool's ``circuit_breaker.failures`` names (a 5xx
        counts as ``5xx`` whatever ``retry_statuses`` says); ``probe``: the attempt
        was admitted as a half-open probe."""
        breaker = self._breaker
        if not breaker.enabled:
            return
        error = failure is not None and failure in breaker.failures
        if probe and not error and failure is not None and failure != "5xx":
            # No answer, and no error the pool names (a first-byte timeout, by default):
            # no verdict on the peer, so the probe only frees its place. (A 5xx the pool
            # does not count is an answer, so a success, as in the window.)
            self.shared.circuit_probe_abandoned(peer.shared_id, breaker)
            probe = False  # still counted in the window, as any other result
        step = self.shared.circuit_record(peer.shared_id, breaker, error, probe)
        if step is not None:
            self._log_circuit(peer, step, f"a probe got {failure or 'an answer'}"
                              if probe else "the error rate")
            if step.after == CIRCUIT_OPEN and self.remote is not None:
                self.remote.publish_open(self._circuit_name(peer), breaker.open_ns)

    def _circuit_name(self, peer: PeerTarget) -> bytes:
        return f"{self.name}:{peer.label}".encode()

    def _adopt_open(self, peer: PeerTarget, remaining_ns: int) -> None:
        step = self.shared.circuit_adopt_open(peer.shared_id, remaining_ns)
        if step is not None:
            self._log_circuit(peer, step, "another gateway instance opened it")

    def circuit_abandoned(self, peer: PeerTarget) -> None:
        """A probe attempt ended with no result (cancelled): its place is free."""
        self.shared.circuit_probe_abandoned(peer.shared_id, self._breaker)

    def _log_circuit(self, peer: PeerTarget, step: CircuitStep, reason: str) -> None:
        if step.changed and self.log:
            # Every transition at warn, as passive health's down and up lines: an
            # operator reading the error log sees the whole story of a peer.
            self.log.diagnostic("warn", f"upstream circuit {STATE_NAMES[step.after]}",
                                peer=peer.label, pool=self.name, reason=reason,
                                was=STATE_NAMES[step.before])

    def succeeded(self, peer: PeerTarget) -> None:
        if self.shared.peer_succeeded(peer.shared_id) and self.log:
            self.log.diagnostic("warn", "upstream peer marked up", peer=peer.label,
                                pool=self.name, reason="a request succeeded")

    def sweep(self, now: float) -> None:
        for pool in self.pools:
            pool.sweep(now)

    def close_all(self) -> None:
        for pool in self.pools:
            pool.close_all()
