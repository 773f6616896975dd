"""Rate limits and stream caps kept in Redis, shared by every gateway instance.

Used instead of the shared-memory table when ``[state] backend = "redis"``. Each
admission is ONE round trip: a Lua script (:data:`ADMIT`) that the server runs
atomically, on the server's clock (``TIME``), so the hosts' clocks do not matter:

- the key's GCRA state is ``PREFIX{digest}:tat`` = ``"<sec> <ns>"`` of its theoretical
  arrival time, the same arithmetic as :func:`li_httpd.shm.gcra.decide` on differences
  to now (Lua numbers are doubles: absolute nanoseconds would lose precision,
  differences up to ``burst × interval`` do not); it expires when the burst is full
  again;
- its open streams are *leases* in the sorted set ``PREFIX{digest}:streams``, scored by
  expiry (ms); expired leases are dropped before counting, so the slots of a host that
  died free up after ``lease_time``. Holders renew their leases every third of it
  (:meth:`RemoteLimits.run`);
- each lease is also listed in its holder's set ``PREFIXholder:<host>.<pid>:<worker pid>``
  so the master can release a killed worker's leases at once (:func:`release_holder`).
  The worker's pid, not its slot: after a reload a new worker may have the slot of a
  retiring one that still holds leases.

The key digest is an unkeyed BLAKE2b-128 of (route, key value): the same on every host
(the shared-memory table's per-host secret would split one key across hosts).

A decision that could not be made (backend down, error, timeout) follows the
``limits`` kind's ``on_backend_error`` policy (:mod:`.backend_health`).
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import time
from collections.abc import Callable
from typing import Literal, NamedTuple

import trio
from li_httpd.config.model import State
from li_httpd.shm import BudgetDenied, BudgetGrant, BudgetLimits, BudgetUsage
from li_httpd.shm.budget import Grant, Usage

from .backend_health import BackendHealth, OnError
from .redis_client import BackendError, RedisPool, Script, ScriptCall, connection_errors
from .resp import Reply

ADMIT = Script("""
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ns = tonumber(t[2]) * 1000
local now_ms = now_s * 1000 + math.floor(now_ns / 1000000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local ahead = 0
local stored = redis.call('GET', KEYS[1])
if stored then
  local sp = string.find(stored, ' ', 1, true)
  local ds = tonumber(string.sub(stored, 1, sp - 1)) - now_s
  local dn = tonumber(string.sub(stored, sp + 1)) - now_ns
  if ds > 0 or (ds == 0 and dn > 0) then ahead = ds * 1000000000 + dn end
end
local new_ahead = ahead + interval
local excess = new_ahead - tolerance
if excess > 0 then return {0, excess, 1, now_s, now_ns} end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then
  return {0, 1000000000, 2, now_s, now_ns}
end
local total = now_ns + new_ahead
redis.call('SET', KEYS[1], string.format('%d %d', now_s + math.floor(total / 1000000000),
           total % 1000000000), 'PX', math.floor(new_ahead / 1000000) + 1)
local lease_ms = tonumber(ARGV[5])
redis.call('ZADD', KEYS[2], now_ms + lease_ms, ARGV[4])
redis.call('PEXPIRE', KEYS[2], lease_ms * 2)
redis.call('SADD', KEYS[3], KEYS[2] .. ' ' .. ARGV[4])
redis.call('PEXPIRE', KEYS[3], lease_ms * 2)
return {1, 0, 0, now_s, now_ns}
""")
"""KEYS: tat, streams, holder. ARGV: interval ns, tolerance ns, max streams, lease id,
lease ms. Returns {allowed, retry_after ns, reason (0 ok, 1 rate, 2 streams), server
time s, ns}."""

RELEASE = Script("""
local n = 0
for i = 1, #ARGV do
  local sp = string.find(ARGV[i], ' ', 1, true)
  n = n + redis.call('ZREM', string.sub(ARGV[i], 1, sp - 1), string.sub(ARGV[i], sp + 1))
  redis.call('SREM', KEYS[1], ARGV[i])
end
return n
""")
"""KEYS: holder. ARGV: "<streams key> <lease id>" members. Returns leases removed."""

RENEW = Script("""
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  local sp = string.find(ARGV[i], ' ', 1, true)
  local key = string.sub(ARGV[i], 1, sp - 1)
  redis.call('ZADD', key, 'XX', expiry, string.sub(ARGV[i], sp + 1))
  redis.call('PEXPIRE', key, tonumber(ARGV[1]) * 2)
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return #ARGV - 1
""")
"""KEYS: holder. ARGV: lease ms, then "<streams key> <lease id>" members."""

RELEASE_HOLDER = Script("""
local members = redis.call('SMEMBERS', KEYS[1])
local n = 0
for _, member in ipairs(members) do
  local sp = string.find(member, ' ', 1, true)
  n = n + redis.call('ZREM', string.sub(member, 1, sp - 1), string.sub(member, sp + 1))
end
redis.call('DEL', KEYS[1])
return n
""")
"""KEYS: holder. Releases every lease the holder has (a dead worker's)."""

BUDGET_RESERVE = Script("""
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tpm, ulim, wms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, micro = tonumber(ARGV[4]), tonumber(ARGV[5])
local v = redis.call('HMGET', KEYS[1], 'tw', 't', 'uw', 'u')
local tw, uw = math.floor(now_ms / 60000), math.floor(now_ms / wms)
local used_t, used_u = 0, 0
if v[1] then
  local stored = tonumber(v[1])
  if stored > tw then tw = stored end
  if stored == tw then used_t = tonumber(v[2]) end
end
if v[3] then
  local stored = tonumber(v[3])
  if stored > uw then uw = stored end
  if stored == uw then used_u = tonumber(v[4]) end
end
local function until_s(end_ms)
  return math.max(1, math.ceil((end_ms - now_ms) / 1000))
end
local large_s, large_l, over_s, over_l = -1, 0, -1, 0
if tpm > 0 then
  if tokens > tpm then large_s, large_l = 60, 1
  elseif used_t + tokens > tpm then over_s, over_l = until_s((tw + 1) * 60000), 1 end
end
if ulim > 0 then
  if micro > ulim then
    local s = math.ceil(wms / 1000)
    if s >= large_s then large_s, large_l = s, 2 end
  elseif used_u + micro > ulim then
    local s = until_s((uw + 1) * wms)
    if s >= over_s then over_s, over_l = s, 2 end
  end
end
if large_l > 0 then return {0, large_l, large_s, 2} end
if over_l > 0 then return {0, over_l, over_s, 1} end
redis.call('HSET', KEYS[1], 'tw', tw, 't', string.format('%d', used_t + tokens), 'uw', uw,
           'u', string.format('%d', used_u + micro))
redis.call('PEXPIRE', KEYS[1], math.max(60000, wms) * 2)
return {1, tw, uw, 0}
""")
"""KEYS: the key's budget hash. ARGV: tokens per minute, micro-USD limit, dollar window
ms, tokens, micro-USD. Returns {1, token window, usd window, 0} (reserved) or {0, limit
(1 tokens, 2 usd), retry after s, reason (1 over, 2 larger than the budget)}: the
arithmetic of :func:`li_httpd.shm.budget.reserve` on Redis time (ms)."""

BUDGET_SETTLE = Script("""
local v = redis.call('HMGET', KEYS[1], 'tw', 't', 'uw', 'u')
if v[1] and tonumber(v[1]) == tonumber(ARGV[1]) then
  local tokens = tonumber(v[2]) + tonumber(ARGV[5]) - tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 't', string.format('%d', math.max(0, tokens)))
end
if v[3] and tonumber(v[3]) == tonumber(ARGV[3]) then
  local micro = tonumber(v[4]) + tonumber(ARGV[6]) - tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], 'u', string.format('%d', math.max(0, micro)))
end
return 1
""")
"""KEYS: the budget hash. ARGV: the grant's token window, tokens, usd window, micro-USD,
then the actual tokens and micro-USD (:func:`li_httpd.shm.budget.settle`)."""

CIRCUITS_OPEN = Script("""
local left = {}
for i = 1, #KEYS do left[i] = redis.call('PTTL', KEYS[i]) end
return left
""")
"""KEYS: circuit keys. Returns each one's remaining open time in ms (negative: none)."""

CIRCUIT_POLL_S = 1.0
"""How often a worker asks whether another instance opened one of its circuits."""

_BUDGET_LIMITS: tuple[Literal["tokens", "usd"], ...] = ("tokens", "tokens", "usd")
_BUDGET_REASONS = ("", "over the budget", "larger than the budget")

_FAILURES: tuple[type[BaseException], ...] = (BackendError, *connection_errors())

RELEASE_BATCH = 64
"""Leases given back per round trip at most."""
RELEASE_KEPT = 4096
"""Releases kept while Redis is down at most (older ones are left to expire)."""
RELEASE_DELAY_S = 0.02
"""How long a released lease waits for an admission to carry it to Redis before the
background task sends it alone (a freed stream slot shows up in Redis that much later
at most)."""


class RemoteVerdict(NamedTuple):
    """What the backend decided, or the policy to follow when it could not."""

    fallback: OnError | Literal[""]
    """"" = the backend decided (below); else the on_backend_error policy to follow."""
    allowed: bool
    retry_after_ns: int
    reason: Literal["", "rate", "streams"]
    lease: bytes
    """The stream lease held ("<streams key> <lease id>"), when allowed."""


_REASONS: tuple[Literal["", "rate", "streams"], ...] = ("", "rate", "streams")


def host_id() -> str:
    """This gateway instance's id in lease ids: host name and the master's pid (two
    instances on one host differ). A worker is a child of the master."""
    return f"{socket.gethostname()}.{os.getppid()}"


def holder_key(prefix: str, host: str, worker: int) -> bytes:
    return f"{prefix}holder:{host}:{worker}".encode()


def key_digest(route: bytes, value: bytes) -> bytes:
    """The Redis name of a (route, key value): the same on every host."""
    return hashlib.blake2b(route + b"\0" + value, digest_size=16).hexdigest().encode()


def budget_key(prefix: bytes, key_id: str) -> bytes:
    """The Redis hash of an API key's budget counters (fields as in :data:`BUDGET_RESERVE`)."""
    return prefix + b"budget:{" + key_id.encode() + b"}"


def remote_budget_usage(values: list[Reply], limits: BudgetLimits,
                        now_ms: int) -> BudgetUsage | str:
    """A budget hash's ``tw``, ``t``, ``uw``, ``u`` (nil where absent) as of the Redis
    time ``now_ms``, read as :data:`BUDGET_RESERVE` reads them; or what is wrong with
    them."""
    numbers: list[int] = []
    for value in values:
        if value is None:
            numbers.append(0)
            continue
        if not isinstance(value, bytes) or not value.isdigit() or len(value) > 19:
            return f"unexpected budget field {value!r:.40}"
        numbers.append(int(value))
    token_window, tokens, usd_window, micro = numbers
    if values[0] is None:
        token_window = tokens = 0
    if values[2] is None:
        usd_window = micro = 0
    return BudgetUsage.at(Usage(token_window, tokens, usd_window, micro), limits,
                          now_ms * 1_000_000)


def read_password(state: State) -> str | None:
    """The Redis password from password_file or password_env (validated to exist)."""
    if state.password_file:
        with open(state.password_file, encoding="utf-8") as handle:
            return handle.read().rstrip("\r\n")
    if state.password_env:
        return os.environ.get(state.password_env)
    return None


class RemoteLimits:
    """One worker's view of the Redis limits: its pool, health and live leases."""

    def __init__(self, state: State, pool: RedisPool, worker: int, host: str) -> None:
        self.prefix = state.key_prefix.encode()
        self.pool = pool
        self.lease_ms = state.lease_time
        self.on_error: OnError = state.limits_on_error or state.on_backend_error
        self.budgets_on_error: OnError = state.budgets_on_error or state.on_backend_error
        self.health = BackendHealth(state.retry_after * 1_000_000)
        self.host = host
        self.holder = holder_key(state.key_prefix, host, worker)
        self._lease_prefix = f"{host}:{worker}:".encode()
        self._next = 0
        self.leases: set[bytes] = set()
        """Leases this worker holds (renewed by :meth:`run`)."""
        self._released: list[bytes] = []
        self._settles: list[tuple[bytes, tuple[int, ...]]] = []
        self._openings: list[tuple[bytes, int]] = []
        self._circuit_keys: list[bytes] = []
        self._circuit_opened: list[Callable[[int], None]] = []
        self._wake = trio.Event()
        self.transitions: list[str] = []
        """Backend up/down changes not yet reported (the caller logs and counts them)."""

    async def admit(self, digest: bytes, interval_ns: int, tolerance_ns: int,
                    max_streams: int) -> RemoteVerdict:
        """Charge one request and take a stream lease, in one round trip."""
        now = time.monotonic_ns()
        if not self.health.usable(now):
            return RemoteVerdict(self.on_error, False, 0, "", b"")
        self._next += 1
        lease_id = self._lease_prefix + b"%d" % self._next
        streams = self.prefix + b"{" + digest + b"}:streams"
        released = self._released
        batch: tuple[bytes, ...] = ()
        before: ScriptCall | None = None
        if released:  # the releases waiting to be sent ride along: no round trip of their own
            batch = tuple(released[:RELEASE_BATCH])
            del released[:RELEASE_BATCH]
            before = (RELEASE, (self.holder,), batch)
        try:
            reply = await self.pool.run_script(
                ADMIT, (self.prefix + b"{" + digest + b"}:tat", streams, self.holder),
                (interval_ns, tolerance_ns, max_streams, lease_id, self.lease_ms), before)
            if not isinstance(reply, list) or len(reply) != 5 or not all(
                    isinstance(v, int) for v in reply):
                raise BackendError(f"unexpected reply to the admit script: {reply!r:.80}")
        except _FAILURES as exc:
            self._unanswered(batch, streams + b" " + lease_id)
            self._failed(exc)
            return RemoteVerdict(self.on_error, False, 0, "", b"")
        except trio.Cancelled:
            self._unanswered(batch, streams + b" " + lease_id)
            raise
        self._succeeded()
        allowed, retry, reason = reply[0], reply[1], reply[2]
        assert isinstance(retry, int) and isinstance(reason, int)
        if not allowed:
            return RemoteVerdict("", False, retry, _REASONS[reason], b"")
        lease = streams + b" " + lease_id
        self.leases.add(lease)
        return RemoteVerdict("", True, 0, "", lease)

    def _unanswered(self, batch: tuple[bytes, ...], lease: bytes) -> None:
        """An admission got no answer: the script may still have run (after the timeout),
        so its lease is released too, with the releases it carried (both harmless if
        they were never applied)."""
        self._released.extend(batch)
        self._released.append(lease)
        self._wake.set()

    async def reserve_budget(self, key_id: str, limits: BudgetLimits, tokens: int,
                             micro_usd: int) -> BudgetGrant | BudgetDenied | None:
        """Reserve a request's worst case against an API key's budget in one round trip;
        None when the backend could not decide (follow ``budgets_on_error``)."""
        now = time.monotonic_ns()
        if not self.health.usable(now):
            return None
        try:
            reply = await self.pool.run_script(
                BUDGET_RESERVE, (self._budget_key(key_id),),
                (limits.tokens_per_minute, limits.micro_usd,
                 max(1, limits.window_ns // 1_000_000), tokens, micro_usd))
            if not isinstance(reply, list) or len(reply) != 4 or not all(
                    isinstance(v, int) for v in reply):
                raise BackendError(f"unexpected reply to the budget script: {reply!r:.80}")
        except _FAILURES as exc:
            self._failed(exc)
            return None
        self._succeeded()
        ok, first, second, reason = (int(v) for v in reply)  # type: ignore[arg-type]
        if not ok:
            return BudgetDenied(_BUDGET_LIMITS[first], second, _BUDGET_REASONS[reason])
        return BudgetGrant(-1, Grant(first, tokens, second, micro_usd), remote=True)

    def settle_budget(self, key_id: str, grant: BudgetGrant, tokens: int,
                      micro_usd: int) -> None:
        """Replace a remote reservation by the actual usage (sent by :meth:`run`; if that
        fails the reservation stays charged until its window ends, as in shared memory)."""
        g = grant.grant
        self._settles.append((self._budget_key(key_id), (
            g.token_window, g.tokens, g.usd_window, g.micro_usd, tokens, micro_usd)))
        self._wake.set()

    def _budget_key(self, key_id: str) -> bytes:
        return budget_key(self.prefix, key_id)

    def watch_circuit(self, name: bytes, opened: Callable[[int], None]) -> None:
        """Call ``opened(remaining_ns)`` when another instance has the circuit ``name``
        (pool:peer) open (polled every :data:`CIRCUIT_POLL_S` by :meth:`run`)."""
        self._circuit_keys.append(self.prefix + b"circuit:" + name)
        self._circuit_opened.append(opened)

    def publish_open(self, name: bytes, open_ns: int) -> None:
        """This instance opened the circuit ``name`` for ``open_ns`` (sent by :meth:`run`:
        a Redis key that expires when the open time ends)."""
        self._openings.append((self.prefix + b"circuit:" + name,
                               max(1, open_ns // 1_000_000)))
        self._wake.set()

    def release(self, lease: bytes) -> None:
        """Give a lease back (no await: :meth:`run` or the next admission sends it; while
        Redis is down it is kept, up to :data:`RELEASE_KEPT`, else it expires on its
        own)."""
        self.leases.discard(lease)
        self._released.append(lease)
        if len(self._released) == 1:
            self._wake.set()

    def _failed(self, exc: BaseException) -> None:
        self.pool.reset()  # a server that failed one may have closed them all
        # Down from now, when the call failed (up to the timeout after it started).
        if self.health.failed(time.monotonic_ns()):
            self.transitions.append(f"down: {exc}")

    def _succeeded(self) -> None:
        if self.health.succeeded():
            self.transitions.append("up")

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background task: send releases, budget settles and circuit openings as they
        come, renew live leases every third of the lease time, and poll the watched
        circuits every :data:`CIRCUIT_POLL_S`."""
        task_status.started()
        renew_every = self.lease_ms / 3000
        next_renewal = trio.current_time() + renew_every
        next_poll = trio.current_time() + CIRCUIT_POLL_S if self._circuit_keys else math.inf
        while True:
            with trio.move_on_at(min(next_renewal, next_poll)):
                await self._wake.wait()
            self._wake = trio.Event()
            while self._openings:
                key, open_ms = self._openings.pop()
                await self._command("SET", key, b"1", b"PX", open_ms)
            if trio.current_time() >= next_poll:
                next_poll = trio.current_time() + CIRCUIT_POLL_S
                await self._poll_circuits()
            while self._settles:
                key, amounts = self._settles.pop()
                await self._send(BUDGET_SETTLE, (key,), amounts)
            if self._released:
                # Give the next admissions a moment to carry these along first.
                await trio.sleep(RELEASE_DELAY_S)
            if self._released:
                batch = tuple(self._released[:RELEASE_BATCH])
                del self._released[:RELEASE_BATCH]
                if await self._send(RELEASE, (self.holder,), batch):
                    if self._released:
                        self._wake.set()
                else:  # kept for the next admission or tick (dropped, a lease would
                    # hold its slot for lease_time after Redis is back)
                    self._released = [*batch, *self._released][:RELEASE_KEPT]
            if trio.current_time() >= next_renewal:
                next_renewal = trio.current_time() + renew_every
                if self.leases:
                    await self._send(RENEW, (self.holder,), (self.lease_ms, *self.leases))

    async def _poll_circuits(self) -> None:
        now = time.monotonic_ns()
        if not self.health.usable(now):
            return
        try:
            reply = await self.pool.run_script(CIRCUITS_OPEN, tuple(self._circuit_keys), ())
        except _FAILURES as exc:
            self._failed(exc)
            return
        self._succeeded()
        if not isinstance(reply, list):
            return
        for left, opened in zip(reply, self._circuit_opened, strict=False):
            if isinstance(left, int) and left > 0:
                opened(left * 1_000_000)

    async def _command(self, *args: bytes | str | int) -> None:
        now = time.monotonic_ns()
        if not self.health.usable(now):
            return
        try:
            await self.pool.call(*args)
        except _FAILURES as exc:
            self._failed(exc)
        else:
            self._succeeded()

    async def _send(self, script: Script, keys: tuple[bytes, ...],
                    args: tuple[bytes | int, ...]) -> bool:
        """Whether the script ran (False: Redis is down, or the call failed)."""
        now = time.monotonic_ns()
        if not self.health.usable(now):
            return False
        try:
            await self.pool.run_script(script, keys, args)
        except _FAILURES as exc:
            self._failed(exc)
            return False
        self._succeeded()
        return True


__all__ = ["ADMIT", "BUDGET_RESERVE", "BUDGET_SETTLE", "CIRCUITS_OPEN", "RELEASE",
           "RELEASE_HOLDER", "RENEW", "RemoteLimits", "RemoteVerdict", "budget_key", "holder_key",
           "host_id", "key_digest", "read_password", "remote_budget_usage"]
