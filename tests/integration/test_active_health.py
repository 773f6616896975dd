"""Active health through a real 2-worker gateway: the health actor probes scripted peers
whose /ready and /live answers the test switches, and the workers route only to ready
peers; the actor survives SIGKILL and reloads without losing what it knew."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Gateway, RawServer, gateway_config, read_request

pytestmark = pytest.mark.integration

INTERVAL = 0.2


class Backend(RawServer):
    """A model server: ``GET /ready`` answers 200 once ``ready`` is set (503 before),
    ``GET /live`` 200 while ``live``; other requests are counted and answered 200 with
    the backend's name. ``GET /ready-slow`` never answers."""

    def __init__(self, name: str, *, ready: bool = True, live: bool = True) -> None:
        self.name = name
        self.ready = ready
        self.live = live
        self.served = 0
        self.probes = 0
        self._lock = threading.Lock()
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        pending = b""
        with conn:
            while (request := read_request(conn, pending)) is not None:
                head, _, pending = request
                path = head.split(b" ")[1]
                if path in (b"/ready", b"/live", b"/ready-slow"):
                    with self._lock:
                        self.probes += 1
                    if path == b"/ready-slow":
                        conn.recv(1)  # until the prober gives up and closes
                        return
                    ok = self.ready if path == b"/ready" else self.live
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n" if ok else
                                 b"HTTP/1.1 503 Loading\r\ncontent-length: 0\r\n\r\n")
                    return
                with self._lock:
                    self.served += 1
                body = self.name.encode()
                try:
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(body), body))
                except OSError:
                    return


@pytest.fixture
def backends() -> Iterator[Callable[..., Backend]]:
    made: list[Backend] = []

    def make(name: str, **kwargs: bool) -> Backend:
        backend = Backend(name, **kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


def _config(peers: list[Backend], *, balance: str = "round_robin", rise: int = 2,
            fall: int = 1, interval: str = "200ms", timeout: str = "100ms",
            extra: str = "") -> str:
    listed = ", ".join(f'"{p.origin}"' for p in peers)
    pool = (f'[upstreams.main]\npeers = [{listed}]\nbalance = "{balance}"\nmax_fails = 0\n'
            f'[upstreams.main.health_check]\nready = "/ready"\nlive = "/live"\n'
            f'interval = "{interval}"\ntimeout = "{timeout}"\nrise = {rise}\nfall = {fall}\n')
    return gateway_config("", upstreams=pool, extra=extra)


def _peers(gateway: Gateway) -> dict[str, dict[str, Any]]:
    return {p["peer"]: p for p in gateway.status()["upstreams"]}


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``condition`` held (polled every 20 ms)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.02)
    return time.monotonic() - start


def _states(gateway: Gateway) -> dict[str, tuple[str, str]]:
    return {url: (p["ready"], p["live"]) for url, p in _peers(gateway).items()}


def _send(gateway: Gateway, count: int) -> list[tuple[int, str]]:
    """``count`` requests on fresh connections (both workers serve them)."""
    out = []
    for _ in range(count):
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        connection.request("GET", "/v1/x", headers={"connection": "close"})
        response = connection.getresponse()
        out.append((response.status, response.read().decode()))
        connection.close()
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gauges(port: int, labels: tuple[tuple[str, str], ...]) -> tuple[float, float]:
    """(li_upstream_peer_ready, li_upstream_peer_live) of one peer."""
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if tuple(sorted(sample.labels.items())) == labels:
                found[sample.name] = sample.value
    return found["li_upstream_peer_ready"], found["li_upstream_peer_live"]


def _health_actor(gateway: Gateway) -> dict[str, Any]:
    return next(a for a in gateway.status()["actors"] if a["name"] == "health")


@pytest.mark.parametrize("balance", ["round_robin", "least_conn"])
def test_only_ready_peers_get_traffic(backends: Callable[..., Backend], start_gateway,
                                      balance: str) -> None:
    up, loading = backends("up"), backends("loading", ready=False)
    gateway = start_gateway(_config([up, loading], balance=balance, rise=2, fall=1))
    _wait_for(lambda: _states(gateway) == {up.origin: ("ready", "live"),
                                           loading.origin: ("not_ready", "live")},
              5, "the first probe round")
    # Live but not ready (its model is loading): no traffic at all.
    assert _send(gateway, 20) == [(200, "up")] * 20
    assert loading.served == 0

    # Ready again after `rise` (2) successful probes: it shares the traffic.
    loading.ready = True
    took = _wait_for(lambda: _states(gateway)[loading.origin][0] == "ready", 5, "rise")
    assert took >= INTERVAL * 0.9  # two probes, one interval apart
    assert {body for _, body in _send(gateway, 20)} == {"up", "loading"}

    # A peer whose /ready fails is out within one interval (fall = 1).
    up.ready = False
    took = _wait_for(lambda: _states(gateway)[up.origin][0] == "not_ready", 5, "fall")
    assert took < INTERVAL + 0.1 + 0.3, took  # interval + timeout + slack for a busy box
    served = up.served
    assert _send(gateway, 10) == [(200, "loading")] * 10
    assert up.served == served
    text = gateway.output.text()
    assert f"health: upstream peer {up.origin} (pool main) ready -> not_ready (status 503; " \
           "live: status 200)" in text
    assert f"health: upstream peer {loading.origin} (pool main) not_ready -> ready" in text


