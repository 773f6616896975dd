"""Saturation answers and the cold-start queue, through a real `li-httpd start` with two
workers and a scripted peer that records the order of the requests it sees.

The peer holds any request for ``/slow...`` until the test opens its gate, which is how
a test fills a ``max_concurrent = 1`` peer; every other request is answered at once with
its own path, so the peer's record is the order in which the gateway let requests go.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from .conftest import Gateway, RawServer, read_request


class GatedPeer(RawServer):
    def __init__(self) -> None:
        self.paths: list[str] = []
        self.gate = threading.Event()
        self.refuse = False
        """Close every connection at once (a backend that is not up yet)."""
        self.ready = True
        """What ``GET /ready`` (the health probe, not recorded) answers: 200 or 503."""
        self._lock = threading.Lock()
        super().__init__()

    def seen(self) -> list[str]:
        with self._lock:
            return list(self.paths)

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        pending = b""
        with conn:
            if self.refuse:
                return
            while (request := read_request(conn, pending)) is not None:
                head, _, pending = request
                path = head.split(b" ", 2)[1].decode()
                if path == "/ready":
                    status = b"200 OK" if self.ready else b"503 Loading"
                    with contextlib.suppress(OSError):
                        conn.sendall(b"HTTP/1.1 %s\r\ncontent-length: 0\r\n"
                                     b"connection: close\r\n\r\n" % status)
                    return
                with self._lock:
                    self.paths.append(path)
                if path.startswith("/slow"):
                    self.gate.wait(30)
                body = path.encode()
                try:
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(body), body))
                except OSError:
                    return


@pytest.fixture
def peer() -> Iterator[GatedPeer]:
    server = GatedPeer()
    yield server
    server.gate.set()
    server.close()


def _config(origin: str, *, pool: str = "", queue: str | None = None) -> str:
    queued = f"\n[route.queue]\n{queue}\n" if queue is not None else ""
    return (f'[server]\nlisten = "127.0.0.1:0"\nprofile = "dev"\nworkers = 2\n'
            f'shutdown_timeout = "5s"\n\n'
            f'[upstreams.main]\npeers = [{{ url = "{origin}", max_concurrent = 1 }}]\n{pool}\n'
            '[[route]]\nname = "chat"\npriority = 1\n'
            'match.path = { type = "prefix", value = "/" }\nproxy = "main"\n'
            f'{queued}')


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, "condition not met in time"
        time.sleep(0.02)


def _send(gateway: Gateway, path: str, results: dict[str, httpx.Response]) -> threading.Thread:
    """GET ``path`` on its own connection in a thread; the response lands in results
    (none when the connection broke: a test that expects one fails on the lookup)."""
    def run() -> None:
        with httpx.Client(base_url=gateway.url, timeout=20.0) as client, \
                contextlib.suppress(httpx.TransportError):
            results[path] = client.get(path)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _depth(gateway: Gateway) -> int:
    return int(gateway.status()["queues"][0]["depth"])


def _hold_the_only_place(gateway: Gateway, peer: GatedPeer,
                         results: dict[str, httpx.Response]) -> threading.Thread:
    slow = _send(gateway, "/slow", results)
    _wait_for(lambda: peer.seen() == ["/slow"])
    return slow


@pytest.mark.parametrize("status", [429, 503])
def test_saturated_pool_answers_itself_without_calling_the_peer(
        start_gateway: Callable[..., Gateway], peer: GatedPeer, status: int) -> None:
    gateway = start_gateway(_config(peer.origin, pool=f"saturated_status = {status}\n"))
    results: dict[str, httpx.Response] = {}
    slow = _hold_the_only_place(gateway, peer, results)
    row = gateway.status()["upstreams"][0]
    assert (row["active"], row["max_concurrent"]) == (1, 1)
    assert "1/1" in gateway.ctl("status").stdout
    for attempt in range(6):  # separate connections: both workers answer
        with httpx.Client(base_url=gateway.url, timeout=5.0) as client:
            response = client.get(f"/busy{attempt}")
        assert response.status_code == status
        assert response.headers["retry-after"] == "1"
        error = response.json()["error"]
        assert "concurrency limit" in error["message"]
        record = gateway.audit_record(response.headers["x-request-id"])
        assert record["attempts"] == [{"pool": "main", "peer": "-", "failure": "saturated"}]
    assert peer.seen() == ["/slow"]  # zero upstream calls for the refused ones
    peer.gate.set()
    slow.join(10)
    assert results["/slow"].status_code == 200
    with httpx.Client(base_url=gateway.url, timeout=5.0) as client:
        assert client.get("/after").status_code == 200  # the place came back


def test_queue_releases_in_arrival_order_and_overflow_answers_at_once(
        start_gateway: Callable[..., Gateway], peer: GatedPeer) -> None:
    gateway = start_gateway(_config(peer.origin, queue='max_size = 3\nmax_wait = "20s"'))
    results: dict[str, httpx.Response] = {}
    slow = _hold_the_only_place(gateway, peer, results)
    waiting = []
    for index in range(1, 4):  # a known arrival order, across both workers
        waiting.append(_send(gateway, f"/q{index}", results))
        _wait_for(lambda index=index: _depth(gateway) == index)  # type: ignore[misc]
    assert "3/3" in gateway.ctl("status").stdout
    started = time.monotonic()
    with httpx.Client(base_url=gateway.url, timeout=5.0) as client:
        overflow = client.get("/q4")
    assert time.monotonic() - started < 2.0  # at once, not after max_wait
    assert overflow.status_code == 503 and int(overflow.headers["retry-after"]) >= 1
    assert "waiting" in overflow.json()["error"]["message"]
    assert peer.seen() == ["/slow"]
    peer.gate.set()
    for thread in [slow, *waiting]:
        thread.join(15)
    assert [results[f"/q{i}"].status_code for i in (1, 2, 3)] == [200, 200, 200]
    assert peer.seen() == ["/slow", "/q1", "/q2", "/q3"]
    assert _depth(gateway) == 0
    record = gateway.audit_record(results["/q2"].headers["x-request-id"])
    assert record["attempts"][0] == {"pool": "main", "peer": "-", "failure": "queued"}


def test_queue_times_out_cleanly_and_a_gone_client_leaves_at_once(
        start_gateway: Callable[..., Gateway], peer: GatedPeer) -> None:
    gateway = start_gateway(_config(peer.origin, queue='max_size = 10\nmax_wait = "3s"'))
    results: dict[str, httpx.Response] = {}
    slow = _hold_the_only_place(gateway, peer, results)
    # A client that hangs up while queued: its entry goes at once, the peer never sees it.
    gone = socket.create_connection(("127.0.0.1", gateway.port))
    gone.sendall(b"GET /gone HTTP/1.1\r\nhost: x\r\n\r\n")
    _wait_for(lambda: _depth(gateway) == 1)
    gone.close()
    _wait_for(lambda: _depth(gateway) == 0, timeout=1.5)  # well before max_wait
    started = time.monotonic()
    timing_out = [_send(gateway, f"/t{i}", results) for i in (1, 2)]
    for thread in timing_out:
        thread.join(10)
    elapsed = time.monotonic() - started
    assert 2.9 < elapsed < 8.0
    for path in ("/t1", "/t2"):
        response = results[path]
        assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
        assert "in time" in response.json()["error"]["message"]
    assert _depth(gateway) == 0
    peer.gate.set()
    slow.join(10)
    with httpx.Client(base_url=gateway.url, timeout=5.0) as client:
        assert client.get("/after").status_code == 200
    assert peer.seen() == ["/slow", "/after"]


def test_queued_requests_go_in_order_once_a_cold_peer_comes_up(
        start_gateway: Callable[..., Gateway], peer: GatedPeer) -> None:
    """Scale to zero: the peer refuses connections, passive health marks it down, the
    requests that come meanwhile wait, and reach it in arrival order once it is up."""
    peer.refuse = True
    gateway = start_gateway(_config(
        peer.origin, pool='max_fails = 1\nfail_timeout = "1s"\nmax_retries = 0\n',
        queue='max_size = 5\nmax_wait = "15s"'))
    with httpx.Client(base_url=gateway.url, timeout=5.0) as client:
        assert client.get("/wake").status_code == 502  # it marks the peer down
    results: dict[str, httpx.Response] = {}
    waiting = []
    for index in range(1, 4):
        waiting.append(_send(gateway, f"/c{index}", results))
        _wait_for(lambda index=index: _depth(gateway) == index)  # type: ignore[misc]
    peer.refuse = False
    for thread in waiting:
        thread.join(15)
    assert [results[f"/c{i}"].status_code for i in (1, 2, 3)] == [200, 200, 200]
    assert peer.seen() == ["/c1", "/c2", "/c3"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _metrics(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def test_queue_waits_for_a_peer_to_become_ready_and_keeps_arrival_order(
        start_gateway: Callable[..., Gateway], peer: GatedPeer) -> None:
    """Scale to zero with active health: the model is loading (/ready answers 503), so
    requests wait instead of failing; once a probe finds it ready they reach it in the
    order they came, one at a time under max_concurrent = 1."""
    peer.ready = False
    gateway = start_gateway(_config(
        peer.origin, pool='\n[upstreams.main.health_check]\nready = "/ready"\n'
        'interval = "200ms"\ntimeout = "150ms"\nrise = 1\nfall = 1\n',
        queue='max_size = 5\nmax_wait = "15s"'))
    _wait_for(lambda: gateway.status()["upstreams"][0]["ready"] == "not_ready")
    results: dict[str, httpx.Response] = {}
    waiting = []
    for index in range(1, 4):
        waiting.append(_send(gateway, f"/r{index}", results))
        _wait_for(lambda index=index: _depth(gateway) == index)  # type: ignore[misc]
    time.sleep(0.5)  # several probe rounds: still not ready, nobody goes
    assert peer.seen() == [] and _depth(gateway) == 3
    peer.ready = True
    for thread in waiting:
        thread.join(15)
    assert [results[f"/r{i}"].status_code for i in (1, 2, 3)] == [200, 200, 200]
    assert peer.seen() == ["/r1", "/r2", "/r3"]


def test_queue_and_saturation_metrics(start_gateway: Callable[..., Gateway],
                                      peer: GatedPeer) -> None:
    port = _free_port()
    config = _config(peer.origin, queue='max_size = 1\nmax_wait = "10s"')
    config = config.replace("[upstreams.main]", f'[metrics]\nenabled = true\n'
                            f'listen = "127.0.0.1:{port}"\n\n[upstreams.main]', 1)
    gateway = start_gateway(config)
    results: dict[str, httpx.Response] = {}
    slow = _hold_the_only_place(gateway, peer, results)
    queued = _send(gateway, "/q1", results)
    _wait_for(lambda: _depth(gateway) == 1)
    with httpx.Client(base_url=gateway.url, timeout=5.0) as client:
        assert client.get("/q2").status_code == 503
    text = _metrics(port)
    assert 'li_route_queue_depth{route="chat"} 1.0' in text
    assert 'li_route_queue_total{outcome="overflow",route="chat"} 1.0' in text
    assert f'li_upstream_peer_max_concurrent{{peer="{peer.origin}",pool="main"}} 1.0' in text
    peer.gate.set()
    slow.join(10)
    queued.join(10)
    _wait_for(lambda: 'li_route_queue_total{outcome="released",route="chat"} 1.0'
              in _metrics(port))
    assert 'li_route_queue_depth{route="chat"} 0.0' in _metrics(port)


def test_a_killed_workers_queue_entries_and_places_are_cleared(
        start_gateway: Callable[..., Gateway], peer: GatedPeer) -> None:
    gateway = start_gateway(_config(peer.origin, queue='max_size = 5\nmax_wait = "20s"'))
    results: dict[str, httpx.Response] = {}
    _hold_the_only_place(gateway, peer, results)
    for index in range(1, 3):
        _send(gateway, f"/k{index}", results)
        _wait_for(lambda index=index: _depth(gateway) == index)  # type: ignore[misc]
    before = gateway.workers()
    for pid in before:  # every worker dies at once, holding the place and the queue
        os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: len(gateway.workers()) == 2 and not set(gateway.workers()) & set(before))
    status = gateway.status()
    assert status["queues"][0]["depth"] == 0
    assert status["upstreams"][0]["active"] == 0
    with httpx.Client(base_url=gateway.url, timeout=5.0) as client:
        assert client.get("/after").status_code == 200


def test_a_reload_that_resizes_the_queue_lets_the_old_waiters_finish(
        start_gateway: Callable[..., Gateway], peer: GatedPeer) -> None:
    gateway = start_gateway(_config(peer.origin, queue='max_size = 3\nmax_wait = "20s"'))
    results: dict[str, httpx.Response] = {}
    slow = _hold_the_only_place(gateway, peer, results)
    old = _send(gateway, "/old", results)
    _wait_for(lambda: _depth(gateway) == 1)
    control = gateway.control_socket
    config = _config(peer.origin, queue='max_size = 5\nmax_wait = "20s"')
    gateway.config_path.write_text(
        config.replace("[server]\n", f'[server]\ncontrol_socket = "{control}"\n', 1)
        + f'\n[log]\ndir = "{gateway.log_dir}"\n')
    assert gateway.ctl("reload").returncode == 0
    queues = gateway.status()["queues"]
    assert queues == [{"route": "chat", "depth": 0, "max_size": 5}]  # a new queue
    peer.gate.set()  # the old generation's waiter goes once its place frees
    slow.join(10)
    old.join(10)
    assert results["/old"].status_code == 200
    with httpx.Client(base_url=gateway.url, timeout=5.0) as client:
        assert client.get("/new").status_code == 200
    assert peer.seen() == ["/slow", "/old", "/new"]


def test_a_stream_committed_early_gets_heartbeats_while_it_waits(
        start_gateway: Callable[..., Gateway], peer: GatedPeer) -> None:
    config = _config(peer.origin, queue='max_size = 5\nmax_wait = "20s"') + (
        '\n[route.timeouts]\nearly_stream_head = true\nheartbeat_interval = "1s"\n')
    gateway = start_gateway(config)
    results: dict[str, httpx.Response] = {}
    slow = _hold_the_only_place(gateway, peer, results)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"GET /sse HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n")
        received = b""
        give_up = time.monotonic() + 5
        while received.count(b": heartbeat") < 2:
            assert time.monotonic() < give_up, received
            received += sock.recv(4096)
        assert received.startswith(b"HTTP/1.1 200 ")
        assert _depth(gateway) == 1 and peer.seen() == ["/slow"]
    _wait_for(lambda: _depth(gateway) == 0, timeout=2.0)  # hung up: it left the queue
    peer.gate.set()
    slow.join(10)
    assert peer.seen() == ["/slow"]
