"""The health actor: probes upstream peers and writes what it finds to shared memory.

A separate process, forked by the master for the current generation (it inherits that
generation's config and shared segment at the fork), restarted by it with a backoff if
it dies, and replaced by a fresh one when a reload makes another generation current.
It runs one trio task per pool with a ``[upstreams.NAME.health_check]``: every
``interval`` it sends each peer ``GET <ready>`` (and ``GET <live>`` when set) as plain
HTTP/1.1 with ``Host`` and ``Connection: close`` (https with the pool's ``ca_file``),
reads at most the response's status line (:data:`STATUS_LINE_LIMIT` bytes) within
``timeout``, feeds the result to the rise/fall machine (li_httpd.shm.readiness) and
stores the peer's state in the segment. The first round runs at once.

Why a process: probing is background work with its own timers, sockets and TLS; in the
master it would add waits to a loop that must never wait, and in every worker it would
multiply the probes by the worker count and need a lock per peer. One writer (this
actor) also keeps the shared state simple: workers read it lock-free. A SIGKILLed actor
leaves the last states it stored (a peer keeps serving, or stays out, until a probe
says otherwise); its successor reads the states and the counts toward a change back
from the segment and carries on.

Each change of a peer's state goes to the master as one ZeroMQ message (PUSH to the
master's PULL socket at an ``ipc://`` endpoint in its 0700 runtime directory)::

    {"generation": 3, "pool": "m", "peer": "http://10.0.0.1:8000", "check": "ready",
     "from": "ready", "to": "not_ready", "reason": "status 503; live: status 200"}

which the master logs as one line (:func:`describe`; ``live`` checks go from ``live`` to
``not_live`` and back). A message that cannot be queued is dropped: the
state in shared memory is the truth, the message only its log line.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
import trio
import zmq
from li_httpd.config import LoadedConfig
from li_httpd.config.model import HealthCheck
from li_httpd.shm import SharedState, peer_ids
from li_httpd.shm.readiness import UNKNOWN, Readiness, observe

STATUS_LINE_LIMIT = 4096
"""Bytes read from a probe's response at most: only its status line matters."""
PARENT_POLL = 0.5
"""How often the actor checks that the master is still its parent."""

CheckName = Literal["ready", "live"]
Report = Callable[[dict[str, Any]], None]

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: [^\r\n]*)?\r?\n")


@dataclass(frozen=True, slots=True)
class Target:
    pool: str
    url: str
    shared_id: int
    host: str
    port: int
    tls: bool
    host_header: str
    check: HealthCheck


def targets_of(loaded: LoadedConfig) -> dict[str, list[Target]]:
    """The peers to probe, per pool that has a health check (config order)."""
    ids = peer_ids(loaded.config)
    out: dict[str, list[Target]] = {}
    for pool, upstream in loaded.config.upstreams.items():
        check = upstream.health_check
        if check is None:
            continue
        rows = out.setdefault(pool, [])
        for peer, shared_id in zip(upstream.peers, ids[pool], strict=True):
            parts = urlsplit(peer.url)
            host = parts.hostname or ""
            port = parts.port or (443 if parts.scheme == "https" else 80)
            shown = f"[{host}]" if ":" in host else host
            rows.append(Target(pool, peer.url, shared_id, host, port,
                               parts.scheme == "https", f"{shown}:{port}", check))
    return out


def probe_request(path: str, host_header: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n"
            "User-Agent: li-httpd-health\r\nAccept: */*\r\n\r\n").encode("ascii")


def parse_status(data: bytes) -> int | None:
    """The status of a response that starts ``data``; None when it is not (yet) a
    status line."""
    found = _STATUS_LINE.match(data)
    return int(found.group(1)) if found else None


def is_success(status: int, statuses: tuple[int, ...]) -> bool:
    return status in statuses if statuses else 200 <= status <= 299


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    reason: str
    """What the probe found: ``status 200``, ``timed out``, ``connect: ...``."""


async def probe(target: Target, path: str, tls: ssl.SSLContext | None) -> ProbeResult:
    """One probe of ``path`` on ``target``, within the check's timeout."""
    with trio.move_on_after(target.check.timeout / 1000):
        return await _exchange(target, path, tls)
    return ProbeResult(False, "timed out")


async def _exchange(target: Target, path: str, tls: ssl.SSLContext | None) -> ProbeResult:
    try:
        stream: trio.abc.Stream = await trio.open_tcp_stream(target.host, target.port)
    except OSError as exc:
        return ProbeResult(False, f"connect: {exc.strerror or exc}")
    try:
        if tls is not None:
            secure = trio.SSLStream(stream, tls, server_hostname=target.host)
            stream = secure
            try:
                await secure.do_handshake()
            except trio.BrokenResourceError as exc:
                return ProbeResult(False, f"TLS: {exc.__cause__ or 'handshake failed'}")
        await stream.send_all(probe_request(path, target.host_header))
        data = b""
        while b"\n" not in data and len(data) < STATUS_LINE_LIMIT:
            chunk = await stream.receive_some(STATUS_LINE_LIMIT - len(data))
            if not chunk:
                break
            data += chunk
    except (OSError, trio.BrokenResourceError) as exc:
        return ProbeResult(False, f"connection failed: {exc.__cause__ or exc}")
    finally:
        with contextlib.suppress(OSError, trio.BrokenResourceError):
            await trio.aclose_forcefully(stream)
    status = parse_status(data)
    if status is None:
        return ProbeResult(False, "malformed response" if data else "closed without a response")
    return ProbeResult(is_success(status, target.check.success_statuses), f"status {status}")


