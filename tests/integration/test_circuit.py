"""The circuit breaker through a real 2-worker gateway and a scripted peer.

The peer counts the requests it gets and answers as the test says at that moment (500,
200, or a 200 held back until the test releases it). Requests go over a new connection
each, so both workers serve them; the circuit lives in shared memory, so what one
worker learns every worker obeys.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from .conftest import Gateway, RawServer, gateway_config, read_request

pytestmark = pytest.mark.integration

BREAKER = ('window = "3s"\nmin_requests = 4\nerror_percent = 50\nopen_duration = "2s"\n'
           'probe_timeout = "60s"\n')


class Peer(RawServer):
    """Answers every request with ``mode``: ``fail`` (500), ``ok`` (200) or ``hold`` (200
    once :attr:`release` is set)."""

    def __init__(self) -> None:
        self.mode = "fail"
        self.requests = 0
        self.release = threading.Event()
        self._lock = threading.Lock()
        super().__init__()

    def count(self) -> int:
        with self._lock:
            return self.requests

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        pending = b""
        with conn:
            while (request := read_request(conn, pending)) is not None:
                pending = request[2]
                with self._lock:
                    self.requests += 1
                mode = self.mode
                if mode == "hold":
                    self.release.wait(30)
                status, body = (500, b"down") if mode == "fail" else (200, b"ok")
                try:
                    conn.sendall(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%s"
                                 % (status, len(body), body))
                except OSError:
                    return


@pytest.fixture
def make_peer() -> Iterator[Callable[[], Peer]]:
    peers: list[Peer] = []

    def make() -> Peer:
        peers.append(Peer())
        return peers[-1]

    yield make
    for peer in peers:
        peer.release.set()
        peer.close()


def _get(port: int) -> tuple[int, str | None]:
    """One request on a new connection: (status, Retry-After)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request("GET", "/x", headers={"connection": "close"})
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("retry-after")
    finally:
        connection.close()


def _circuits(gateway: Gateway) -> list[str]:
    return [row["circuit"] for row in gateway.status()["upstreams"]]


def _trip(gateway: Gateway, peer: Peer) -> None:
    """Send failing requests until the gateway stops passing them on."""
    peer.mode = "fail"
    for _ in range(20):
        status, _ = _get(gateway.port)
        if status == 503:
            return
        assert status == 500
    raise AssertionError("the circuit did not open within 20 failing requests")


BREAKER_HEAD = "[upstreams.main.circuit_breaker]\n"


def _pool(*peers: Peer, balance: str = "round_robin") -> str:
    urls = ", ".join(f'"{peer.origin}"' for peer in peers)
    return (f'[upstreams.main]\npeers = [{urls}]\nbalance = "{balance}"\n'
            f'{BREAKER_HEAD}{BREAKER}')


def test_errors_open_the_circuit_for_every_worker_and_a_probe_closes_it(
        make_peer: Callable[[], Peer], start_gateway: Callable[..., Gateway]) -> None:
    peer = make_peer()
    metrics_port = _free_port()
    gateway = start_gateway(gateway_config(
        "", upstreams=_pool(peer),
        extra=f'[metrics]\nenabled = true\nlisten = "127.0.0.1:{metrics_port}"\n'))
    assert _circuits(gateway) == ["closed"]
    _trip(gateway, peer)
    assert 4 <= peer.count() <= 6  # min_requests, and the few that were in flight
    assert _circuits(gateway) == ["open"]
    seen = peer.count()
    stop = time.monotonic() + 1.5  # well within the open time (2 s)
    answers = [_get(gateway.port)]
    while len(answers) < 30 and time.monotonic() < stop:
        answers.append(_get(gateway.port))
    assert peer.count() == seen, "an open circuit let a request through"
    assert all(status == 503 and retry is not None and 1 <= int(retry) <= 2
               for status, retry in answers), answers
    # Exactly one worker made the transition, and said so once.
    _wait_for(lambda: "upstream circuit open" in _error_log(gateway), 5)
    assert _error_log(gateway).count("upstream circuit open") == 1, _error_log(gateway)
    metrics = _scrape(metrics_port)
    assert f'li_upstream_circuit_state{{peer="{peer.origin}",pool="main",state="open"}} 1.0' \
        in metrics or 'state="half_open"} 1.0' in metrics, metrics
    assert f'li_upstream_circuit_transitions_total{{peer="{peer.origin}",pool="main"}} 1.0' \
        in metrics

    # The peer recovers: after the open time one probe goes through and closes it.
    peer.mode = "ok"
    _wait_for(lambda: _circuits(gateway) == ["half_open"], 5)
    assert _get(gateway.port)[0] == 200
    assert _circuits(gateway) == ["closed"]
    assert [_get(gateway.port)[0] for _ in range(10)] == [200] * 10
    _wait_for(lambda: "upstream circuit closed" in _error_log(gateway), 5)
    assert "was=half_open" in _error_log(gateway)


