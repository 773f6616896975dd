"""The master's one Redis operation: release a dead worker's stream leases at once.

A worker's leases carry its holder id (host, master pid, worker pid) and are listed in
its holder set (:mod:`li_httpd.workers.shared_limits`). When the master reaps a worker
it runs the holder-release script, so a worker SIGKILLed mid-request frees its slots
immediately, as the shared-memory backend does by zeroing the worker's column. If Redis
cannot be reached the leases still expire after ``lease_time``.

The master is synchronous, so this is a blocking socket with a short deadline (four
times ``[state] timeout``, at most one second), speaking RESP2 through the workers'
codec. After a failure :class:`LeaseRelease` does not try again for
:data:`QUIET_AFTER_FAILURE`: a reload retiring every worker while Redis is away costs
the main loop one deadline, not one per worker.
"""

from __future__ import annotations

import os
import socket
import ssl
import time

from li_httpd.config.checks import parse_redis_url
from li_httpd.config.model import State
from li_httpd.workers.resp import (
    NeedMore,
    ProtocolError,
    Reply,
    ReplyError,
    ReplyParser,
    encode_command,
)
from li_httpd.workers.shared_limits import RELEASE_HOLDER, holder_key, read_password

DEADLINE = 1.0
"""Longest the master waits for Redis per released worker (seconds)."""

QUIET_AFTER_FAILURE = 10.0
"""Seconds after a failed release during which dead workers' leases are left to expire."""


class LeaseRelease:
    """The master's releases, skipped for a while after one failed."""

    def __init__(self) -> None:
        self.quiet_until = 0.0

    def __call__(self, state: State, worker: int, now: float) -> int | str | None:
        """The released count, why it failed, or None when skipped after a failure."""
        if now < self.quiet_until:
            return None
        deadline = min(DEADLINE, 4 * state.timeout / 1000)
        result = release_worker_leases(state, worker, deadline)
        if isinstance(result, str):
            self.quiet_until = now + QUIET_AFTER_FAILURE
        return result


def master_host_id() -> str:
    """The host id the master's workers use (see shared_limits.host_id)."""
    return f"{socket.gethostname()}.{os.getpid()}"


def release_worker_leases(state: State, worker: int, deadline: float = DEADLINE) -> int | str:
    """Release every lease the worker whose pid was ``worker`` held; the count, or why it
    failed."""
    url = parse_redis_url(state.url)
    if isinstance(url, str):
        return url
    give_up = time.monotonic() + deadline
    try:
        with socket.create_connection((url.host, url.port), timeout=deadline) as raw:
            conn: socket.socket = raw
            if url.tls:
                context = ssl.create_default_context(cafile=state.ca_file or None)
                conn = context.wrap_socket(raw, server_hostname=url.host)
            parser = ReplyParser()
            password = read_password(state)
            if password is not None:
                _call(conn, parser, give_up, *(("AUTH", url.username, password)
                                               if url.username else ("AUTH", password)))
            if url.db:
                _call(conn, parser, give_up, "SELECT", url.db)
            key = holder_key(state.key_prefix, master_host_id(), worker)
            reply = _call(conn, parser, give_up, "EVAL", RELEASE_HOLDER.text, 1, key)
    except (OSError, ValueError, ProtocolError) as exc:
        return str(exc) or type(exc).__name__
    return reply if isinstance(reply, int) else f"unexpected reply {reply!r:.60}"


def _call(conn: socket.socket, parser: ReplyParser, give_up: float,
          *args: bytes | str | int) -> Reply:
    conn.sendall(encode_command(*args))
    while True:
        reply = parser.next()
        if not isinstance(reply, NeedMore):
            if isinstance(reply, ReplyError):
                raise ValueError(f"Redis error: {reply.message[:200]}")
            return reply
        left = give_up - time.monotonic()
        if left <= 0:
            raise TimeoutError("Redis did not answer in time")
        conn.settimeout(left)
        data = conn.recv(16 * 1024)
        if not data:
            raise ConnectionError("connection closed by Redis")
        parser.feed(data)


__all__ = ["LeaseRelease", "release_worker_leases"]
