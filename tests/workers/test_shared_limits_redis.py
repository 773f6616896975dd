"""The Redis limit scripts and client against a real redis-server (one per module).

- the GCRA script decides as :func:`li_httpd.shm.gcra.decide` does: the script returns
  the server time it used, and replaying the same times through the pure function gives
  the same decisions and Retry-After values;
- stream leases cap concurrency, are released, expire when not renewed, are kept alive
  by renewal, and a holder's leases are released all at once (a dead worker's);
- EVALSHA falls back to EVAL after SCRIPT FLUSH (a restarted server);
- a server that does not answer costs at most the timeout, then the backend is down
  (no call at all) until retry_after, and the decision follows on_backend_error.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from li_httpd.config.checks import RedisUrl
from li_httpd.config.model import State
from li_httpd.config.units import Millis
from li_httpd.shm import BudgetUsage, gcra
from li_httpd.workers.redis_blocking import read_budgets
from li_httpd.workers.redis_client import BackendError, RedisPool
from li_httpd.workers.shared_limits import (
    ADMIT,
    RELEASE_HOLDER,
    RemoteLimits,
    holder_key,
    key_digest,
)

from tests.conftest import RedisServer

pytestmark = pytest.mark.integration


def _pool(server: RedisServer, timeout: float = 0.5, port: int | None = None) -> RedisPool:
    return RedisPool(RedisUrl(False, "127.0.0.1", port or server.port, 0, ""), None, 2, timeout)


def _state(server: RedisServer, **overrides: object) -> State:
    values: dict[str, object] = {"backend": "redis", "url": server.url,
                                 "lease_time": 3000, "key_prefix": "t:"}
    values.update(overrides)
    return State(**values)  # type: ignore[arg-type]


async def test_gcra_script_matches_the_shared_memory_decisions(redis_server: RedisServer
                                                               ) -> None:
    pool = _pool(redis_server)
    rate = gcra.Rate.of(20, 3)  # 50 ms interval, burst 3
    keys = (b"t:{gcra}:tat", b"t:{gcra}:streams", b"t:holder:gcra")
    redis_server.command("DEL", *(k.decode() for k in keys))
    replies = []
    pauses = [0, 0, 0, 0, 0.02, 0.04, 0.06, 0, 0, 0.2, 0, 0, 0, 0, 0.01]
    for pause in pauses:
        await trio.sleep(pause)
        reply = await pool.run_script(ADMIT, keys, (rate.interval_ns, rate.tolerance_ns,
                                                    1000, f"l{len(replies)}", 60_000))
        assert isinstance(reply, list)
        replies.append(reply)
    tat = 0
    decisions = []
    for allowed, retry, reason, now_s, now_ns in replies:
        assert isinstance(now_s, int) and isinstance(now_ns, int)
        expected = gcra.decide(rate, tat, now_s * gcra.NS_PER_SECOND + now_ns)
        assert (bool(allowed), retry) == (expected.allowed, expected.retry_after_ns)
        assert reason == (0 if expected.allowed else 1)
        tat = expected.new_tat
        decisions.append(expected.allowed)
    # The table exercised both outcomes: an initial burst of 3, then refusals.
    assert decisions[:4] == [True, True, True, False]
    assert True in decisions[5:] and False in decisions[5:]


async def _admit(limits: RemoteLimits, digest: bytes, streams: int = 2,
                 rate: gcra.Rate | None = None) -> tuple[bool, str, bytes]:
    rate = rate or gcra.Rate.of(1000, 1000)
    verdict = await limits.admit(digest, rate.interval_ns, rate.tolerance_ns, streams)
    assert verdict.fallback == ""
    return verdict.allowed, verdict.reason, verdict.lease


async def test_stream_leases_cap_release_and_renew(redis_server: RedisServer) -> None:
    limits = RemoteLimits(_state(redis_server), _pool(redis_server), 0, "hostA")
    digest = key_digest(b"route", b"streams-key")
    first = await _admit(limits, digest)
    second = await _admit(limits, digest)
    assert first[0] and second[0]
    assert await _admit(limits, digest) == (False, "streams", b"")
    async with trio.open_nursery() as nursery:
        await nursery.start(limits.run)
        limits.release(first[2])
        await trio.sleep(0.2)  # the background task sends it
        third = await _admit(limits, digest)
        assert third[0]
        # Renewal keeps the live leases past their lease time (3 s, renewed every 1 s).
        await trio.sleep(3.5)
        assert await _admit(limits, digest) == (False, "streams", b"")
        nursery.cancel_scope.cancel()


async def test_unrenewed_leases_expire(redis_server: RedisServer) -> None:
    """A host that died (no renewal, no release) frees its slots after lease_time."""
    dead = RemoteLimits(_state(redis_server), _pool(redis_server), 0, "dead")
    alive = RemoteLimits(_state(redis_server), _pool(redis_server), 0, "alive")
    digest = key_digest(b"route", b"expiry-key")
    assert (await _admit(dead, digest, streams=1))[0]
    assert await _admit(alive, digest, streams=1) == (False, "streams", b"")
    await trio.sleep(3.1)
    assert (await _admit(alive, digest, streams=1))[0]


async def test_a_holders_leases_are_released_at_once(redis_server: RedisServer) -> None:
    limits = RemoteLimits(_state(redis_server), _pool(redis_server), 3, "hostB")
    digest = key_digest(b"route", b"holder-key")
    for _ in range(2):
        assert (await _admit(limits, digest))[0]
    assert not (await _admit(limits, digest))[0]
    pool = _pool(redis_server)
    assert await pool.run_script(RELEASE_HOLDER, (holder_key("t:", "hostB", 3),), ()) == 2
    assert (await _admit(limits, digest))[0]


async def test_evalsha_falls_back_to_eval_after_a_flush(redis_server: RedisServer) -> None:
    limits = RemoteLimits(_state(redis_server), _pool(redis_server), 0, "hostC")
    digest = key_digest(b"route", b"flush-key")
    assert (await _admit(limits, digest))[0]
    assert redis_server.command("SCRIPT", "FLUSH").startswith(b"+OK")
    assert (await _admit(limits, digest))[0]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


async def test_a_silent_server_costs_at_most_the_timeout(silent_port: int) -> None:
    pool = RedisPool(RedisUrl(False, "127.0.0.1", silent_port, 0, ""), None, 2, 0.05)
    started = time.monotonic()
    with pytest.raises(BackendError, match="no answer within 50 ms"):
        await pool.call("PING")
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("policy", ["local", "allow", "deny"])
async def test_a_down_backend_is_not_called_until_retry_after(
        redis_server: RedisServer, silent_port: int, policy: str) -> None:
    state = _state(redis_server, timeout=50, retry_after=300, on_backend_error=policy)
    pool = RedisPool(RedisUrl(False, "127.0.0.1", silent_port, 0, ""), None, 2, 0.05)
    limits = RemoteLimits(state, pool, 0, "hostD")
    digest = key_digest(b"route", b"down-key")
    rate = gcra.Rate.of(10, 10)
    started = time.monotonic()
    verdict = await limits.admit(digest, rate.interval_ns, rate.tolerance_ns, 5)
    assert verdict.fallback == policy
    assert limits.transitions and limits.transitions[0].startswith("down")
    # The script may have run after the timeout: its lease is released to be sure.
    assert limits._released and limits._released[-1].endswith(b"hostD:0:1")
    assert 0.04 < time.monotonic() - started < 0.5
    started = time.monotonic()
    for _ in range(20):  # down: decided at once, no call
        assert (await limits.admit(digest, rate.interval_ns, rate.tolerance_ns, 5)
                ).fallback == policy
    assert time.monotonic() - started < 0.05
    # After retry_after a probe goes to the (now working) server: up again.
    limits.pool = _pool(redis_server)
    await trio.sleep(0.31)
    verdict = await limits.admit(digest, rate.interval_ns, rate.tolerance_ns, 5)
    assert verdict.fallback == "" and verdict.allowed
    assert limits.transitions[-1] == "up"


async def test_the_down_period_starts_when_the_call_failed(
        redis_server: RedisServer, silent_port: int) -> None:
    """retry_after counts from the failure, not from the start of the call that failed:
    with a timeout longer than retry_after, the backend is still down right after the
    timeout (no request pays the timeout again at once)."""
    state = _state(redis_server, timeout=300, retry_after=200, on_backend_error="allow")
    pool = RedisPool(RedisUrl(False, "127.0.0.1", silent_port, 0, ""), None, 2, 0.3)
    limits = RemoteLimits(state, pool, 0, "hostH")
    digest = key_digest(b"route", b"down-key")
    rate = gcra.Rate.of(10, 10)
    assert (await limits.admit(digest, rate.interval_ns, rate.tolerance_ns, 5)
            ).fallback == "allow"
    started = time.monotonic()
    assert (await limits.admit(digest, rate.interval_ns, rate.tolerance_ns, 5)
            ).fallback == "allow"
    assert time.monotonic() - started < 0.1, "down: decided at once, no call"


async def test_a_release_made_while_the_backend_is_down_is_sent_once_it_is_up(
        redis_server: RedisServer) -> None:
    """A stream that ends while Redis counts as down (or an admission that got no
    answer: its lease may exist) keeps its release for later instead of dropping it:
    the lease is given back once Redis answers, not left to hold the slot for
    lease_time."""
    limits = RemoteLimits(_state(redis_server, retry_after=200), _pool(redis_server), 0,
                          "hostI")
    digest = key_digest(b"route", b"release-while-down")
    allowed, _, lease = await _admit(limits, digest)
    assert allowed
    async with trio.open_nursery() as nursery:
        await nursery.start(limits.run)
        limits.health.failed(time.monotonic_ns())  # down for 200 ms
        limits.release(lease)
        await trio.sleep(0.1)  # the background task sees it while down
        await trio.sleep(1.1)  # up again; the next renewal tick (every 1 s) sends it
        streams = b"t:{" + digest + b"}:streams"
        assert await limits.pool.call("ZCARD", streams) == 0
        nursery.cancel_scope.cancel()


async def test_per_kind_override_wins(redis_server: RedisServer, silent_port: int) -> None:
    state = _state(redis_server, on_backend_error="allow", limits_on_error="deny")
    pool = RedisPool(RedisUrl(False, "127.0.0.1", silent_port, 0, ""), None, 2, 0.05)
    limits = RemoteLimits(state, pool, 0, "hostE")
    verdict = await limits.admit(b"x", 1, 1, 1)
    assert verdict.fallback == "deny"


async def test_the_master_releases_a_dead_workers_leases(redis_server: RedisServer) -> None:
    from li_httpd.supervisor.shared_state import master_host_id, release_worker_leases

    state = _state(redis_server)
    limits = RemoteLimits(state, _pool(redis_server), 5, master_host_id())
    other = RemoteLimits(state, _pool(redis_server), 6, master_host_id())
    digest = key_digest(b"route", b"master-key")
    assert (await _admit(limits, digest, streams=3))[0]
    assert (await _admit(limits, digest, streams=3))[0]
    assert (await _admit(other, digest, streams=3))[0]
    assert not (await _admit(other, digest, streams=3))[0]
    assert await trio.to_thread.run_sync(release_worker_leases, state, 5) == 2
    assert (await _admit(other, digest, streams=3))[0]  # slot 5's two are free again
    assert (await _admit(other, digest, streams=3))[0]
    assert not (await _admit(other, digest, streams=3))[0]  # slot 6's are kept


def test_the_master_gives_up_quickly_when_redis_is_away(silent_port: int) -> None:
    from li_httpd.supervisor.shared_state import release_worker_leases

    state = State(backend="redis", url=f"redis://127.0.0.1:{silent_port}")
    started = time.monotonic()
    problem = release_worker_leases(state, 0, deadline=0.2)
    assert isinstance(problem, str), problem
    assert time.monotonic() - started < 1.0


def test_after_a_failed_release_the_master_leaves_the_next_ones_to_expire() -> None:
    """A reload retiring every worker while Redis is away stalls the master's loop for
    one deadline (4 x timeout), not one per worker; it tries again after the quiet time."""
    from li_httpd.supervisor.shared_state import QUIET_AFTER_FAILURE, MasterRedis

    with _silent_listener() as listener:
        port = int(listener.getsockname()[1])
        state = State(backend="redis", url=f"redis://127.0.0.1:{port}", timeout=Millis(50))
        release = MasterRedis().release_leases
        started = time.monotonic()
        assert isinstance(release(state, 1, 100.0), str)
        assert time.monotonic() - started < 0.2 + 0.3  # 4 x 50 ms, not DEADLINE
        assert release(state, 2, 101.0) is None
        assert release(state, 3, 100.0 + QUIET_AFTER_FAILURE - 0.1) is None
        assert _accepted(listener) == 1
        assert isinstance(release(state, 4, 100.0 + QUIET_AFTER_FAILURE), str)


def _silent_listener() -> socket.socket:
    """A non-blocking listener that accepts connections (backlog) and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    return listener