def test_a_failed_probe_opens_the_circuit_again(
        make_peer: Callable[[], Peer], start_gateway: Callable[..., Gateway]) -> None:
    peer = make_peer()
    gateway = start_gateway(gateway_config("", upstreams=_pool(peer)))
    _trip(gateway, peer)
    _wait_for(lambda: _circuits(gateway) == ["half_open"], 5)
    seen = peer.count()
    assert _get(gateway.port)[0] == 500  # the probe, answered by the still-failing peer
    assert _circuits(gateway) == ["open"]
    status, retry = _get(gateway.port)
    assert status == 503 and retry is not None and 1 <= int(retry) <= 2
    assert peer.count() == seen + 1


@pytest.mark.parametrize("balance", ["round_robin", "least_conn"])
def test_pickers_skip_a_peer_whose_circuit_is_open(
        balance: str, make_peer: Callable[[], Peer],
        start_gateway: Callable[..., Gateway]) -> None:
    bad, good = make_peer(), make_peer()
    good.mode = "ok"
    gateway = start_gateway(gateway_config("", upstreams=_pool(bad, good, balance=balance)))
    first = [_get(gateway.port)[0] for _ in range(20)]
    assert first.count(500) >= 4  # min_requests, then it opened
    assert _circuits(gateway) == ["open", "closed"]
    seen = bad.count()
    assert [_get(gateway.port)[0] for _ in range(10)] == [200] * 10
    assert bad.count() == seen


def test_a_worker_killed_during_a_probe_leaves_the_breaker_usable(
        make_peer: Callable[[], Peer], start_gateway: Callable[..., Gateway]) -> None:
    """The probe's place is held by the worker that sent it; SIGKILL of that worker
    frees it when the master replaces the worker (probe_timeout is 60 s: not that)."""
    peer = make_peer()
    gateway = start_gateway(gateway_config("", upstreams=_pool(peer)))
    _trip(gateway, peer)
    _wait_for(lambda: _circuits(gateway) == ["half_open"], 5)
    peer.mode = "hold"
    seen = peer.count()
    probe = threading.Thread(target=_ignore_errors, args=(gateway.port,), daemon=True)
    probe.start()
    _wait_for(lambda: peer.count() == seen + 1, 5)
    status, retry = _get(gateway.port)  # the only place is taken: nothing goes through
    assert status == 503 and retry is not None
    assert peer.count() == seen + 1
    holder: list[dict[str, int]] = []

    def one_holder() -> bool:  # the 503's connection may still be closing
        holder[:] = [w for w in gateway.status()["workers"] if w["connections"] > 0]
        return len(holder) == 1

    _wait_for(one_holder, 5)
    os.kill(holder[0]["pid"], signal.SIGKILL)
    _wait_for(lambda: holder[0]["pid"] not in gateway.workers()
              and len(gateway.workers()) == 2, 15)
    peer.mode = "ok"
    peer.release.set()
    _wait_for(lambda: _get(gateway.port)[0] == 200, 5)
    assert _circuits(gateway) == ["closed"]


def test_passive_health_still_marks_a_peer_down(
        make_peer: Callable[[], Peer], start_gateway: Callable[..., Gateway]) -> None:
    """max_fails counts connect failures as before; the breaker (min_requests 4) has
    seen too few to open."""
    good = make_peer()
    good.mode = "ok"
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    origin = f"http://127.0.0.1:{dead.getsockname()[1]}"
    try:
        pool = (f'[upstreams.main]\npeers = ["{origin}", "{good.origin}"]\nmax_fails = 2\n'
                f'[upstreams.main.circuit_breaker]\nmin_requests = 50\n')
        gateway = start_gateway(gateway_config("", upstreams=pool))
        assert [_get(gateway.port)[0] for _ in range(10)] == [200] * 10  # failover
        rows = gateway.status()["upstreams"]
        assert rows[0]["health"] == "down" and rows[0]["circuit"] == "closed"
    finally:
        dead.close()


def _ignore_errors(port: int) -> None:
    with contextlib.suppress(OSError, http.client.HTTPException):
        _get(port)  # its worker is killed: the connection just ends


def _error_log(gateway: Gateway) -> str:
    path = gateway.log_dir / "error.log"
    return path.read_text() if path.exists() else ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def _wait_for(condition: Callable[[], bool], seconds: float) -> None:
    give_up = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < give_up, "condition not met in time"
        time.sleep(0.05)


