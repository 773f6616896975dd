"""Load balancing and passive health across a real 2-worker gateway and 3 mock peers."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable

import pytest

from .conftest import MOCK_LINE, MockUpstream, _spawn, cli_command, gateway_config

pytestmark = pytest.mark.integration


def _pool(mocks: list[MockUpstream], extra: str = "") -> str:
    peers = ", ".join(f'"{m.origin}"' for m in mocks)
    return f"[upstreams.main]\npeers = [{peers}]\n{extra}"


def _requests(mock: MockUpstream) -> int:
    """Requests the mock served so far, not counting this /stats call itself."""
    return mock.stats()["requests"] - 1


def _send(port: int, count: int, threads: int, path: str = "/small") -> list[int]:
    statuses: list[int] = []
    lock = threading.Lock()
    per_thread = count // threads

    def run() -> None:
        # New connection per request: spreads the load over both workers.
        for _ in range(per_thread):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            connection.request("GET", path, headers={"connection": "close"})
            status = connection.getresponse().status
            connection.close()
            with lock:
                statuses.append(status)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return statuses


def test_round_robin_is_even_across_workers(start_mock: Callable[..., MockUpstream],
                                            start_gateway) -> None:
    mocks = [start_mock() for _ in range(3)]
    gateway = start_gateway(gateway_config("", upstreams=_pool(mocks)))
    before = [_requests(m) + 1 for m in mocks]  # + the /stats call just made
    statuses = _send(gateway.port, 600, threads=6)
    assert statuses == [200] * 600
    shares = [_requests(m) - b for m, b in zip(mocks, before, strict=True)]
    assert sum(shares) == 600
    for share in shares:
        assert abs(share - 200) <= 10, shares  # ±5%


def test_weights_shape_the_share(start_mock: Callable[..., MockUpstream],
                                 start_gateway) -> None:
    mocks = [start_mock() for _ in range(2)]
    pool = (f'[upstreams.main]\npeers = [{{ url = "{mocks[0].origin}", weight = 3 }}, '
            f'{{ url = "{mocks[1].origin}", weight = 1 }}]\n')
    gateway = start_gateway(gateway_config("", upstreams=pool))
    before = [_requests(m) + 1 for m in mocks]  # + the /stats call just made
    _send(gateway.port, 400, threads=4)
    heavy, light = (_requests(m) - b for m, b in zip(mocks, before, strict=True))
    assert abs(heavy - 300) <= 15 and abs(light - 100) <= 15, (heavy, light)


def test_least_conn_steers_away_from_a_slow_peer(start_mock: Callable[..., MockUpstream],
                                                 start_gateway) -> None:
    fast = [start_mock() for _ in range(2)]
    slow = start_mock("--default", "ttfb_ms=300")
    mocks = [*fast, slow]
    gateway = start_gateway(gateway_config("", upstreams=_pool(mocks,
                                                               'balance = "least_conn"\n')))
    before = [_requests(m) + 1 for m in mocks]  # + the /stats call just made
    statuses = _send(gateway.port, 240, threads=12)
    assert statuses == [200] * 240
    shares = [_requests(m) - b for m, b in zip(mocks, before, strict=True)]
    # Round robin would give the slow peer 80; least_conn keeps it far below.
    assert shares[2] < 40, shares


def test_dead_peer_is_skipped_then_comes_back(start_mock: Callable[..., MockUpstream],
                                             start_gateway) -> None:
    mocks = [start_mock() for _ in range(3)]
    victim = mocks[1]
    port = victim.port
    pool = _pool(mocks, 'max_fails = 2\nfail_timeout = "2s"\nmax_retries = 2\n')
    gateway = start_gateway(gateway_config("", upstreams=pool))
    assert _send(gateway.port, 30, threads=3) == [200] * 30
    victim.stop()
    # GETs are idempotent: the failed attempts are retried on live peers, unseen.
    assert _send(gateway.port, 60, threads=3) == [200] * 60
    popen, lines, _ = _spawn(cli_command("mock-upstream", "--port", str(port)), MOCK_LINE)
    revived = MockUpstream(popen, f"http://127.0.0.1:{port}", lines)
    try:
        time.sleep(2.5)  # fail_timeout passes: the peer is tried again
        assert _send(gateway.port, 60, threads=3) == [200] * 60
        assert _requests(revived) >= 10
    finally:
        revived.stop()


def test_all_peers_down_answers_503_with_retry_after(
        start_mock: Callable[..., MockUpstream], start_gateway) -> None:
    """Once every peer is down the gateway answers at once, without trying a peer: 503
    with Retry-After, the seconds until the first peer is tried again."""
    mocks = [start_mock() for _ in range(2)]
    pool = _pool(mocks, 'max_fails = 1\nfail_timeout = "30s"\nmax_retries = 1\n')
    gateway = start_gateway(gateway_config("", upstreams=pool))
    for mock in mocks:
        mock.stop()
    first = _send(gateway.port, 4, threads=1)  # marks both down
    assert set(first) <= {502, 503}
    started = time.monotonic()
    statuses = _send(gateway.port, 10, threads=1)
    assert statuses == [503] * 10
    assert time.monotonic() - started < 2.0
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
    connection.request("GET", "/small")
    response = connection.getresponse()
    assert b"all upstream peers are down" in response.read()
    assert 1 <= int(response.getheader("retry-after")) <= 30


def test_a_slow_model_is_not_marked_down_by_first_byte_timeouts(
        start_mock: Callable[..., MockUpstream], start_gateway) -> None:
    """First-byte timeouts do not count against a peer by default: a single-peer pool
    whose model is slow answers 504 for the slow requests and keeps serving the rest.
    With ``health_failures`` naming ``ttfb_timeout`` the same timeouts take it down."""
    for counts, after in ((False, 200), (True, 503)):
        mock = start_mock()
        extra = ', "ttfb_timeout"' if counts else ""
        pool = (f'[upstreams.main]\npeers = ["{mock.origin}"]\nmax_fails = 2\n'
                f'fail_timeout = "30s"\nmax_retries = 0\n'
                f'health_failures = ["connect", "reset", "malformed", "5xx"{extra}]\n')
        config = gateway_config("", upstreams=pool).replace(
            "[routes]", '[defaults.timeouts]\nttfb_timeout = "1s"\n\n[routes]')
        gateway = start_gateway(config, name=f"slow-{counts}.toml")
        with gateway.client() as client:
            for _ in range(2):  # max_fails
                slow = client.post("/v1/chat/completions?ttfb_ms=1500",
                                   json={"model": "m", "messages": []})
                assert slow.status_code == 504
            assert client.get("/small").status_code == after
        gateway.stop()
        mock.stop()


def test_post_is_not_replayed_after_it_may_have_run(start_mock: Callable[..., MockUpstream],
                                                    start_gateway) -> None:
    """A POST whose upstream fails mid-response is not retried (it may have run)."""
    flaky = start_mock("--default", "close_after=1")
    good = start_mock()
    pool = _pool([flaky, good], "max_retries = 2\n")
    gateway = start_gateway(gateway_config("", upstreams=pool))
    before_good = _requests(good) + 1  # the previous /stats call
    results = []
    for _ in range(4):
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        connection.request("POST", "/v1/chat/completions",
                           body=b'{"model":"m","stream":true,"messages":[]}',
                           headers={"content-type": "application/json"})
        try:
            response = connection.getresponse()
            body = response.read()
            # A stream that broke after it started ends with the gateway's error event.
            results.append(-1 if b"event: error\n" in body else response.status)
        except (http.client.HTTPException, OSError):
            results.append(-1)  # the stream broke after it started: never replayed
        connection.close()
    assert _requests(good) - before_good == results.count(200)