def _accepted(listener: socket.socket) -> int:
    """How many connections were made to ``listener`` since last asked."""
    count = 0
    while True:
        try:
            listener.accept()[0].close()
        except BlockingIOError:
            return count
        count += 1


def test_after_a_failed_budget_read_ctl_status_does_not_ask_again() -> None:
    """ctl status polled while Redis is away stalls the master's loop for one deadline,
    not one per request: the failure is shown again without asking for the quiet time,
    and a failed lease release quiets the read too (and the other way round)."""
    from li_httpd.config.model import ApiKey
    from li_httpd.supervisor.shared_state import QUIET_AFTER_FAILURE, MasterRedis

    keys = (ApiKey(id="team", sha256="0" * 64, tokens_per_minute=100),)
    with _silent_listener() as listener:
        port = int(listener.getsockname()[1])
        state = State(backend="redis", url=f"redis://127.0.0.1:{port}", timeout=Millis(50))
        redis = MasterRedis()
        assert redis.budgets(state, keys, 100.0) == "Redis did not answer in time"
        started = time.monotonic()
        for now in (100.5, 101.0, 100.0 + QUIET_AFTER_FAILURE - 0.1):
            shown = redis.budgets(state, keys, now)
            assert isinstance(shown, str) and shown.startswith("Redis did not answer in time")
        assert redis.release_leases(state, 7, 105.0) is None
        assert redis.budgets(state, (), 105.0) == {}  # no key has a budget: no failure
        assert time.monotonic() - started < 0.1
        assert _accepted(listener) == 1
        assert isinstance(redis.release_leases(state, 7, 100.0 + QUIET_AFTER_FAILURE), str)
        assert isinstance(redis.budgets(state, keys, 100.0 + QUIET_AFTER_FAILURE + 1), str)
        assert _accepted(listener) == 1
        assert redis.budgets(State(), keys, 111.0) is None  # local: shared memory
        # Quiet for that server only: a reload naming another one asks it at once.
        moved = State(backend="redis", url="redis://127.0.0.1:1", timeout=Millis(50))
        shown = redis.budgets(moved, keys, 111.0)
        assert isinstance(shown, str) and "asked again" not in shown, shown


