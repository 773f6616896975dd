"""Several gateway instances sharing limits through a real redis-server.

- two instances (2 workers each) on one Redis admit what one instance admits for the
  same offered load (one key's rate limit, within 3 %);
- an instance SIGKILLed (its whole process group) while holding streams frees its
  stream slots within the lease time;
- Redis stopped mid-load: each ``on_backend_error`` policy does what it says (local =
  this host's limits, allow = admitted, deny = 503), and Redis decides again once it is
  back.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import RedisServer

from .conftest import Gateway, MockUpstream, gateway_config
from .test_limits import Client, _open_stream, _wait
from .test_metrics import _free_port, _samples

pytestmark = pytest.mark.integration


def _config(mock: MockUpstream, redis: RedisServer | None, log_dir: Path, *, rps: int,
            burst: int, streams: int = 1000, state: str = "") -> str:
    # One key prefix per test (the tests share one server), the same for its instances.
    backend = (f'[state]\nbackend = "redis"\nurl = "{redis.url}"\nkey_prefix = '
               f'"{log_dir.parent.name[-40:]}:"\n{state}\n') if redis is not None else ""
    limit = (f'[defaults.rate_limit]\nkey = "ip"\nallow_ip_key = true\nrequests_per_sec = '
             f'{rps}\nburst = {burst}\nconcurrent_streams = {streams}\n')
    return gateway_config(mock.origin, extra=f'{backend}{limit}\n[log]\ndir = "{log_dir}"\n')


def _paced(gateways: list[Gateway], per_second: float, seconds: float) -> tuple[int, int]:
    """Offer ``per_second`` requests in total, split evenly across ``gateways`` (one
    paced client each, phases interleaved); returns (admitted, refused)."""
    counts = {200: 0, 429: 0}
    errors: list[BaseException] = []
    lock = threading.Lock()
    interval = len(gateways) / per_second
    start = time.monotonic() + 0.2

    def run(index: int, gateway: Gateway) -> None:
        client = Client(gateway)
        try:
            due = start + index * interval / len(gateways)
            while due < start + seconds:
                time.sleep(max(0.0, due - time.monotonic()))
                status = client.get("/small")[0]
                with lock:
                    counts[status] = counts.get(status, 0) + 1
                due += interval
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=(i, g)) for i, g in enumerate(gateways)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert set(counts) == {200, 429}, counts
    return counts[200], counts[429]


def test_two_instances_admit_what_one_admits(mock: MockUpstream, start_gateway: Callable[
        ..., Gateway], redis_server: RedisServer, tmp_path: Path) -> None:
    single = start_gateway(_config(mock, None, tmp_path / "single", rps=20, burst=5),
                           name="single.toml")
    alone, refused_alone = _paced([single], 50, 10.0)
    single.stop()
    pair = [start_gateway(_config(mock, redis_server, tmp_path / name, rps=20, burst=5),
                          name=f"{name}.toml") for name in ("a", "b")]
    together, refused_together = _paced(pair, 50, 10.0)
    assert refused_alone > 200 and refused_together > 200, "the load exceeds the limit"
    assert abs(together - alone) <= 0.03 * alone, (together, alone)


def test_a_killed_instance_frees_its_streams_within_the_lease_time(
        mock: MockUpstream, start_gateway: Callable[..., Gateway],
        redis_server: RedisServer, tmp_path: Path) -> None:
    lease = 3.0
    state = f'lease_time = "{int(lease)}s"\n'
    victim = start_gateway(_config(mock, redis_server, tmp_path / "victim", rps=1000,
                                   burst=1000, streams=2, state=state),
                           name="victim.toml", own_group=True)
    survivor = start_gateway(_config(mock, redis_server, tmp_path / "survivor", rps=1000,
                                     burst=1000, streams=2, state=state),
                             name="survivor.toml")
    held = [_open_stream(victim) for _ in range(2)]
    assert [status for _, status in held] == [200, 200]
    refused, status = _open_stream(survivor)
    assert status == 429  # the cap (2) is shared: the victim holds both slots
    refused.close()
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(10)
    killed_at = time.monotonic()
    opened: list[socket.socket] = []

    def slot_free() -> bool:
        sock, got = _open_stream(survivor)
        opened.append(sock)
        return got == 200

    _wait(slot_free, timeout=lease + 3)
    assert time.monotonic() - killed_at <= lease + 1.5
    for sock, _ in held:
        sock.close()
    for sock in opened:
        sock.close()


@pytest.mark.parametrize("policy", ["local", "allow", "deny"])
def test_redis_down_follows_the_policy_and_recovers(
        mock: MockUpstream, start_gateway: Callable[..., Gateway],
        redis_server: RedisServer, tmp_path: Path, policy: str) -> None:
    state = f'on_backend_error = "{policy}"\nretry_after = "200ms"\n'
    gateway = start_gateway(_config(mock, redis_server, tmp_path / policy, rps=1, burst=5,
                                    state=state))
    client = Client(gateway)
    try:
        assert [client.get("/small")[0] for _ in range(7)] == [200] * 5 + [429] * 2
        redis_server.stop()
        statuses = [client.get("/small")[0] for _ in range(8)]
        expected = {"local": [200] * 5 + [429] * 3,  # this host's own (fresh) limit
                    "allow": [200] * 8, "deny": [503] * 8}[policy]
        assert statuses == expected
        redis_server.start()  # empty: no state survives the restart
        time.sleep(0.3)
        # Redis decides again: a fresh burst of 5 (the local table is already spent
        # under "local"), and its key is back in Redis.
        assert [client.get("/small")[0] for _ in range(7)] == [200] * 5 + [429] * 2
        assert b"tat" in redis_server.command("KEYS", "*")
    finally:
        client.close()
        if redis_server.process is None:
            redis_server.start()
    error_log = tmp_path / policy / "error.log"
    _wait(lambda: "shared state backend answers again" in error_log.read_text())
    assert error_log.read_text().count("shared state backend down") == 1  # once, not per request


def test_a_killed_worker_frees_its_streams_at_once(
        mock: MockUpstream, start_gateway: Callable[..., Gateway],
        redis_server: RedisServer, tmp_path: Path) -> None:
    """The master releases a SIGKILLed worker's leases: no wait for lease_time (30 s)."""
    gateway = start_gateway(_config(mock, redis_server, tmp_path / "gw", rps=1000,
                                    burst=1000, streams=2))
    held = [_open_stream(gateway) for _ in range(2)]
    assert [status for _, status in held] == [200, 200]
    refused, status = _open_stream(gateway)
    assert status == 429
    refused.close()
    victims = gateway.workers()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    _wait(lambda: len(gateway.workers()) == 2 and not set(gateway.workers()) & set(victims))
    killed_at = time.monotonic()
    opened: list[socket.socket] = []

    def slot_free() -> bool:
        sock, got = _open_stream(gateway)
        opened.append(sock)
        return got == 200

    _wait(slot_free, timeout=5)
    assert time.monotonic() - killed_at < 5
    for sock in [*(s for s, _ in held), *opened]:
        sock.close()


