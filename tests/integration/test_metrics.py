"""/metrics on its own listener: Prometheus text that parses and counts what happened."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Gateway, MockUpstream, gateway_config

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, bytes, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body, {k.lower(): v for k, v in response.getheaders()}


def _samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body, headers = _get(port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _started(mock: MockUpstream, start_gateway, port: int, extra: str = "") -> Gateway:
    metrics = f'[metrics]\nenabled = true\nlisten = "127.0.0.1:{port}"\n'
    return start_gateway(gateway_config(mock.origin, extra=metrics + extra))


def test_counters_match_the_requests_sent(mock: MockUpstream, start_gateway) -> None:
    port = _free_port()
    limit = ('[defaults.rate_limit]\nkey = "ip"\nallow_ip_key = true\n'
             'requests_per_sec = 1\nburst = 30\n')
    gateway = _started(mock, start_gateway, port, limit)
    statuses = [_get(gateway.port, "/small")[0] for _ in range(40)]
    assert statuses.count(200) == 30 and statuses.count(429) == 10
    for _ in range(5):
        _get(gateway.port, "/health")
    samples = _samples(port)
    ok = samples[("li_requests_total", (("method", "GET"), ("route", "any_wildcard"),
                                        ("status", "200")))]
    limited = samples[("li_requests_total", (("method", "GET"), ("route", "any_wildcard"),
                                             ("status", "429")))]
    health = samples[("li_requests_total", (("method", "GET"), ("route", "get_health"),
                                            ("status", "200")))]
    assert (ok, limited, health) == (30, 10, 5)
    assert samples[("li_rate_limited_total", (("route", "any_wildcard"),))] == 10
    assert samples[("li_request_duration_seconds_count", (("route", "any_wildcard"),))] == 40
    assert samples[("li_upstream_peer_up", (("peer", mock.origin), ("pool", "main")))] == 1
    assert ("li_upstream_ttfb_seconds_count",
            (("peer", mock.origin.removeprefix("http://")), ("route", "any_wildcard"))) in samples
    assert _get(port, "/other")[0] == 404  # the metrics listener serves nothing else


def test_counts_survive_a_killed_worker_and_dead_gauges_go(mock: MockUpstream,
                                                           start_gateway) -> None:
    port = _free_port()
    gateway = _started(mock, start_gateway, port)
    for _ in range(20):
        _get(gateway.port, "/small")
    victim = gateway.workers()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while victim in gateway.workers() or len(gateway.workers()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    samples = _samples(port)
    total = sum(v for (name, labels), v in samples.items()
                if name == "li_requests_total" and ("status", "200") in labels)
    assert total == 20  # the dead worker's counts are kept
    assert samples[("li_connections", ())] >= 0  # livesum: the dead worker is not counted
