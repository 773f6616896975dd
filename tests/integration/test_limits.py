"""Global rate limits, stream caps and API keys through a real 2-worker gateway.

The limits live in shared memory, so they must hold for the sum of both workers (SPEC §7):
a 50 req/s limit is 50 req/s for the gateway, not 50 per worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from .conftest import Gateway, MockUpstream, gateway_config

pytestmark = pytest.mark.integration


def _limited(mock: MockUpstream, *, rps: int, burst: int, streams: int = 1000,
             key: str = "ip", extra: str = "", bytes_in: str = "8m") -> str:
    allow = "allow_ip_key = true\n" if key == "ip" else ""
    limit = (f'[defaults.rate_limit]\nkey = "{key}"\n{allow}requests_per_sec = {rps}\n'
             f'burst = {burst}\nconcurrent_streams = {streams}\nbytes_in_per_sec = "{bytes_in}"\n'
             f'{extra}')
    return gateway_config(mock.origin, extra=limit)


class Client:
    """A keep-alive HTTP/1.1 client on one connection (http.client)."""

    def __init__(self, gateway: Gateway) -> None:
        self.port = gateway.port
        self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def get(self, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
        try:
            self.connection.request("GET", path, headers=headers or {})
            response = self.connection.getresponse()
            body = response.read()
        except (http.client.HTTPException, OSError):
            self.connection.close()
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            raise
        if response.getheader("connection") == "close":
            self.connection.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body

    def close(self) -> None:
        self.connection.close()


def _hammer(gateway: Gateway, seconds: float, threads: int = 8,
            path: str = "/small") -> tuple[list[float], int]:
    """Send requests as fast as possible; returns (admission times, refused count)."""
    admitted: list[float] = []
    refused = [0]
    errors: list[BaseException] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def run() -> None:
        client = Client(gateway)
        try:
            while time.monotonic() < stop_at:
                status, _, _ = client.get(path)
                with lock:
                    if status == 200:
                        admitted.append(time.monotonic())
                    elif status == 429:
                        refused[0] += 1
                    else:
                        raise AssertionError(f"unexpected status {status}")
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
        finally:
            client.close()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors, errors
    return sorted(admitted), refused[0]


def test_rate_limit_is_exact_across_workers(mock: MockUpstream, start_gateway) -> None:
    gateway = start_gateway(_limited(mock, rps=50, burst=10))
    admitted, refused = _hammer(gateway, 10.0)
    span = admitted[-1] - admitted[0]
    expected = 10 + 50 * span
    assert refused > 1000, "the load must exceed the limit for the test to mean anything"
    assert abs(len(admitted) - expected) <= 0.03 * expected, (len(admitted), expected)


def test_healthcheck_is_exempt_from_the_default_rate_limit(mock: MockUpstream,
                                                           start_gateway) -> None:
    """A load balancer probing GET /health never gets 429 from [defaults.rate_limit];
    the proxied routes keep the limit."""
    gateway = start_gateway(_limited(mock, rps=1, burst=2))
    client = Client(gateway)
    try:
        health = [client.get("/health")[0] for _ in range(30)]
        proxied = [client.get("/small")[0] for _ in range(10)]
    finally:
        client.close()
    assert health == [200] * 30
    assert proxied.count(429) >= 7, proxied


def test_retry_after_when_honoured_succeeds(mock: MockUpstream, start_gateway) -> None:
    gateway = start_gateway(_limited(mock, rps=1, burst=2))
    client = Client(gateway)
    assert [client.get("/small")[0] for _ in range(2)] == [200, 200]
    status, headers, body = client.get("/small")
    assert status == 429
    assert b"rate limit" in body and b'"request_id"' in body
    wait = int(headers["retry-after"])
    assert 1 <= wait <= 2
    time.sleep(wait)
    assert client.get("/small")[0] == 200
    client.close()


def _open_stream(gateway: Gateway) -> tuple[socket.socket, int]:
    """Start a streaming completion the upstream never finishes; returns (socket, status)."""
    payload = b'{"model":"m","stream":true,"messages":[]}'
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions?stall_after=1 HTTP/1.1\r\nHost: t\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(payload), payload))
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(65536)
        if not data:
            break
        head += data
    return sock, int(head.split(b" ", 2)[1]) if head else 0


def _streams_admitted(gateway: Gateway, attempts: int) -> tuple[list[socket.socket], int]:
    opened: list[socket.socket] = []
    admitted = 0
    for _ in range(attempts):
        sock, status = _open_stream(gateway)
        opened.append(sock)
        if status == 200:
            admitted += 1
        else:
            assert status == 429, status
    return opened, admitted


def _close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def test_concurrent_stream_cap_is_exact(mock: MockUpstream, start_gateway) -> None:
    gateway = start_gateway(_limited(mock, rps=1000, burst=1000, streams=3))
    opened, admitted = _streams_admitted(gateway, 5)
    assert admitted == 3
    _close_all(opened[:1])  # one stream ends: one slot frees up
    time.sleep(0.5)
    more, admitted = _streams_admitted(gateway, 2)
    assert admitted == 1
    _close_all(opened[1:] + more)


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    give_up = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < give_up, "condition not reached"
        time.sleep(0.02)


def test_killed_workers_leak_nothing_and_block_nobody(mock: MockUpstream,
                                                       start_gateway) -> None:
    gateway = start_gateway(_limited(mock, rps=10_000, burst=10_000, streams=4))
    stalls: list[float] = []
    stop = threading.Event()

    def background() -> None:
        client = Client(gateway)
        last = time.monotonic()
        while not stop.is_set():
            # A request on the killed worker's connection fails; the next one reconnects.
            with contextlib.suppress(http.client.HTTPException, OSError):
                client.get("/small")
            now = time.monotonic()
            stalls.append(now - last)
            last = now
        client.close()

    load = threading.Thread(target=background)
    load.start()
    rng = random.Random(4)
    try:
        for _ in range(20):
            workers = gateway.workers()
            held, _ = _streams_admitted(gateway, 3)  # spread over both workers
            time.sleep(rng.uniform(1.0, 1.3))  # workers older than the crash-loop window
            victim = rng.choice(workers)
            os.kill(victim, signal.SIGKILL)
            _wait(lambda v=victim: len(gateway.workers()) == 2
                  and v not in gateway.workers())  # type: ignore[misc]
            _close_all(held)
    finally:
        stop.set()
        load.join()
    assert max(stalls) < 3.0, "a live worker was blocked"
    time.sleep(0.5)
    # No stream slot leaked: exactly the cap can be opened again.
    opened, admitted = _streams_admitted(gateway, 6)
    assert admitted == 4
    _close_all(opened)
    assert "exited (killed by SIGKILL)" in gateway.output.text()
    assert "giving up" not in gateway.output.text()


def test_limits_stay_exact_after_a_worker_is_killed(mock: MockUpstream,
                                                     start_gateway) -> None:
    gateway = start_gateway(_limited(mock, rps=40, burst=5))
    first = gateway.workers()[0]
    os.kill(first, signal.SIGKILL)
    _wait(lambda: len(gateway.workers()) == 2 and first not in gateway.workers())
    time.sleep(1.0)  # the burst refills
    admitted, _ = _hammer(gateway, 4.0)
    span = admitted[-1] - admitted[0]
    expected = 5 + 40 * span
    assert abs(len(admitted) - expected) <= 0.05 * expected, (len(admitted), expected)


def test_api_keys_authenticate_and_key_the_limit(mock: MockUpstream, start_gateway) -> None:
    def digest(raw: str) -> str:
        result = subprocess.run([sys.executable, "-m", "li_httpd.supervisor.cli", "hash-key"],
                                input=raw + "\n", capture_output=True, text=True, check=True)
        return result.stdout.strip()

    alice, bob = digest("sk-alice-0123456789"), digest("sk-bob-9876543210")
    auth = (f'[auth]\nkeys = [{{ id = "alice", sha256 = "{alice}" }}, '
            f'{{ id = "bob", sha256 = "{bob}" }}]\n')
    config = _limited(mock, rps=1, burst=2, key="api_key")
    config = config.replace("[routes]", auth + "\n[routes]")
    gateway = start_gateway(config)
    client = Client(gateway)
    status, headers, _ = client.get("/small")
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="li-httpd"'
    status, headers, _ = client.get("/small", {"authorization": "Bearer sk-wrong"})
    assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
    as_alice = {"authorization": "Bearer sk-alice-0123456789"}
    as_bob = {"authorization": "Bearer sk-bob-9876543210"}
    assert [client.get("/small", as_alice)[0] for _ in range(3)] == [200, 200, 429]
    assert client.get("/small", as_bob)[0] == 200  # bob has a budget of his own
    assert client.get("/health")[0] == 200  # static routes need no key
    client.close()
    assert "sk-alice" not in gateway.output.text()


def test_new_keys_cannot_evict_a_limited_key(mock: MockUpstream, start_gateway) -> None:
    """Two hundred other valid keys flood a 16-entry table: the limited key keeps its
    state (keys a client merely invents all share the anonymous budget, so a flood
    needs real keys)."""
    def digest(raw: str) -> str:
        return hashlib.sha256(raw.encode()).hexdigest()

    names = ["victim"] + [f"flood-{i}" for i in range(200)]
    keys = ", ".join(f'{{ id = "{name}", sha256 = "{digest("sk-" + name)}" }}'
                     for name in names)
    config = _limited(mock, rps=1, burst=1, key="api_key")
    config = config.replace("[defaults.rate_limit]",
                            f'[auth]\nkeys = [{keys}]\n\n[limits]\nmax_rate_keys = 16\n\n'
                            f'[defaults.rate_limit]')
    gateway = start_gateway(config)
    client = Client(gateway)

    def as_key(name: str) -> dict[str, str]:
        return {"authorization": f"Bearer sk-{name}"}

    assert client.get("/small", as_key("victim"))[0] == 200
    assert client.get("/small", as_key("victim"))[0] == 429
    statuses = [client.get("/small", as_key(f"flood-{i}"))[0] for i in range(200)]
    assert statuses.count(429) > 0  # the table filled up: new keys are refused
    # The flood could not reset the victim's state: it is still limited.
    assert client.get("/small", as_key("victim"))[0] == 429
    client.close()


def test_request_body_byte_rate_is_throttled(mock: MockUpstream, start_gateway) -> None:
    gateway = start_gateway(_limited(mock, rps=100, burst=100, bytes_in="256k"))
    body = os.urandom(768 * 1024)
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    connection.request("POST", "/echo", body=body)
    response = connection.getresponse()
    answer = response.read()
    elapsed = time.monotonic() - started
    assert response.status == 200 and b'"body_bytes":786432' in answer.replace(b" ", b"")
    # 768 KiB at 256 KiB/s with one second of burst needs about two seconds.
    assert elapsed > 1.5
