"""/metrics on its own listener: Prometheus text that parses and counts what happened."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

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


def _samples(port: int) -> Samples:
    status, body, headers = _get(port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    found: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _family(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (sample, labels), value in samples.items() if sample == name}


def _eventually(port: int, ready: Callable[[Samples], bool], timeout: float = 10) -> Samples:
    """Scrape until ``ready`` holds (a closed connection is counted down when its worker
    notices the close, just after the client's last read), failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    samples = _samples(port)
    while not ready(samples):
        assert time.monotonic() < deadline, f"metrics never got there: {samples}"
        time.sleep(0.05)
        samples = _samples(port)
    return samples


def _owner(connection: http.client.HTTPConnection, gateway_port: int,
           pids: list[int]) -> int:
    """The worker holding the server side of a client connection (/proc/net/tcp names
    the socket inode, /proc/PID/fd who has it open)."""
    assert connection.sock is not None
    client_port = connection.sock.getsockname()[1]
    local, remote = f"0100007F:{gateway_port:04X}", f"0100007F:{client_port:04X}"
    inodes = [fields[9] for fields in (line.split() for line in
                                       Path("/proc/net/tcp").read_text().splitlines()[1:])
              if fields[1] == local and fields[2] == remote]
    assert len(inodes) == 1, inodes
    owners = [pid for pid in pids for fd in os.listdir(f"/proc/{pid}/fd")
              if _readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inodes[0]}]"]
    assert len(owners) == 1, owners
    return owners[0]


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except FileNotFoundError:  # an fd closed while we listed them
        return ""


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
    assert len(_family(samples, "li_requests_total")) == 3  # no other label set
    assert _family(samples, "li_rate_limited_total") == {(("route", "any_wildcard"),): 10}
    assert _family(samples, "li_request_duration_seconds_count") == {
        (("route", "any_wildcard"),): 40, (("route", "get_health"),): 5}
    # Only the 30 proxied requests reached the upstream (429s and /health never do).
    assert _family(samples, "li_upstream_ttfb_seconds_count") == {
        (("peer", mock.origin.removeprefix("http://")), ("route", "any_wildcard")): 30}
    assert _family(samples, "li_upstream_errors_total") == {}
    assert _family(samples, "li_upstream_peer_up") == {
        (("peer", mock.origin), ("pool", "main")): 1}
    assert _family(samples, "li_upstream_peer_active") == {
        (("peer", mock.origin), ("pool", "main")): 0}
    assert _eventually(port, lambda s: s[("li_connections", ())] == 0)  # all were closed
    assert _get(port, "/other")[0] == 404  # the metrics listener serves nothing else


def test_counts_survive_a_killed_worker_and_dead_gauges_go(mock: MockUpstream,
                                                           start_gateway) -> None:
    port = _free_port()
    gateway = _started(mock, start_gateway, port)
    for _ in range(20):
        _get(gateway.port, "/small")
    held = []  # idle keep-alive connections, each answered once so its worker counts it
    for _ in range(6):
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        connection.request("GET", "/health")
        assert connection.getresponse().read() is not None
        held.append(connection)
    workers = gateway.workers()
    owners = [_owner(connection, gateway.port, workers) for connection in held]
    victim = owners[0]
    _eventually(port, lambda s: s[("li_connections", ())] == len(held))
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while victim in gateway.workers() or len(gateway.workers()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    survivors = len(held) - owners.count(victim)
    # livesum: the dead worker's open connections are no longer counted
    samples = _eventually(port, lambda s: s[("li_connections", ())] == survivors)
    assert samples[("li_connections", ())] == survivors
    # the dead worker's counters are kept
    assert _family(samples, "li_requests_total") == {
        (("method", "GET"), ("route", "any_wildcard"), ("status", "200")): 20,
        (("method", "GET"), ("route", "get_health"), ("status", "200")): len(held)}
    for connection in held:
        connection.close()
    _eventually(port, lambda s: s[("li_connections", ())] == 0)


def test_token_and_cost_counters(mock: MockUpstream, start_gateway) -> None:
    port = _free_port()
    catalog = ('[models."mock-chat"]\npool = "main"\n'
               'price = { input = 1.0, output = 2.0, cache_read = 0.5 }\n')
    gateway = _started(mock, start_gateway, port, catalog)
    for model in ("mock-chat", "mock-chat", "unlisted-model"):
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        body = ('{"model":"' + model
                + '","messages":[{"role":"user","content":"one two three"}]}')
        connection.request("POST", "/v1/chat/completions?tokens=4&cached_tokens=1", body,
                           {"content-type": "application/json"})
        assert connection.getresponse().read()
        connection.close()
    samples = _eventually(port, lambda s: len(_family(s, "li_tokens_total")) == 6)
    tokens = {(dict(labels)["model"], dict(labels)["kind"]): value
              for labels, value in _family(samples, "li_tokens_total").items()}
    assert tokens == {("mock-chat", "input"): 6, ("mock-chat", "output"): 8,
                      ("mock-chat", "cache_read"): 2, ("other", "input"): 3,
                      ("other", "output"): 4, ("other", "cache_read"): 1}
    cost = _family(samples, "li_cost_usd_total")
    assert cost == {(("model", "mock-chat"), ("route", "any_wildcard")):
                    pytest.approx((6 * 1.0 + 8 * 2.0 + 2 * 0.5) / 1e6)}


def test_censor_hit_counter(mock: MockUpstream, start_gateway) -> None:
    port = _free_port()
    gateway = _started(mock, start_gateway, port, '[leak_censor]\nenabled = true\n'
                       '[defaults.leak_censor]\njson_deny_paths = ["$.usage"]\n')
    secret = "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2
    for _ in range(2):
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        connection.request("POST", f"/v1/chat/completions?body_secret={secret}",
                           '{"model":"m","messages":[]}', {"content-type": "application/json"})
        body = connection.getresponse().read()
        assert secret.encode() not in body and b"[REDACTED:github_token]" in body
        connection.close()
    samples = _eventually(port, lambda s: len(_family(s, "li_censor_hits_total")) == 2)
    assert _family(samples, "li_censor_hits_total") == {
        (("kind", "detector"), ("name", "github_token"), ("route", "any_wildcard")): 2,
        (("kind", "path"), ("name", "$.usage"), ("route", "any_wildcard")): 2}