def test_one_peer_not_ready_answers_503_then_serves(backends: Callable[..., Backend],
                                                   start_gateway) -> None:
    only = backends("only", ready=False, live=False)
    metrics = _free_port()
    gateway = start_gateway(_config([only], rise=1, extra=f'[metrics]\nenabled = true\n'
                                    f'listen = "127.0.0.1:{metrics}"\n'))
    _wait_for(lambda: _states(gateway)[only.origin] == ("not_ready", "not_live"), 5, "probe")
    response = httpx.get(f"{gateway.url}/v1/x", timeout=5)
    assert response.status_code == 503
    assert "all upstream peers are down" in response.text
    assert response.headers["retry-after"] == "1"  # the next probe round may bring one
    assert only.served == 0
    only.ready = only.live = True
    _wait_for(lambda: _states(gateway)[only.origin] == ("ready", "live"), 5, "ready")
    assert _send(gateway, 4) == [(200, "only")] * 4
    labels = (("peer", only.origin), ("pool", "main"))
    assert _gauges(metrics, labels) == (1.0, 1.0)
    only.ready = only.live = False
    _wait_for(lambda: _gauges(metrics, labels) == (0.0, 0.0), 5, "the gauges")
    row = next(line for line in gateway.ctl("status").stdout.splitlines()
               if only.origin in line)
    assert row.split()[2:5] == ["up", "not_ready", "not_live"], row


def test_a_killed_health_actor_keeps_the_state_and_is_restarted(
        backends: Callable[..., Backend], start_gateway) -> None:
    up, loading = backends("up"), backends("loading", ready=False)
    gateway = start_gateway(_config([up, loading], rise=1, fall=1))
    _wait_for(lambda: _states(gateway)[loading.origin][0] == "not_ready"
              and _states(gateway)[up.origin][0] == "ready", 5, "the first round")
    actor = _health_actor(gateway)
    assert actor["state"] == "running" and actor["pid"] > 0
    os.kill(actor["pid"], signal.SIGKILL)
    # While it is gone (the master restarts it after 0.5 s) the last states stay in
    # shared memory and the workers go by them, though the peer is ready by now (with
    # rise = 1 a running actor would have seen that within one 0.2 s interval).
    loading.ready = True
    time.sleep(0.25)
    assert _states(gateway) == {up.origin: ("ready", "live"),
                                loading.origin: ("not_ready", "live")}
    assert _send(gateway, 4) == [(200, "up")] * 4
    _wait_for(lambda: _health_actor(gateway)["pid"] not in (0, actor["pid"]), 10,
              "the restart")
    assert "health actor exited (killed by SIGKILL)" in gateway.output.text()
    # The new actor probes at once: the peer it could not see recover is back.
    _wait_for(lambda: _states(gateway)[loading.origin][0] == "ready", 5, "probing resumed")
    assert {body for _, body in _send(gateway, 10)} == {"up", "loading"}
    new = _health_actor(gateway)
    assert new["state"] == "running" and new["pid"] > 0


def test_reload_keeps_the_health_state(backends: Callable[..., Backend], start_gateway,
                                       ) -> None:
    up, loading = backends("up"), backends("loading", ready=False)
    gateway = start_gateway(_config([up, loading], rise=1, fall=1))
    _wait_for(lambda: _states(gateway)[up.origin][0] == "ready"
              and _states(gateway)[loading.origin][0] == "not_ready", 5, "the first round")
    # The new config adds a peer (a new shared segment, which inherits the states) and
    # probes a path that never answers (4 s timeout): for the first 4 s after the reload
    # the workers can only go by what was carried over.
    extra = backends("extra")
    gateway.config_path.write_text(gateway.config_path.read_text().replace(
        f'peers = ["{up.origin}", "{loading.origin}"]',
        f'peers = ["{up.origin}", "{loading.origin}", "{extra.origin}"]').replace(
        'ready = "/ready"', 'ready = "/ready-slow"').replace(
        'interval = "200ms"\ntimeout = "100ms"', 'interval = "10s"\ntimeout = "4s"'))
    result = gateway.ctl("reload")
    assert result.returncode == 0, result.stderr
    status = gateway.status()
    assert status["generation"] == 1
    states = _states(gateway)
    assert states[up.origin][0] == "ready"
    assert states[loading.origin][0] == "not_ready"
    assert states[extra.origin][0] == "unknown"  # never probed yet: no traffic
    assert _send(gateway, 10) == [(200, "up")] * 10
    assert loading.served == extra.served == 0
    actor = _health_actor(gateway)
    assert actor["generation"] == 1 and actor["pid"] > 0
    assert extra.probes > 0  # the new generation's actor probes the new peer


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("probed", [True, False])
def test_the_master_sleeps(backends: Callable[..., Backend], start_gateway,
                           probed: bool) -> None:
    """Supervising the health actor (or having none to supervise) adds no busy wakeups
    to the master's loop: over 1.5 s it uses next to no CPU."""
    peer = backends("peer")
    config = _config([peer]) if probed else gateway_config(peer.origin)
    gateway = start_gateway(config)
    if probed:
        _wait_for(lambda: _states(gateway)[peer.origin][0] == "ready", 5, "the first probe")
    else:
        assert _health_actor(gateway)["state"] == "off"
    before = _cpu_seconds(gateway.pid)
    time.sleep(1.5)
    # A loop that wakes every millisecond costs about 0.07 s here; an idle one 0 to 1 tick.
    assert _cpu_seconds(gateway.pid) - before < 0.04