def test_a_reload_keeps_an_open_circuit_and_turning_the_breaker_off_closes_it(
        make_peer: Callable[[], Peer], start_gateway: Callable[..., Gateway]) -> None:
    peer = make_peer()
    pool = _pool(peer).replace('open_duration = "2s"', 'open_duration = "60s"')
    gateway = start_gateway(gateway_config("", upstreams=pool))
    _trip(gateway, peer)
    _reload(gateway, gateway_config("", upstreams=pool + 'half_open_probes = 2\n'))
    assert _circuits(gateway) == ["open"]  # carried into the new segment
    seen = peer.count()
    assert _get(gateway.port)[0] == 503 and peer.count() == seen
    # Off: the tuning goes too (settings of a disabled breaker are refused).
    _reload(gateway, gateway_config("", upstreams=pool.split(BREAKER_HEAD)[0]
                                    + BREAKER_HEAD + "enabled = false\n"))
    assert _circuits(gateway) == ["off"]
    peer.mode = "ok"
    assert _get(gateway.port)[0] == 200 and peer.count() == seen + 1


def _reload(gateway: Gateway, config: str) -> None:
    """Replace the config file (keeping the private control socket and log dir) and
    reload."""
    text = gateway.config_path.read_text()
    control = gateway.control_socket
    config = config.replace("[server]\n", f'[server]\ncontrol_socket = "{control}"\n', 1)
    config += text[text.index("\n[log]"):]
    temporary = gateway.config_path.with_suffix(".new")
    temporary.write_text(config)
    os.replace(temporary, gateway.config_path)
    result = gateway.ctl("reload")
    assert result.returncode == 0, result.stdout + result.stderr


def test_first_byte_timeouts_count_only_when_named(
        make_peer: Callable[[], Peer], start_gateway: Callable[..., Gateway]) -> None:
    """A slow peer is not a dead one by default; `failures` may say otherwise."""
    peer = make_peer()
    peer.mode = "hold"
    timers = '[defaults.timeouts]\nttfb_timeout = "1s"\n'
    pool = _pool(peer).replace("min_requests = 4", "min_requests = 2")
    gateway = start_gateway(gateway_config("", upstreams=pool, extra=timers))
    assert [_get(gateway.port)[0] for _ in range(2)] == [504, 504]
    assert _circuits(gateway) == ["closed"]
    counted = pool + 'failures = ["5xx", "ttfb_timeout"]\n'
    gateway = start_gateway(gateway_config("", upstreams=counted, extra=timers),
                            name="counted.toml")
    assert [_get(gateway.port)[0] for _ in range(2)] == [504, 504]
    _wait_for(lambda: _circuits(gateway) == ["open"], 2)
    assert _get(gateway.port)[0] == 503


def test_a_probe_that_times_out_waiting_for_the_head_opens_the_circuit_again(
        make_peer: Callable[[], Peer], start_gateway: Callable[..., Gateway]) -> None:
    """The last attempt's first-byte timeout ends through the connection's deadline (the
    504): when that attempt is a half-open probe, it is a failed probe, not an abandoned
    one (else a peer that hangs keeps the circuit half-open for ever, each probe holding
    a client for the whole timeout)."""
    peer = make_peer()
    peer.mode = "hold"
    timers = '[defaults.timeouts]\nttfb_timeout = "1s"\n'
    pool = (_pool(peer).replace("min_requests = 4", "min_requests = 2")
            + 'failures = ["5xx", "ttfb_timeout"]\n')
    gateway = start_gateway(gateway_config("", upstreams=pool, extra=timers))
    assert [_get(gateway.port)[0] for _ in range(2)] == [504, 504]
    _wait_for(lambda: _circuits(gateway) == ["open"], 2)
    _wait_for(lambda: _circuits(gateway) == ["half_open"], 5)
    seen = peer.count()
    assert _get(gateway.port)[0] == 504  # the probe
    assert peer.count() == seen + 1
    assert _circuits(gateway) == ["open"]
    assert _get(gateway.port)[0] == 503


def test_a_probe_whose_client_goes_away_frees_its_place_and_counts_nothing(
        make_peer: Callable[[], Peer], start_gateway: Callable[..., Gateway]) -> None:
    """A client that hangs up while its request probes the peer is no evidence about the
    peer: the circuit stays half-open and the next request probes at once."""
    peer = make_peer()
    gateway = start_gateway(gateway_config("", upstreams=_pool(peer)))
    _trip(gateway, peer)
    _wait_for(lambda: _circuits(gateway) == ["half_open"], 5)
    peer.mode = "hold"
    seen = peer.count()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as client:
        client.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        _wait_for(lambda: peer.count() == seen + 1, 5)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    time.sleep(0.5)  # the gateway sees the hang-up while it waits for the head
    assert _circuits(gateway) == ["half_open"]
    peer.mode = "ok"
    peer.release.set()
    assert _get(gateway.port)[0] == 200  # the place was free: this one probed
    assert _circuits(gateway) == ["closed"]
