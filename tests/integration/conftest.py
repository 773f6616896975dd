"""Fixtures that run the real processes: `li-httpd start` and `li-httpd mock-upstream`.

Everything listens on loopback with port 0 (the kernel picks a free port): the gateway
prints its real address in the startup banner and the mock upstream in its first line,
which the fixtures parse. Processes are stopped (SIGTERM, then SIGKILL) at teardown.
"""

from __future__ import annotations

import abc
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from li_httpd.supervisor import control

START_TIMEOUT = 20.0
BANNER = re.compile(r"listen=(\S+)")
MOCK_LINE = re.compile(r"listening on (http://\S+)")


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "li_httpd.supervisor.cli", *args]


class _Lines:
    """Collects a stream's lines in a thread so a pipe never fills up."""

    def __init__(self, stream: object) -> None:
        self.lines: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        give_up = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    found = pattern.search(line)
                    if found:
                        return found
                seen = len(self.lines)
                remaining = give_up - time.monotonic()
                if remaining <= 0 or self.closed:
                    raise TimeoutError(f"no line matching {pattern.pattern!r}; got:\n"
                                       + "\n".join(self.lines))
                self._cond.wait(remaining)

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)


@dataclass
class Process:
    popen: subprocess.Popen[str]
    url: str
    output: _Lines

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def signal(self, number: int) -> None:
        self.popen.send_signal(number)

    def wait(self, timeout: float = 30.0) -> int:
        return self.popen.wait(timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


@dataclass
class Gateway(Process):
    config_path: Path = field(default=Path())

    @property
    def log_dir(self) -> Path:
        return self.config_path.parent / "logs"

    @property
    def control_socket(self) -> str:
        found = re.search(r'control_socket = "([^"]+)"', self.config_path.read_text())
        assert found, "gateway config has no control_socket"
        return found.group(1)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cli_command("ctl", "--socket", self.control_socket, *args),
                              capture_output=True, text=True, timeout=120, check=False)

    def workers(self) -> list[int]:
        """Pids of the current generation's running workers (from the control socket)."""
        status = self.status()
        return [w["pid"] for w in status["workers"]
                if w["generation"] == status["generation"] and w["pid"]]

    def status(self) -> dict[str, Any]:
        return control.request(self.control_socket, "status", timeout=10)

    def audit_record(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The audit record of ``request_id``, once a worker has written it."""
        path = self.log_dir / "audit.jsonl"
        give_up = time.monotonic() + timeout
        while True:
            for line in (path.read_text().splitlines() if path.exists() else []):
                record = json.loads(line)
                if record["request_id"] == request_id:
                    return dict(record)
            assert time.monotonic() < give_up, f"no audit record for {request_id}"
            time.sleep(0.05)

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10.0, **kwargs)  # type: ignore[arg-type]


@dataclass
class MockUpstream(Process):
    def stats(self) -> dict[str, int]:
        return httpx.get(f"{self.url}/stats", timeout=5).json()  # type: ignore[no-any-return]

    @property
    def origin(self) -> str:
        return self.url


def _spawn(args: list[str], pattern: re.Pattern[str], env: dict[str, str] | None = None,
           own_group: bool = False) -> tuple[subprocess.Popen[str], _Lines, re.Match[str]]:
    """``own_group``: in a process group of its own (a test may SIGKILL the group)."""
    merged = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    merged.pop("LI_HTTPD_CONFIG", None)
    popen = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=merged, process_group=0 if own_group else None)
    lines = _Lines(popen.stdout)
    try:
        found = lines.wait_for(pattern, START_TIMEOUT)
    except TimeoutError:
        popen.kill()
        popen.wait()
        raise
    return popen, lines, found


@pytest.fixture
def start_mock() -> Iterator[Callable[..., MockUpstream]]:
    started: list[MockUpstream] = []

    def start(*extra: str) -> MockUpstream:
        popen, lines, found = _spawn(cli_command("mock-upstream", "--port", "0", *extra),
                                     MOCK_LINE)
        mock = MockUpstream(popen, found.group(1), lines)
        started.append(mock)
        return mock

    yield start
    for mock in started:
        mock.stop()


@pytest.fixture
def mock(start_mock: Callable[..., MockUpstream]) -> MockUpstream:
    return start_mock()


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def start(config: str, *, name: str = "gateway.toml",
              env: dict[str, str] | None = None, own_group: bool = False) -> Gateway:
        path = tmp_path / name
        if "control_socket" not in config:
            # A private control socket per gateway (tests run many at once); unix socket
            # paths are short-limited, so not under tmp_path.
            control = tempfile.mkdtemp(prefix="lictl-") + "/control.sock"
            config = config.replace("[server]\n", f'[server]\ncontrol_socket = "{control}"\n', 1)
        if "\n[log]" not in "\n" + config:
            config += f'\n[log]\ndir = "{tmp_path / "logs"}"\n'
        path.write_text(config)
        popen, lines, found = _spawn(cli_command("start", "-c", str(path)), BANNER, env,
                                     own_group)
        gateway = Gateway(popen, found.group(1), lines, path)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


def gateway_config(upstream: str, *, routes: str | None = None, extra: str = "",
                   workers: int = 2, upstreams: str | None = None) -> str:
    """A loopback config with port 0 and one upstream pool ``main``."""
    pools = upstreams if upstreams is not None else (
        f'[upstreams.main]\npeers = ["{upstream}"]\n')
    table = routes if routes is not None else (
        '"GET /health" = "static:healthcheck"\n"/" = "proxy:main"\n')
    return (f'[server]\nlisten = "127.0.0.1:0"\nprofile = "dev"\nworkers = {workers}\n'
            f'shutdown_timeout = "10s"\n\n{pools}\n{extra}\n'
            f'[routes]\n{table}')


class RawServer(abc.ABC):
    """A loopback TCP server for tests: one thread accepts, one thread per connection runs
    :meth:`handle`. Subclasses set their own state before calling ``super().__init__()``
    (which starts accepting)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    @abc.abstractmethod
    def handle(self, conn: socket.socket) -> None:
        """Serve one accepted connection (and close it)."""

    def close(self) -> None:
        self._stop = True
        self.listener.close()


def _recv_until(conn: socket.socket, pending: bytes, enough: Callable[[bytes], bool]
                ) -> bytes | None:
    """``pending`` extended by recv until ``enough`` holds; None when the peer closes or
    the socket fails first."""
    while not enough(pending):
        try:
            data = conn.recv(65536)
        except OSError:
            return None
        if not data:
            return None
        pending += data
    return pending


def read_request(conn: socket.socket, pending: bytes) -> tuple[bytes, bytes, bytes] | None:
    """The next request on a test upstream's connection: ``(head, body, rest)``, the body
    read to its Content-Length (``pending``: bytes already received); None once the
    gateway closes the connection or it fails."""
    received = _recv_until(conn, pending, lambda data: b"\r\n\r\n" in data)
    if received is None:
        return None
    head, _, rest = received.partition(b"\r\n\r\n")
    found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head + b"\r\n")
    length = int(found.group(1)) if found else 0
    body = _recv_until(conn, rest, lambda data: len(data) >= length)
    if body is None:
        return None
    return head, body[:length], body[length:]