async def test_budgets_reserve_and_settle_as_in_shared_memory(redis_server: RedisServer
                                                              ) -> None:
    """The same sequence through the Redis scripts and through shm/budget.py gives the
    same decisions (the windows are the same fixed, epoch-aligned ones)."""
    from li_httpd.shm import BudgetDenied, BudgetGrant, budget

    limits = budget.Limits.of(100, 0.001, 24 * 3600 * 1000)  # 100 tokens/min, 1000 µUSD/day
    remote = RemoteLimits(_state(redis_server), _pool(redis_server), 0, "hostF")
    redis_server.command("DEL", "t:budget:{key-1}")
    usage = budget.Usage()
    steps: list[tuple[str, int, int]] = [
        ("reserve", 30, 100), ("reserve", 50, 200), ("reserve", 30, 0),  # over (tokens)
        ("reserve", 200, 0),                                              # larger
        ("reserve", 0, 800),                                              # over (usd)
        ("settle0", 10, 50), ("reserve", 30, 0), ("reserve", 0, 1001)]
    grants: list[BudgetGrant] = []
    local_grants: list[budget.Grant] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(remote.run)
        for step, tokens, micro in steps:
            if step == "settle0":
                remote.settle_budget("key-1", grants[0], tokens, micro)
                usage = budget.settle(usage, local_grants[0], tokens, micro)
                await trio.sleep(0.2)  # sent by the background task
                continue
            got = await remote.reserve_budget("key-1", limits, tokens, micro)
            expected = budget.reserve(usage, limits, tokens, micro, time.time_ns())
            if isinstance(expected, budget.Denied):
                assert isinstance(got, BudgetDenied), (step, tokens, micro, got)
                assert (got.limit, got.reason) == (expected.limit, expected.reason)
                assert abs(got.retry_after_s - expected.retry_after_s) <= 1
            else:
                assert isinstance(got, BudgetGrant) and got.remote, (tokens, micro, got)
                usage, grant = expected
                assert got.grant == grant
                grants.append(got)
                local_grants.append(grant)
        nursery.cancel_scope.cancel()
    stored = redis_server.command("HGET", "t:budget:{key-1}", "t")
    assert stored == b"$2\r\n%d\r\n" % usage.tokens
    # What ctl status and /metrics read back: the same usage, on Redis's clock.
    state = _state(redis_server)
    read = read_budgets(state, [("key-1", limits), ("key-unused", limits)], 1.0)
    assert isinstance(read, dict), read
    now = time.time_ns()
    assert read["key-1"] == BudgetUsage.at(usage, limits, now)
    assert read["key-unused"] == BudgetUsage.at(budget.Usage(), limits, now)


