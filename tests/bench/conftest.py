"""Fixtures for the load-driver tests: real ``li-httpd mock-upstream`` and ``li-httpd
start`` subprocesses.

Both listen on loopback port 0: the mock prints ``mock-upstream listening on
http://HOST:PORT`` once it accepts connections, the gateway prints ``listen=URL`` in its
startup banner; the fixtures parse that line and stop the process (SIGTERM, then
SIGKILL) at teardown. One mock (and one gateway) serves a whole test module.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

START_TIMEOUT = 20.0
MOCK_LINE = re.compile(r"listening on (http://\S+)")
BANNER = re.compile(r"listen=(http://\S+)")


def _spawn(args: list[str], pattern: re.Pattern[str]) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if k != "LI_HTTPD_CONFIG"}
    env["PYTHONUNBUFFERED"] = "1"
    popen = subprocess.Popen([sys.executable, "-m", "li_httpd.supervisor.cli", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:  # keeps reading, so a chatty process never blocks on a full pipe
        assert popen.stdout is not None
        for line in popen.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    give_up = time.monotonic() + START_TIMEOUT
    seen: list[str] = []
    while (left := give_up - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        found = pattern.search(line)
        if found:
            return popen, found.group(1)
    popen.kill()
    popen.wait()
    raise RuntimeError(f"{args[0]} did not start:\n" + "".join(seen))


def _stop(popen: subprocess.Popen[str]) -> None:
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(10)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a mock upstream running for the test module."""
    popen, url = _spawn(["mock-upstream", "--port", "0"], MOCK_LINE)
    try:
        yield url
    finally:
        _stop(popen)


@pytest.fixture(scope="module")
def gateway_url(mock_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a li-httpd gateway proxying everything to the mock."""
    scratch = tmp_path_factory.mktemp("gateway")
    control = tempfile.mkdtemp(prefix="lictl-") + "/control.sock"  # short unix path
    config = scratch / "gateway.toml"
    config.write_text(
        f'[server]\ncontrol_socket = "{control}"\nlisten = "127.0.0.1:0"\nprofile = "dev"\n'
        f'workers = 1\nshutdown_timeout = "10s"\n\n[upstreams.main]\npeers = ["{mock_url}"]\n\n'
        f'[log]\ndir = "{scratch / "logs"}"\n\n[routes]\n"/" = "proxy:main"\n')
    try:
        popen, url = _spawn(["start", "-c", str(config)], BANNER)
        try:
            yield url
        finally:
            _stop(popen)
    finally:
        shutil.rmtree(os.path.dirname(control), ignore_errors=True)