class RecordingUpstream(RawServer):
    """A raw TCP upstream that records every byte it receives.

    For each request head it sees it answers ``200 ok`` (Content-Length framing), which
    is enough for a gateway to complete well-formed requests; the recording is what
    tests inspect to prove that a malformed request never reached an upstream.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self._lock = threading.Lock()
        super().__init__()

    def data(self) -> bytes:
        with self._lock:
            return bytes(self.received)

    def clear(self) -> None:
        with self._lock:
            self.received.clear()

    def handle(self, conn: socket.socket) -> None:
        pending = b""
        conn.settimeout(30)
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                with self._lock:
                    self.received += data
                pending += data
                while b"\r\n\r\n" in pending:
                    head, _, pending = pending.partition(b"\r\n\r\n")
                    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head + b"\r\n")
                    if length:
                        pending = pending[int(length.group(1)):]
                    try:
                        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                                     b"content-length: 2\r\n\r\nok")
                    except OSError:
                        return


@pytest.fixture
def recording_upstream() -> Iterator[RecordingUpstream]:
    upstream = RecordingUpstream()
    yield upstream
    upstream.close()


def raw_exchange(port: int, payload: bytes, *, timeout: float = 5.0,
                 half_close: bool = False) -> bytes:
    """Send bytes on a fresh connection and read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        sock.settimeout(timeout)
        while True:
            try:
                data = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)