def test_two_instances_share_a_keys_token_budget(
        mock: MockUpstream, start_gateway: Callable[..., Gateway],
        redis_server: RedisServer, tmp_path: Path) -> None:
    """Alternating between two instances until both refuse: what they admitted together
    fits one budget (each alone would admit a whole budget)."""
    import hashlib

    import httpx

    from .test_budgets import _fresh_minute

    key, budget = "sk-shared-budget", 1000
    digest = hashlib.sha256(key.encode()).hexdigest()
    extra = (f'[models."mock-chat"]\npool = "main"\ndefault_max_tokens = 300\n\n'
             f'[auth]\nkeys = [{{ id = "team", sha256 = "{digest}", '
             f'tokens_per_minute = {budget} }}]\n')
    gateways = []
    metrics_ports = [_free_port(), _free_port()]
    for name, port in zip(("a", "b"), metrics_ports, strict=True):
        prefix = f'[state]\nbackend = "redis"\nurl = "{redis_server.url}"\n' \
                 f'key_prefix = "{tmp_path.name[-40:]}:"\n' \
                 f'[metrics]\nenabled = true\nlisten = "127.0.0.1:{port}"\n'
        config = gateway_config(mock.origin, extra=f'{prefix}{extra}\n[log]\ndir = '
                                f'"{tmp_path / name}"\n', routes='"/v1/*" = "proxy:main"\n')
        gateways.append(start_gateway(config, name=f"{name}.toml"))
    _fresh_minute(20)
    used = 0
    refused = set()
    body = {"model": "mock-chat", "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}]}
    for turn in range(40):
        gateway = gateways[turn % 2]
        reply = httpx.post(f"{gateway.url}/v1/chat/completions", json=body,
                           params={"tokens": "60"}, timeout=10,
                           headers={"authorization": f"Bearer {key}"})
        if reply.status_code == 429:
            assert reply.json()["error"]["type"] == "budget_exceeded"
            refused.add(turn % 2)
            if refused == {0, 1}:
                break
            continue
        assert reply.status_code == 200, reply.text
        used += reply.json()["usage"]["total_tokens"]
        time.sleep(0.25)  # the settle reaches Redis before the next reservation
    assert refused == {0, 1}
    assert budget - 200 <= used <= budget, used
    # Each instance reports what Redis holds (both hosts' usage), not its own share.
    for gateway, port in zip(gateways, metrics_ports, strict=True):
        status = gateway.status()
        assert status["budgets_from"] == "redis"
        assert [(b["key"], b["tokens"]) for b in status["budgets"]] == [("team", used)]
        assert "budgets (from Redis)" in gateway.ctl("status").stdout
        remaining = _samples(port)[("li_budget_remaining",
                                    (("key_id", "team"), ("kind", "tokens")))]
        assert remaining == budget - used
    # Redis gone: budgets_on_error = "local" (the default) admits against this host's
    # own counters, and ctl status shows those, labelled; the gauge shows nothing rather
    # than a number from another source.
    redis_server.stop()
    try:
        reply = httpx.post(f"{gateways[0].url}/v1/chat/completions", json=body,
                           params={"tokens": "60"}, timeout=10,
                           headers={"authorization": f"Bearer {key}"})
        assert reply.status_code == 200, reply.text
        status = gateways[0].status()
        assert status["budgets_from"].startswith("shared memory (Redis unavailable: ")
        assert [(b["key"], b["tokens"]) for b in status["budgets"]] == [
            ("team", reply.json()["usage"]["total_tokens"])]
        assert "this host's own counters" in gateways[0].ctl("status").stdout
        assert ("li_budget_remaining", (("key_id", "team"), ("kind", "tokens"))) \
            not in _samples(metrics_ports[0])
    finally:
        redis_server.start()


def test_a_circuit_opened_on_one_instance_opens_on_the_other(
        start_gateway: Callable[..., Gateway], redis_server: RedisServer,
        tmp_path: Path) -> None:
    """Instance A trips the peer's circuit; instance B, which saw no error, stops
    sending it requests within the poll interval (1 s), for the rest of the open time."""
    from .test_circuit import BREAKER, Peer, _circuits, _get, _trip

    peer = Peer()
    try:
        breaker = BREAKER.replace('open_duration = "2s"', 'open_duration = "5s"')
        upstreams = (f'[upstreams.main]\npeers = ["{peer.origin}"]\n'
                     f'[upstreams.main.circuit_breaker]\n{breaker}')
        gateways = []
        for name in ("a", "b"):
            state = (f'[state]\nbackend = "redis"\nurl = "{redis_server.url}"\n'
                     f'key_prefix = "{tmp_path.name[-40:]}:"\n'
                     f'[log]\ndir = "{tmp_path / name}"\n')
            gateways.append(start_gateway(gateway_config("", upstreams=upstreams, extra=state),
                                          name=f"{name}.toml"))
        a, b = gateways
        peer.mode = "ok"
        assert _get(b.port)[0] == 200
        _trip(a, peer)
        opened_at = time.monotonic()
        _wait(lambda: _circuits(b) == ["open"], timeout=3)
        assert time.monotonic() - opened_at < 2.0
        seen = peer.count()
        assert _get(b.port)[0] == 503
        assert peer.count() == seen
        error_log = tmp_path / "b" / "error.log"
        _wait(lambda: "another gateway instance opened it" in error_log.read_text())
    finally:
        peer.release.set()
        peer.close()


def test_a_reload_does_not_mix_the_generations_leases(
        mock: MockUpstream, start_gateway: Callable[..., Gateway],
        redis_server: RedisServer, tmp_path: Path) -> None:
    """A reload that needs a new shared-memory segment (here: a pool added) gives the
    new workers the slot numbers of the retiring ones. Their leases must still be their
    own: a stream on the retiring worker and two on the new one count as three, and
    when the retiring worker exits the master releases its leases only."""
    gateway = start_gateway(_config(mock, redis_server, tmp_path / "gw", rps=1000,
                                    burst=1000, streams=2).replace("workers = 2",
                                                                   "workers = 1"))
    old = gateway.workers()
    first, status = _open_stream(gateway)  # on the old generation's worker
    assert status == 200
    config = gateway.config_path.read_text()
    gateway.config_path.write_text(config.replace(
        "[upstreams.main]", f'[upstreams.spare]\npeers = ["{mock.origin}"]\n\n[upstreams.main]'))
    result = gateway.ctl("reload")
    assert result.returncode == 0, result.stdout + result.stderr
    _wait(lambda: bool(gateway.workers()) and gateway.workers() != old)
    second, status = _open_stream(gateway)  # on the new generation's worker
    assert status == 200
    third, status = _open_stream(gateway)
    assert status == 429, "first and second hold the 2 streams"
    third.close()
    first.close()  # the old worker drains and exits; the master releases its leases
    _wait(lambda: not {w["pid"] for w in gateway.status()["workers"]} & set(old))
    fourth, status = _open_stream(gateway)
    assert status == 200
    fifth, status = _open_stream(gateway)
    assert status == 429, "second and fourth hold the 2 streams"
    for sock in (second, fourth, fifth):
        sock.close()


def test_ctl_status_polled_while_redis_is_silent_stalls_the_master_once(
        mock: MockUpstream, start_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    """A Redis that accepts and never answers costs the master's loop one deadline
    (4 x [state] timeout, here 1 s) for the first ctl status, not one per request: the
    next ones show the failure at once, and the master keeps answering."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        extra = (f'[state]\nbackend = "redis"\nurl = "redis://127.0.0.1:'
                 f'{silent.getsockname()[1]}"\ntimeout = "250ms"\n'
                 f'budgets_on_error = "deny"\n\n'  # no local counters to show instead
                 f'[auth]\nkeys = [{{ id = "team", sha256 = "{"0" * 64}", '
                 f'tokens_per_minute = 1000 }}]\n')
        gateway = start_gateway(gateway_config(mock.origin, extra=extra))
        started = time.monotonic()
        first = gateway.status()
        assert first["budgets"] == [] and first["budgets_from"] == \
            "unavailable: Redis did not answer in time"
        assert 0.9 < time.monotonic() - started < 3.0
        for _ in range(3):
            started = time.monotonic()
            status = gateway.status()
            assert time.monotonic() - started < 0.5
            assert status["budgets_from"].startswith(
                "unavailable: Redis did not answer in time (asked again in ")
        assert "Redis holds them" in gateway.ctl("status").stdout