def tls_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Prober:
    """Probe rounds over the pools of one generation, writing to its segment."""

    def __init__(self, loaded: LoadedConfig, shared: SharedState, generation: int,
                 report: Report) -> None:
        self.shared = shared
        self.generation = generation
        self.report = report
        self.pools = targets_of(loaded)
        upstreams = loaded.config.upstreams
        self.tls = {pool: tls_context(upstreams[pool].ca_file)
                    for pool, rows in self.pools.items() if any(t.tls for t in rows)}

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for pool in self.pools:
                nursery.start_soon(self._pool_loop, pool)

    async def _pool_loop(self, pool: str) -> None:
        interval = self.pools[pool][0].check.interval / 1000
        while True:
            started = trio.current_time()
            await self.round(pool)
            await trio.sleep_until(started + interval)

    async def round(self, pool: str) -> None:
        """Probe every peer of ``pool`` once (concurrently) and store the results."""
        async with trio.open_nursery() as nursery:
            for target in self.pools[pool]:
                nursery.start_soon(self._probe_peer, target)

    async def _probe_peer(self, target: Target) -> None:
        tls = self.tls.get(target.pool) if target.tls else None
        check = target.check
        ready_result = live_result = None

        async def probe_ready() -> None:
            nonlocal ready_result
            ready_result = await probe(target, check.ready, tls)

        async def probe_live() -> None:
            nonlocal live_result
            live_result = await probe(target, check.live, tls)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe_ready)
            if check.live:
                nursery.start_soon(probe_live)
        assert ready_result is not None
        self.record(target, ready_result, live_result)

    def record(self, target: Target, ready_result: ProbeResult,
               live_result: ProbeResult | None) -> None:
        """Apply one peer's probe results (no await: the stores are one step)."""
        check = target.check
        ready, live = self.shared.probe_state(target.shared_id)
        new_ready = observe(ready, ready_result.ok, check.rise, check.fall)
        new_live = (observe(live, live_result.ok, check.rise, check.fall)
                    if live_result is not None else Readiness(UNKNOWN))
        self.shared.store_probe(target.shared_id, new_ready, new_live)
        if new_ready.state != ready.state:
            reason = ready_result.reason
            if live_result is not None:
                reason += f"; live: {live_result.reason}"
            self._transition(target, "ready", ready, new_ready, reason)
        if live_result is not None and new_live.state != live.state:
            self._transition(target, "live", live, new_live, live_result.reason)

    def _transition(self, target: Target, check: CheckName, before: Readiness,
                    after: Readiness, reason: str) -> None:
        names = (before.name, after.name) if check == "ready" else (before.live_name,
                                                                     after.live_name)
        self.report({"generation": self.generation, "pool": target.pool,
                     "peer": target.url, "check": check, "from": names[0],
                     "to": names[1], "reason": reason})


def _reporter(socket: zmq.Socket[bytes]) -> Report:
    def report(message: dict[str, Any]) -> None:
        with contextlib.suppress(zmq.Again):
            socket.send(orjson.dumps(message), zmq.NOBLOCK)
    return report


async def _watch_parent(parent: int, scope: trio.CancelScope) -> None:
    while os.getppid() == parent:
        await trio.sleep(PARENT_POLL)
    scope.cancel()


async def _main(prober: Prober, parent: int) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_parent, parent, nursery.cancel_scope)
        await prober.run()


def run_actor(endpoint: str, loaded: LoadedConfig, shared: SharedState,
              generation: int) -> int:
    """Body of the forked actor process: probe until the master goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the master coordinates stops
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parent = os.getppid()
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SNDHWM, 1000)
    socket.connect(endpoint)
    try:
        trio.run(_main, Prober(loaded, shared, generation, _reporter(socket)), parent)
    finally:
        socket.close()
        context.term()
    return 0


def describe(message: dict[str, Any]) -> str | None:
    """The master's log line for one transition message (None: not a transition)."""
    fields = ("pool", "peer", "check", "from", "to", "reason")
    if not all(isinstance(message.get(f), str) for f in fields):
        return None
    return (f"health: upstream peer {message['peer']} (pool {message['pool']}) "
            f"{message['from']} -> {message['to']} ({message['reason']})")


def next_delay(previous: float, ran_for: float) -> float:
    """Backoff before restarting a dead actor: short after a long run, doubling (up to
    30 s) while it keeps dying soon after starting."""
    if ran_for >= 10.0 or previous <= 0:
        return 0.5
    return min(30.0, math.ldexp(previous, 1))


class HealthInbox:
    """The master's side: a PULL socket the actors' transition messages arrive on.
    Never blocks; the master polls :attr:`socket` and calls :meth:`drain`."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.context = zmq.Context()
        self.socket: zmq.Socket[bytes] = self.context.socket(zmq.PULL)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(endpoint)

    def drain(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The messages waiting now (at most ``limit``; malformed ones are skipped)."""
        out: list[dict[str, Any]] = []
        for _ in range(limit):
            try:
                data = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                message = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(message, dict):
                out.append(message)
        return out

    def close(self) -> None:
        self.socket.close()
        self.context.term()
