"""A blocking Redis connection for callers outside a worker's event loop.

Two callers use Redis without trio: the master, which releases a reaped worker's stream
leases and reads Redis-backed budgets for ``ctl status``, and the ``/metrics`` scrape,
which builds the exposition in a thread. Each opens one short-lived connection with one
overall deadline (connect, TLS, AUTH, SELECT and every reply share it), speaking RESP2
through the workers' codec (:mod:`.resp`); the event loop's pipelined client
(:mod:`.redis_client`) is not usable from a plain thread.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Sequence
from types import TracebackType

from li_httpd.config.checks import parse_redis_url
from li_httpd.config.model import ApiKey, State
from li_httpd.shm import BudgetLimits, BudgetUsage, budget_limits

from .resp import Arg, NeedMore, ProtocolError, Reply, ReplyError, ReplyParser, encode_command
from .shared_limits import budget_key, read_password, remote_budget_usage

FAILURES = (OSError, ValueError, ProtocolError)
"""What a blocking call may raise: unreachable, refused, timed out, TLS, an error reply,
malformed bytes. Callers turn it into a message with :func:`failure_text`."""


def failure_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class BlockingRedis:
    """One connection, closed when the ``with`` block ends; every call shares the
    deadline given to :meth:`open`."""

    def __init__(self, conn: socket.socket, give_up: float) -> None:
        self.conn = conn
        self.give_up = give_up
        self.parser = ReplyParser()

    @classmethod
    def open(cls, state: State, deadline: float) -> BlockingRedis:
        """Connect, authenticate and select the database of ``state.url`` within
        ``deadline`` seconds; raises one of :data:`FAILURES`."""
        url = parse_redis_url(state.url)
        if isinstance(url, str):
            raise ValueError(url)
        give_up = time.monotonic() + deadline
        raw = _connect(url.host, url.port, give_up)
        conn: socket.socket = raw
        try:
            if url.tls:
                # The handshake waits up to the socket's timeout: what is left, not a
                # whole deadline more after a slow connect.
                raw.settimeout(_left(give_up))
                context = ssl.create_default_context(cafile=state.ca_file or None)
                conn = context.wrap_socket(raw, server_hostname=url.host)
            client = cls(conn, give_up)
            password = read_password(state)
            if password is not None:
                client.call(*(("AUTH", url.username, password) if url.username
                              else ("AUTH", password)))
            if url.db:
                client.call("SELECT", url.db)
        except BaseException:
            conn.close()  # the TLS socket once wrapped (it took over raw's descriptor)
            raw.close()
            raise
        return client

    def __enter__(self) -> BlockingRedis:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.conn.close()

    def call(self, *args: Arg) -> Reply:
        """One command and its reply (an error reply raises ValueError)."""
        return self.pipeline([args])[0]

    def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Reply]:
        """Send every command in one write, then read their replies in order."""
        self.conn.settimeout(_left(self.give_up))
        self.conn.sendall(b"".join(encode_command(*command) for command in commands))
        return [self._reply() for _ in commands]

    def _reply(self) -> Reply:
        while True:
            reply = self.parser.next()
            if not isinstance(reply, NeedMore):
                if isinstance(reply, ReplyError):
                    raise ValueError(f"Redis error: {reply.message[:200]}")
                return reply
            self.conn.settimeout(_left(self.give_up))
            try:
                data = self.conn.recv(16 * 1024)
            except TimeoutError:
                raise TimeoutError("Redis did not answer in time") from None
            if not data:
                raise ConnectionError("connection closed by Redis")
            self.parser.feed(data)


def _connect(host: str, port: int, give_up: float) -> socket.socket:
    """A TCP connection to the first of ``host``'s addresses that answers, each attempt
    waiting an equal share of what is left: an unreachable first address (IPv6 without
    a route, say) leaves the next one time to connect and to talk, as the workers'
    client does by trying addresses in parallel."""
    addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    failure: OSError = OSError(f"{host} has no address")
    for index, (family, kind, proto, _, address) in enumerate(addresses):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(_left(give_up) / (len(addresses) - index))
            sock.connect(address)
        except OSError as exc:
            sock.close()
            failure = exc
        else:
            return sock
    raise failure


def _left(give_up: float) -> float:
    left = give_up - time.monotonic()
    if left <= 0:
        raise TimeoutError("Redis did not answer in time")
    return left


def read_budgets(state: State, keys: Sequence[tuple[str, BudgetLimits]],
                 deadline: float) -> dict[str, BudgetUsage] | str:
    """What each API key (id, limits) has used of its Redis-backed budget in the current
    windows, on the Redis server's clock: one round trip (TIME and one HMGET per key);
    or why Redis could not tell."""
    if not keys:
        return {}
    prefix = state.key_prefix.encode()
    try:
        with BlockingRedis.open(state, deadline) as redis:
            replies = redis.pipeline([("TIME",), *(
                ("HMGET", budget_key(prefix, key_id), "tw", "t", "uw", "u")
                for key_id, _ in keys)])
    except FAILURES as exc:
        return failure_text(exc)
    clock, fields = replies[0], replies[1:]
    parts = [p for p in clock if isinstance(p, bytes) and p.isdigit()] \
        if isinstance(clock, list) else []
    if not isinstance(clock, list) or len(clock) != 2 or len(parts) != 2:
        return f"unexpected reply to TIME: {clock!r:.60}"
    seconds, micros = int(parts[0]), int(parts[1])
    now_ms = seconds * 1000 + micros // 1000
    usage: dict[str, BudgetUsage] = {}
    for (key_id, limits), values in zip(keys, fields, strict=True):
        if not (isinstance(values, list) and len(values) == 4):
            return f"unexpected reply to HMGET: {values!r:.60}"
        read = remote_budget_usage(values, limits, now_ms)
        if isinstance(read, str):
            return read
        usage[key_id] = read
    return usage


def remote_budgets(state: State, keys: Sequence[ApiKey]) -> dict[str, BudgetUsage] | str | None:
    """What Redis holds of each API key's budget (``ctl status``, ``/metrics``), or why
    it could not be read; None with the local backend (the budgets are in shared
    memory). Waits at most four times ``[state] timeout``, and never over a second."""
    if state.backend != "redis":
        return None
    wanted = [(key.id, limits) for key in keys if (limits := budget_limits(key)).any]
    return read_budgets(state, wanted, min(1.0, 4 * state.timeout / 1000))


QUIET_AFTER_FAILURE = 10.0
"""Seconds after a failed blocking call during which that Redis is not asked again."""


class QuietRedis:
    """Blocking calls from one process (the master, or a worker's metrics scrapes),
    skipped for :data:`QUIET_AFTER_FAILURE` after one failed, so a caller polling while
    Redis is away pays one deadline, not one per call. The quiet time holds for the
    server that failed only: a reload naming another url asks it at once. (Scrape
    threads may race on these fields; the worst is one extra call.)"""

    def __init__(self) -> None:
        self.quiet_until = 0.0
        self.failure = ""
        self.failed_url = ""

    def quiet(self, state: State, now: float) -> bool:
        return now < self.quiet_until and state.url == self.failed_url

    def failed(self, state: State, why: str, now: float) -> None:
        self.quiet_until = now + QUIET_AFTER_FAILURE
        self.failure = why
        self.failed_url = state.url

    def budgets(self, state: State, keys: Sequence[ApiKey],
                now: float) -> dict[str, BudgetUsage] | str | None:
        """What Redis holds of each key's budget (:func:`remote_budgets`); during the
        quiet time, the last failure without asking again."""
        asks = state.backend == "redis" and any(budget_limits(key).any for key in keys)
        if asks and self.quiet(state, now):
            return f"{self.failure} (asked again in {self.quiet_until - now:.0f} s)"
        read = remote_budgets(state, keys)  # None or {} without asking when not ``asks``
        if isinstance(read, str):
            self.failed(state, read, now)
        return read


__all__ = ["FAILURES", "QUIET_AFTER_FAILURE", "BlockingRedis", "QuietRedis", "failure_text",
           "read_budgets", "remote_budgets"]
