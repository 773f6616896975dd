"""Operating a running gateway: ctl status, atomic reload (SIGHUP / ctl), the reload
actor, ctl stop."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from .conftest import Gateway, MockUpstream, cli_command, gateway_config

pytestmark = pytest.mark.integration

V1_ROUTES = ('"GET /health" = "static:healthcheck"\n"/v1/*" = "proxy:main"\n'
             '"/small" = "proxy:main"\n')
V2_ROUTES = V1_ROUTES + '"/echo" = "proxy:main"\n'


def _rewrite(gateway: Gateway, config: str) -> None:
    """Replace the config file in place, keeping the test's private control socket."""
    control = gateway.control_socket
    config = config.replace("[server]\n", f'[server]\ncontrol_socket = "{control}"\n', 1)
    temporary = gateway.config_path.with_suffix(".new")
    temporary.write_text(config)
    os.replace(temporary, gateway.config_path)


def _get(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path)
    status = connection.getresponse().status
    connection.close()
    return status


def test_ctl_status_shows_workers_peers_and_config(mock: MockUpstream, start_gateway) -> None:
    gateway = start_gateway(gateway_config(mock.origin, routes=V1_ROUTES))
    assert _get(gateway.port, "/small") == 200
    result = gateway.ctl("status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["generation"] == 0 and status["config_hash"]
    assert [w["state"] for w in status["workers"]] == ["running", "running"]
    assert sum(w["requests"] for w in status["workers"]) >= 1
    assert status["upstreams"][0]["peer"] == mock.origin
    assert status["upstreams"][0]["health"] == "up"
    assert status["upstreams"][0]["circuit"] == "closed"  # the breaker is on by default
    assert status["listen"] == [gateway.url]
    table = gateway.ctl("status")
    assert "workers" in table.stdout and "upstreams" in table.stdout and mock.origin in table.stdout


def test_ctl_without_a_master_says_so(tmp_path) -> None:
    result = subprocess.run(cli_command("ctl", "--socket", str(tmp_path / "none.sock"), "status"),
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "no li-httpd master is running" in result.stderr


def test_reload_adds_a_route_and_retires_the_old_workers(mock: MockUpstream,
                                                          start_gateway) -> None:
    gateway = start_gateway(gateway_config(mock.origin, routes=V1_ROUTES))
    old_workers = gateway.workers()
    assert _get(gateway.port, "/echo") == 404
    _rewrite(gateway, gateway_config(mock.origin, routes=V2_ROUTES))
    result = gateway.ctl("reload")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reloaded: generation 1" in result.stdout
    assert _get(gateway.port, "/echo") == 200
    status = gateway.status()
    assert status["generation"] == 1 and status["last_reload"]["result"] == "ok"
    deadline = time.monotonic() + 10
    while any(pid in [w["pid"] for w in gateway.status()["workers"]] for pid in old_workers):
        assert time.monotonic() < deadline, "old generation did not exit"
        time.sleep(0.1)


def test_invalid_reload_changes_nothing_and_reports_the_line(mock: MockUpstream,
                                                             start_gateway) -> None:
    gateway = start_gateway(gateway_config(mock.origin, routes=V1_ROUTES))
    before = gateway.status()
    broken = gateway_config(mock.origin, routes=V1_ROUTES + '"/x" = "proxy:missing"\n')
    _rewrite(gateway, broken)
    result = gateway.ctl("reload")
    assert result.returncode == 1
    assert "unchanged" in result.stdout and "missing" in result.stdout
    status = gateway.status()
    assert status["generation"] == before["generation"]
    assert status["config_hash"] == before["config_hash"]
    failure = status["last_reload"]
    assert failure["result"] == "failed"
    broken_line = broken.splitlines().index('"/x" = "proxy:missing"') + 2  # + control line
    assert failure["line"] == broken_line, failure
    assert "missing" in failure["reason"]
    assert _get(gateway.port, "/small") == 200
    assert gateway.workers() == [w["pid"] for w in before["workers"]]
    table = gateway.ctl("status").stdout
    reload_line = next(line for line in table.splitlines() if line.startswith("reload"))
    assert reload_line.startswith("reload   failed"), table
    # The error's place appears once (it was "line N: FILE:N: ..." before); counted
    # without the file's path, whose temporary directory may hold the same digits.
    place = f"{gateway.config_path}:{broken_line}:"
    assert place in reload_line, reload_line
    assert reload_line.replace(place, "").count(str(broken_line)) == 0, reload_line


def test_sighup_reloads_and_the_actor_is_supervised(mock: MockUpstream,
                                                    start_gateway) -> None:
    gateway = start_gateway(gateway_config(mock.origin, routes=V1_ROUTES))
    children = Path(f"/proc/{gateway.pid}/task/{gateway.pid}/children").read_text().split()
    workers = {str(pid) for pid in gateway.workers()}
    actor = next(int(pid) for pid in children if pid not in workers)
    os.kill(actor, signal.SIGKILL)  # the master restarts it
    time.sleep(1.5)
    _rewrite(gateway, gateway_config(mock.origin, routes=V2_ROUTES))
    gateway.signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while gateway.status()["generation"] != 1:
        assert time.monotonic() < deadline, gateway.output.text()
        time.sleep(0.1)
    assert _get(gateway.port, "/echo") == 200
    assert "reload actor exited (killed by SIGKILL)" in gateway.output.text()


def test_reload_under_load_fails_nothing_and_cuts_no_stream(mock: MockUpstream,
                                                            start_gateway) -> None:
    gateway = start_gateway(gateway_config(mock.origin, routes=V1_ROUTES))
    stop = threading.Event()
    failures: list[str] = []
    completed = [0]
    streams: list[list[str]] = []

    def hammer() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        while not stop.is_set():
            try:
                connection.request("GET", "/small")
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    failures.append(f"status {response.status}")
                completed[0] += 1
                if response.getheader("connection") == "close":
                    connection.close()
            except (http.client.HTTPException, OSError) as exc:
                failures.append(repr(exc))
                connection.close()
        connection.close()

    def stream() -> None:
        payload = json.dumps({"model": "m", "stream": True, "messages": []})
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
        connection.request("POST", "/v1/chat/completions?tokens=20&delay_ms=100", body=payload,
                           headers={"content-type": "application/json"})
        response = connection.getresponse()
        events = [line.decode().strip() for line in response if line.startswith(b"data: ")]
        streams.append(events)
        connection.close()

    hammers = [threading.Thread(target=hammer) for _ in range(4)]
    streamers = [threading.Thread(target=stream) for _ in range(3)]
    for thread in hammers + streamers:
        thread.start()
    time.sleep(1.0)
    _rewrite(gateway, gateway_config(mock.origin, routes=V2_ROUTES))
    result = gateway.ctl("reload")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _get(gateway.port, "/echo") == 200
    time.sleep(1.0)
    stop.set()
    for thread in hammers + streamers:
        thread.join(30)
    assert failures == []
    assert completed[0] > 300
    assert len(streams) == 3
    for events in streams:
        assert events[-1] == "data: [DONE]", events[-3:]


def test_rate_limit_state_survives_a_reload(mock: MockUpstream, start_gateway) -> None:
    """A key that used its burst before a reload is still limited after it. The burst
    (20) is far above what the reload's own duration refills at 1 request/s, so a fresh
    limiter (20 admitted at once) and the kept one (about one per second since the
    burst) differ whatever the machine's speed."""
    limit = ('[defaults.rate_limit]\nkey = "ip"\nallow_ip_key = true\n'
             'requests_per_sec = 1\nburst = 20\n')
    gateway = start_gateway(gateway_config(mock.origin, routes=V1_ROUTES, extra=limit))
    before = []
    while 429 not in before and len(before) < 60:  # spend the burst
        before.append(_get(gateway.port, "/small"))
    spent = time.monotonic()
    assert before.count(200) >= 20 and before[-1] == 429
    _rewrite(gateway, gateway_config(mock.origin, routes=V2_ROUTES, extra=limit))
    assert gateway.ctl("reload").returncode == 0
    after = [_get(gateway.port, "/small") for _ in range(20)]
    refilled = time.monotonic() - spent + 2  # what the limit may have given back since
    assert 429 in after and after.count(200) <= refilled, (after, refilled)


def test_reload_binds_a_new_listener(mock: MockUpstream, start_gateway) -> None:
    gateway = start_gateway(gateway_config(mock.origin, routes=V1_ROUTES))
    spare = socket.socket()
    spare.bind(("127.0.0.1", 0))
    port = spare.getsockname()[1]
    spare.close()
    config = gateway_config(mock.origin, routes=V1_ROUTES).replace(
        'listen = "127.0.0.1:0"', f'listen = ["127.0.0.1:{gateway.port}", "127.0.0.1:{port}"]')
    _rewrite(gateway, config)
    assert gateway.ctl("reload").returncode == 0
    assert _get(port, "/small") == 200 and _get(gateway.port, "/small") == 200


def test_a_removed_listener_refuses_at_once(mock: MockUpstream, start_gateway) -> None:
    """While the old generation drains a slow request, a listener the new config dropped
    must refuse connections, not queue them for nobody (at 9447c3b they hung until the
    old generation was gone)."""
    spare = socket.socket()
    spare.bind(("127.0.0.1", 0))
    dropped = spare.getsockname()[1]
    spare.close()
    gateway = start_gateway(gateway_config(mock.origin, routes=V1_ROUTES).replace(
        'listen = "127.0.0.1:0"', f'listen = ["127.0.0.1:0", "127.0.0.1:{dropped}"]'))
    assert _get(dropped, "/health") == 200
    slow = threading.Thread(target=_get, args=(gateway.port, "/v1/models?ttfb_ms=4000"))
    slow.start()
    time.sleep(0.3)
    config = gateway_config(mock.origin, routes=V1_ROUTES).replace(
        'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{gateway.port}"')
    _rewrite(gateway, config)
    assert gateway.ctl("reload").returncode == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", dropped), timeout=2).close()
    assert _get(gateway.port, "/health") == 200
    slow.join(10)


def test_ctl_stop_is_graceful(mock: MockUpstream, start_gateway) -> None:
    gateway = start_gateway(gateway_config(mock.origin, routes=V1_ROUTES))
    result = gateway.ctl("stop")
    assert result.returncode == 0
    assert gateway.wait(20) == 0


def test_systemd_notifications(mock: MockUpstream, start_gateway) -> None:
    directory = tempfile.mkdtemp(prefix="lisd-")
    address = os.path.join(directory, "notify")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(address)
    receiver.settimeout(20)
    try:
        gateway = start_gateway(gateway_config(mock.origin, routes=V1_ROUTES),
                                env={"NOTIFY_SOCKET": address})
        assert b"READY=1" in receiver.recv(4096).split(b"\n")
        _rewrite(gateway, gateway_config(mock.origin, routes=V2_ROUTES))
        gateway.signal(signal.SIGHUP)
        reloading = receiver.recv(4096).split(b"\n")
        assert b"RELOADING=1" in reloading
        assert any(field.startswith(b"MONOTONIC_USEC=") for field in reloading)
        assert b"READY=1" in receiver.recv(4096).split(b"\n")
        # READY comes after the switch: old workers no longer accept new connections.
        assert _get(gateway.port, "/echo") == 200, gateway.output.text()
        gateway.signal(signal.SIGTERM)
        assert b"STOPPING=1" in receiver.recv(4096).split(b"\n")
        assert gateway.wait(20) == 0
    finally:
        receiver.close()


def _children(pid: int) -> list[int]:
    return [int(p) for p in
            Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _gone(pid: int) -> bool:
    """Exited (and reaped, or a zombie waiting for init)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGQUIT])
def test_a_stop_signal_during_a_stalled_reload_acts_at_once(mock: MockUpstream,
                                                            start_gateway,
                                                            number: int) -> None:
    """A reload stuck in its first phase (the reload actor is SIGSTOPped, so it never
    answers; the master would wait up to 30 s for it) must not delay a stop: the master
    and every child are gone within about a second of the signal (no requests in
    flight, so there is nothing to drain)."""
    gateway = start_gateway(gateway_config(mock.origin, routes=V1_ROUTES))
    workers = set(gateway.workers())
    children = _children(gateway.pid)
    actor = next(pid for pid in children if pid not in workers)
    os.kill(actor, signal.SIGSTOP)
    _rewrite(gateway, gateway_config(mock.origin, routes=V2_ROUTES))
    reload = subprocess.Popen(cli_command("ctl", "--socket", gateway.control_socket,
                                          "reload"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while gateway.status().get("reloading") != "asking actor":
        assert time.monotonic() < deadline, gateway.output.text()
        time.sleep(0.05)
    time.sleep(0.3)  # well inside the stalled phase
    assert reload.poll() is None  # ctl reload is still waiting for its answer
    sent = time.monotonic()
    gateway.signal(number)
    assert gateway.wait(10) == 0
    took = time.monotonic() - sent
    while not all(_gone(pid) for pid in children) and time.monotonic() < sent + 5:
        time.sleep(0.02)
    gone = time.monotonic() - sent
    print(f"{signal.Signals(number).name} during a stalled reload: master exited after "
          f"{took:.3f}s, children gone after {gone:.3f}s")
    assert took < 1.5, gateway.output.text()
    assert all(_gone(pid) for pid in children), children
    out, _ = reload.communicate(timeout=10)
    assert "reload interrupted: the master is stopping" in out
    assert reload.returncode == 1


def test_sigterm_during_a_stalled_reload_still_drains_in_flight_work(
        mock: MockUpstream, start_gateway) -> None:
    """Graceful means graceful even mid-reload: a request in flight when SIGTERM arrives
    completes, and the master exits right after it (not after the stalled reload)."""
    gateway = start_gateway(gateway_config(mock.origin, routes=V1_ROUTES))
    workers = set(gateway.workers())
    actor = next(pid for pid in _children(gateway.pid) if pid not in workers)
    os.kill(actor, signal.SIGSTOP)
    _rewrite(gateway, gateway_config(mock.origin, routes=V2_ROUTES))
    gateway.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while gateway.status().get("reloading") != "asking actor":
        assert time.monotonic() < deadline, gateway.output.text()
        time.sleep(0.05)
    statuses: list[int] = []
    slow = threading.Thread(
        target=lambda: statuses.append(_get(gateway.port, "/v1/models?ttfb_ms=1500")))
    slow.start()
    time.sleep(0.3)  # the request is in a worker now
    sent = time.monotonic()
    gateway.signal(signal.SIGTERM)
    assert gateway.wait(10) == 0
    took = time.monotonic() - sent
    slow.join(10)
    print(f"SIGTERM during a stalled reload with 1.2 s of work in flight: master exited "
          f"after {took:.3f}s")
    assert statuses == [200]
    assert took < 1.2 + 1.0, gateway.output.text()


def _budget_keys(*keys: str) -> str:
    entries = ", ".join(f'{{ id = "{key}", sha256 = "{str(n + 1) * 64}", '
                        f'tokens_per_minute = {1000 * (n + 1)}, usd_budget = 2.5 }}'
                        for n, key in enumerate(keys))
    return f"[auth]\nkeys = [{entries}]\n"


def test_ctl_status_shows_budgets_across_a_reload(mock: MockUpstream, start_gateway) -> None:
    """The master's status reads the budget entries of the running segment; a reload
    that reorders and adds keys moves to a new one (ids decide, not positions)."""
    gateway = start_gateway(gateway_config(mock.origin, routes=V1_ROUTES,
                                           extra=_budget_keys("alice", "bob")))
    status = json.loads(gateway.ctl("status", "--json").stdout)
    assert [(b["key"], b["tokens"], b["tokens_per_minute"], b["usd_budget"])
            for b in status["budgets"]] == [("alice", 0, 1000, 2.5), ("bob", 0, 2000, 2.5)]
    assert status["budgets"][0]["usd_window_end"] % 86_400 == 0
    _rewrite(gateway, gateway_config(mock.origin, routes=V1_ROUTES,
                                     extra=_budget_keys("carol", "bob", "alice")))
    assert gateway.ctl("reload").returncode == 0
    table = gateway.ctl("status").stdout
    assert "budgets" in table and "0/3000" in table and "0.00/2.50" in table, table