def test_budgets_cannot_be_read_from_a_silent_server(silent_port: int) -> None:
    from li_httpd.shm import budget

    state = State(backend="redis", url=f"redis://127.0.0.1:{silent_port}", key_prefix="t:")
    started = time.monotonic()
    read = read_budgets(state, [("k", budget.Limits.of(10, 0, 60_000))], 0.2)
    assert read == "Redis did not answer in time"
    assert time.monotonic() - started < 1.0


def test_a_slow_connect_leaves_the_tls_handshake_only_what_is_left(
        silent_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """One deadline for connect, TLS handshake and replies: a connect that took most of
    it does not buy the handshake a whole deadline more."""
    from li_httpd.shm import budget

    resolve = socket.getaddrinfo

    def slow_resolve(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)  # a slow name server, or a SYN retransmitted
        return resolve(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_resolve)
    state = State(backend="redis", url=f"rediss://127.0.0.1:{silent_port}", key_prefix="t:")
    started = time.monotonic()
    read = read_budgets(state, [("k", budget.Limits.of(10, 0, 60_000))], 0.5)
    assert isinstance(read, str) and "timed out" in read
    assert time.monotonic() - started < 0.5 + 0.15


def test_an_unreachable_first_address_leaves_the_next_one_time(
        redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Redis host name with an address that never answers a SYN (IPv6 without a
    route, say) before the one that works: the budgets are still read within the
    deadline, not lost to the first address's wait."""
    from li_httpd.shm import budget

    with socket.socket() as blackhole:  # a full accept queue: further SYNs are dropped
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(0)
        queued = socket.create_connection(blackhole.getsockname())
        resolve = socket.getaddrinfo

        def two_addresses(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
            return [*resolve(host, blackhole.getsockname()[1], *args, **kwargs),
                    *resolve(host, port, *args, **kwargs)]

        monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
        started = time.monotonic()
        read = read_budgets(_state(redis_server), [("k", budget.Limits.of(10, 0, 60_000))],
                            0.6)
        queued.close()
    assert isinstance(read, dict), read
    assert time.monotonic() - started < 0.6 + 0.15


async def test_releases_ride_along_with_the_next_admission(redis_server: RedisServer
                                                           ) -> None:
    """A release waiting to be sent goes in the same write as the next admission, also
    when the server lost its scripts (NOSCRIPT for the release, then for the admit)."""
    limits = RemoteLimits(_state(redis_server), _pool(redis_server), 0, "hostG")
    digest = key_digest(b"route", b"ride-key")
    streams = b"t:{" + digest + b"}:streams"
    first = await _admit(limits, digest)
    limits.release(first[2])  # no background task: only an admission can carry it
    assert redis_server.command("SCRIPT", "FLUSH").startswith(b"+OK")
    second = await _admit(limits, digest)
    assert second[0]
    assert redis_server.command("ZCARD", streams.decode()) == b":1\r\n"  # first released
    limits.release(second[2])
    third = await _admit(limits, digest)  # both scripts loaded again: plain EVALSHA
    assert third[0]
    assert redis_server.command("ZCARD", streams.decode()) == b":1\r\n"


async def test_auth_with_the_password_from_a_file(tmp_path: Path) -> None:
    """requirepass: the pool authenticates with password_file's content; without it
    every call is a clear backend error (NOAUTH), never a hang."""
    from li_httpd.workers.shared_limits import read_password

    from tests.conftest import free_port, require_redis

    require_redis()
    server = RedisServer(free_port(), tmp_path, extra=("--requirepass", "s3cret"))
    server.start()
    try:
        secret = tmp_path / "password"
        secret.write_text("s3cret\n")
        state = State(backend="redis", url=server.url, password_file=str(secret))
        pool = RedisPool(RedisUrl(False, "127.0.0.1", server.port, 0, ""),
                         read_password(state), 1, 1.0)
        assert await pool.call("PING") == b"PONG"
        bare = RedisPool(RedisUrl(False, "127.0.0.1", server.port, 0, ""), None, 1, 1.0)
        with pytest.raises(BackendError, match="NOAUTH"):
            await bare.call("PING")
        wrong = RedisPool(RedisUrl(False, "127.0.0.1", server.port, 0, ""), "nope", 1, 1.0)
        with pytest.raises(BackendError, match="WRONGPASS") as caught:
            await wrong.call("PING")
        assert "nope" not in str(caught.value)
    finally:
        server.stop()


def _tls_redis(tmp_path: Path, *extra: str) -> tuple[RedisServer, int, Path, Path]:
    """A started redis-server with a TLS port: the server, that port, the CA file that
    verifies it and one that does not."""
    import datetime

    from tests.conftest import free_port, make_certificate, require_redis

    require_redis()
    now = datetime.datetime.now(datetime.UTC)
    cert, key = make_certificate(tmp_path, "redis", not_before=now - datetime.timedelta(1),
                                 not_after=now + datetime.timedelta(30), ip="127.0.0.1")
    other, _ = make_certificate(tmp_path, "other", not_before=now - datetime.timedelta(1),
                                not_after=now + datetime.timedelta(30), ip="127.0.0.1")
    plain, tls = free_port(), free_port()
    server = RedisServer(plain, tmp_path, extra=(
        "--tls-port", str(tls), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-auth-clients", "no", *extra))
    server.start()
    return server, tls, cert, other


async def test_rediss_verifies_the_server_against_ca_file(tmp_path: Path) -> None:
    import ssl

    server, tls, cert, other = _tls_redis(tmp_path)
    try:
        url = RedisUrl(True, "127.0.0.1", tls, 0, "")
        trusted = RedisPool(url, None, 1, 2.0, ssl.create_default_context(cafile=str(cert)))
        assert await trusted.call("PING") == b"PONG"
        limits = RemoteLimits(_state(server), trusted, 0, "tls")
        assert (await _admit(limits, key_digest(b"route", b"tls-key")))[0]
        stranger = RedisPool(url, None, 1, 2.0, ssl.create_default_context(cafile=str(other)))
        with pytest.raises(BackendError, match="certificate verify failed"):
            await stranger.call("PING")
    finally:
        server.stop()


def test_budgets_read_over_rediss_with_auth(tmp_path: Path) -> None:
    """The blocking client (ctl status, /metrics) over TLS: the right CA and password
    read the budgets; a wrong password or CA is a message naming neither the password
    nor leaving the TLS socket open."""
    import gc
    import warnings

    from li_httpd.shm import budget

    server, tls, cert, other = _tls_redis(tmp_path, "--requirepass", "right-secret")
    keys = [("team", budget.Limits.of(100, 0, 60_000))]
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text("right-secret\n")
    wrong.write_text("hunter2\n")
    url = f"rediss://127.0.0.1:{tls}"
    try:
        read = read_budgets(State(backend="redis", url=url, ca_file=str(cert),
                                  password_file=str(right)), keys, 2.0)
        assert isinstance(read, dict) and read["team"].tokens == 0, read
        gc.collect()  # earlier tests' garbage is not ours
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            problem = read_budgets(State(backend="redis", url=url, ca_file=str(cert),
                                         password_file=str(wrong)), keys, 2.0)
            stranger = read_budgets(State(backend="redis", url=url, ca_file=str(other),
                                          password_file=str(right)), keys, 2.0)
            gc.collect()
        assert isinstance(problem, str) and "WRONGPASS" in problem
        assert "hunter2" not in problem
        assert isinstance(stranger, str) and "certificate verify failed" in stranger
        assert [str(w.message) for w in caught
                if issubclass(w.category, ResourceWarning)] == []
    finally:
        server.stop()


async def test_concurrent_requests_share_a_connection_and_get_their_own_replies(
        redis_server: RedisServer) -> None:
    """One connection, many tasks at once, some giving up early (their replies are read
    and dropped): every task that waits gets its own reply, and the connection stays
    usable."""
    pool = _pool(redis_server, timeout=2.0)
    pool_of_one = RedisPool(pool.url, None, 1, 2.0)
    got: dict[int, object] = {}

    async def echo(n: int) -> None:
        if n % 7 == 0:
            with trio.move_on_after(0):  # gives up before its reply comes
                await pool_of_one.call("ECHO", f"m{n}")
            return
        got[n] = await pool_of_one.call("ECHO", f"m{n}")

    async with trio.open_nursery() as nursery:
        for n in range(300):
            nursery.start_soon(echo, n)
    assert got == {n: b"m%d" % n for n in range(300) if n % 7}
    assert await pool_of_one.call("ECHO", "after") == b"after"
    connection = pool_of_one._connections[0]
    assert connection is not None and not connection.broken and not connection.pending
