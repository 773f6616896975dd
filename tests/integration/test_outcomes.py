"""How a request ended, as the logs and the metrics tell it: a real gateway in front of
the mock upstream made hostile (stalls, cuts, slow first byte) and a client that leaves.

For each abnormal end: the access line carries the outcome next to the status, with
the method, the path (query values redacted) and the client's address; the error log
has exactly one line for the request; ``li_stream_outcomes_total`` counts it once.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Gateway, MockUpstream, gateway_config

pytestmark = pytest.mark.integration

CHAT = b"/v1/chat/completions"


def stream_timers(*, idle: str = "1s", ttfb: str = "1s", max_duration: str = "600s") -> str:
    """The config that sets the stream timers of every route."""
    return ('[defaults.timeouts]\n'
            f'stream_idle_timeout = "{idle}"\nttfb_timeout = "{ttfb}"\n'
            f'stream_max_duration = "{max_duration}"\nheartbeat_interval = 0\n')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Gateway:
    def __init__(self, gateway: Gateway, metrics_port: int) -> None:
        self.gateway = gateway
        self.metrics_port = metrics_port

    def access_line(self, request_id: str) -> list[str]:
        return _wait_line(self.gateway.log_dir / "access.log", request_id)

    def error_lines(self, request_id: str) -> list[list[str]]:
        _wait_line(self.gateway.log_dir / "error.log", request_id)
        time.sleep(0.3)  # a second line, if there were one, would be flushed by now
        return [line.split(" ") for line in _lines(self.gateway.log_dir / "error.log")
                if line.split(" ")[2:3] == [request_id]]

    def outcome_count(self, route: str, outcome: str, expected: float) -> None:
        give_up = time.monotonic() + 10
        while True:
            found = _outcomes(self.metrics_port).get((route, outcome), 0.0)
            if found == expected:
                return
            assert time.monotonic() < give_up, (route, outcome, _outcomes(self.metrics_port))
            time.sleep(0.05)


@pytest.fixture
def hostile(mock: MockUpstream, start_gateway: Callable[..., Gateway]) -> _Gateway:
    port = _free_port()
    upstreams = (f'[upstreams.main]\npeers = ["{mock.origin}"]\nmax_fails = 1\n'
                 'fail_timeout = "1s"\n'
                 # first-byte timeouts count here (they do not by default), so the
                 # peer down/up lines can be seen
                 'health_failures = ["connect", "reset", "malformed", "5xx", "ttfb_timeout"]\n')
    extra = f'[metrics]\nenabled = true\nlisten = "127.0.0.1:{port}"\n' + stream_timers()
    gateway = start_gateway(gateway_config(mock.origin, upstreams=upstreams, extra=extra))
    return _Gateway(gateway, port)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _wait_line(path: Path, request_id: str) -> list[str]:
    give_up = time.monotonic() + 10
    while True:
        for line in _lines(path):
            fields = line.split(" ")
            if fields[2:3] == [request_id]:
                return fields
        assert time.monotonic() < give_up, f"no line for {request_id} in {path.name}"
        time.sleep(0.05)


def _outcomes(port: int) -> dict[tuple[str, str], float]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        reply = b""
        while data := sock.recv(65536):
            reply += data
    body = reply.partition(b"\r\n\r\n")[2].decode()
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == "li_stream_outcomes_total":
                found[(sample.labels["route"], sample.labels["outcome"])] = sample.value
    return found


def _stream_request(query: bytes, request_id: str) -> bytes:
    payload = json.dumps({"model": "m", "stream": True,
                          "messages": [{"role": "user", "content": "x"}]}).encode()
    return (b"POST %s?%s HTTP/1.1\r\nHost: t\r\nx-request-id: %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (CHAT, query, request_id.encode(), len(payload), payload))


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def _read_all(sock: socket.socket) -> bytes:
    received = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data


def _check_access(fields: list[str], *, status: str, outcome: str, method: str, path: str,
                  client: str) -> None:
    assert fields[5:7] == [status, outcome], fields
    assert fields[10:14] == [method, path, client, "-"], fields


def _check_error(lines: list[list[str]], *, outcome: str, route: str) -> dict[str, str]:
    assert len(lines) == 1, lines
    fields = dict(part.split("=", 1) for part in lines[0] if "=" in part)
    assert fields["outcome"] == outcome and fields["route"] == route, fields
    assert fields["peer"].startswith("127.0.0.1:") and fields["client"].startswith("127.0.0.1:")
    assert int(fields["bytes_out"]) >= 0
    return fields


def test_a_stalled_stream_ends_as_idle_timeout(hostile: _Gateway) -> None:
    with socket.create_connection(("127.0.0.1", hostile.gateway.port), timeout=10) as sock:
        client = _address(sock)
        sock.sendall(_stream_request(b"stall_after=2", "stall-1"))
        received = _read_all(sock)
    assert received.startswith(b"HTTP/1.1 200") and received.count(b"data: ") >= 2
    access = hostile.access_line("stall-1")
    _check_access(access, status="200", outcome="idle_timeout", method="POST",
                  path="/v1/chat/completions?stall_after=<redacted>", client=client)
    error = _check_error(hostile.error_lines("stall-1"), outcome="idle_timeout",
                         route=access[3])
    assert int(error["bytes_out"]) == int(access[9]) > 0
    assert error["events"] == "2"
    hostile.outcome_count(access[3], "idle_timeout", 1)


def test_a_client_that_leaves_mid_stream_ends_as_client_gone(hostile: _Gateway) -> None:
    with socket.create_connection(("127.0.0.1", hostile.gateway.port), timeout=10) as sock:
        client = _address(sock)
        sock.sendall(_stream_request(b"stall_after=3&x=1", "gone-1"))
        received = b""
        while received.count(b"data: ") < 2:
            data = sock.recv(65536)
            assert data
            received += data
    access = hostile.access_line("gone-1")
    _check_access(access, status="200", outcome="client_gone", method="POST",
                  path="/v1/chat/completions?stall_after=<redacted>&x=<redacted>",
                  client=client)
    _check_error(hostile.error_lines("gone-1"), outcome="client_gone", route=access[3])
    hostile.outcome_count(access[3], "client_gone", 1)


def test_an_upstream_cut_mid_stream_ends_as_upstream_cut(hostile: _Gateway) -> None:
    with socket.create_connection(("127.0.0.1", hostile.gateway.port), timeout=10) as sock:
        client = _address(sock)
        sock.sendall(_stream_request(b"close_after=2", "cut-1"))
        received = _read_all(sock)
    # An SSE stream: the whole events, then the terminal error event and the last chunk.
    assert received.startswith(b"HTTP/1.1 200") and received.endswith(b"0\r\n\r\n")
    assert b'event: error\ndata: {"error":{"type":"bad_gateway","code":502,' in received
    access = hostile.access_line("cut-1")
    _check_access(access, status="200", outcome="upstream_cut", method="POST",
                  path="/v1/chat/completions?close_after=<redacted>", client=client)
    error = _check_error(hostile.error_lines("cut-1"), outcome="upstream_cut",
                         route=access[3])
    assert error["detail"]  # what the upstream did, in words
    assert error["events"] == "2"  # the SSE events that reached the client whole
    hostile.outcome_count(access[3], "upstream_cut", 1)


def test_a_slow_first_byte_is_a_504_with_its_diagnostic_and_marks_the_peer_down(
        hostile: _Gateway) -> None:
    with socket.create_connection(("127.0.0.1", hostile.gateway.port), timeout=10) as sock:
        client = _address(sock)
        sock.sendall(b"GET /small?ttfb_ms=3000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                     b"x-request-id: ttfb-1\r\n\r\n")
        received = _read_all(sock)
    assert received.startswith(b"HTTP/1.1 504"), received
    access = hostile.access_line("ttfb-1")
    _check_access(access, status="504", outcome="ttfb_timeout", method="GET",
                  path="/small?ttfb_ms=<redacted>", client=client)
    error = _check_error(hostile.error_lines("ttfb-1"), outcome="ttfb_timeout",
                         route=access[3])
    assert error["status"] == "504" and error["bytes_out"] == access[9]
    hostile.outcome_count(access[3], "ttfb_timeout", 1)
    # max_fails = 1: the timeout marked the only peer down, for fail_timeout (1 s) ...
    error_log = hostile.gateway.log_dir / "error.log"
    down = [line for line in _lines(error_log) if "upstream peer marked down" in line]
    assert len(down) == 1 and "pool=main" in down[0] and "reason=ttfb_timeout" in down[0]
    # ... after which a request that succeeds marks it up again, once.
    time.sleep(1.1)
    for n in range(2):
        with socket.create_connection(("127.0.0.1", hostile.gateway.port), timeout=10) as sock:
            sock.sendall(b"GET /small HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                         b"x-request-id: after-%d\r\n\r\n" % n)
            assert _read_all(sock).startswith(b"HTTP/1.1 200")
    hostile.access_line("after-1")
    give_up = time.monotonic() + 5
    while not [line for line in _lines(error_log) if "upstream peer marked up" in line]:
        assert time.monotonic() < give_up, _lines(error_log)
        time.sleep(0.05)
    time.sleep(0.3)
    up = [line for line in _lines(error_log) if "upstream peer marked up" in line]
    assert len(up) == 1 and "pool=main" in up[0], up
    hostile.outcome_count(access[3], "completed", 2)


def test_a_stream_cut_by_the_drain_deadline_ends_as_shutdown(
        mock: MockUpstream, start_gateway: Callable[..., Gateway]) -> None:
    config = gateway_config(mock.origin, extra=stream_timers(idle="30s"), workers=1)
    gateway = start_gateway(config.replace('shutdown_timeout = "10s"',
                                           'shutdown_timeout = "500ms"'))
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        client = _address(sock)
        sock.sendall(_stream_request(b"stall_after=2", "drain-1"))
        received = b""
        while received.count(b"data: ") < 2:
            data = sock.recv(65536)
            assert data
            received += data
        gateway.signal(signal.SIGTERM)
        _read_all(sock)  # the drain deadline ends the stream
    gateway.wait(15)
    fields = _wait_line(gateway.log_dir / "access.log", "drain-1")
    _check_access(fields, status="200", outcome="shutdown", method="POST",
                  path="/v1/chat/completions?stall_after=<redacted>", client=client)
    errors = [line.split(" ") for line in _lines(gateway.log_dir / "error.log")
              if line.split(" ")[2:3] == ["drain-1"]]
    _check_error(errors, outcome="shutdown", route=fields[3])


def test_a_stream_past_its_maximum_duration_and_an_upstream_503(
        mock: MockUpstream, start_gateway: Callable[..., Gateway]) -> None:
    port = _free_port()
    extra = (f'[metrics]\nenabled = true\nlisten = "127.0.0.1:{port}"\n'
             + stream_timers(max_duration="1s"))
    hostile = _Gateway(start_gateway(gateway_config(mock.origin, extra=extra)), port)
    with socket.create_connection(("127.0.0.1", hostile.gateway.port), timeout=10) as sock:
        client = _address(sock)
        sock.sendall(_stream_request(b"tokens=100&delay_ms=50", "long-1"))
        received = _read_all(sock)
    assert received.startswith(b"HTTP/1.1 200") and received.count(b"data: ") < 100
    access = hostile.access_line("long-1")
    _check_access(access, status="200", outcome="max_duration", method="POST",
                  path="/v1/chat/completions?tokens=<redacted>&delay_ms=<redacted>",
                  client=client)
    _check_error(hostile.error_lines("long-1"), outcome="max_duration", route=access[3])
    hostile.outcome_count(access[3], "max_duration", 1)
    # The upstream answers 503 and no other attempt is left: upstream_error, not completed.
    with socket.create_connection(("127.0.0.1", hostile.gateway.port), timeout=10) as sock:
        client = _address(sock)
        sock.sendall(b"GET /small?fail=503 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                     b"x-request-id: fail-1\r\n\r\n")
        received = _read_all(sock)
    assert received.startswith((b"HTTP/1.1 503", b"HTTP/1.1 502")), received
    access = hostile.access_line("fail-1")
    assert access[6] == "upstream_error" and access[10:13] == ["GET", "/small?fail=<redacted>",
                                                               client]
    _check_error(hostile.error_lines("fail-1"), outcome="upstream_error", route=access[3])
    hostile.outcome_count(access[3], "upstream_error", 1)
