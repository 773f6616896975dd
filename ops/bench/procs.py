"""Starting and stopping benchmark processes, and sampling what they cost.

:class:`Server` runs a command in its own process group, waits until it accepts HTTP,
and stops it (SIGTERM, then SIGKILL) with everything it forked. :class:`Sampler` samples
a process tree (the server and all its descendants) in a thread while a load runs: CPU
seconds (utime + stime from /proc/<pid>/stat) and memory, as the peak of the tree's
summed RSS and summed PSS (proportional set size: pages shared between forked workers
are counted once overall, which RSS would count per process).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None
                   ) -> None:
    give_up = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(
                    f"exited with status {process.returncode} before listening") from None
            if time.monotonic() > give_up:
                raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f}s") \
                    from None
            time.sleep(0.1)


@dataclass
class Server:
    """A benchmarked (or upstream) server process and its log."""

    name: str
    command: list[str]
    port: int
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    scheme: Literal["http", "https"] = "http"
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        handle = self.log.open("wb")
        self.process = subprocess.Popen(self.command, stdout=handle, stderr=subprocess.STDOUT,
                                        env={**os.environ, **self.env},
                                        start_new_session=True)
        handle.close()
        try:
            wait_listening(self.port, timeout, self.process)
        except RuntimeError as exc:
            self.stop()
            tail = self.log.read_text(errors="replace")[-800:]
            raise RuntimeError(f"{self.name}: {exc}\n{tail}") from None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group


def tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc/<pid>/task/*/children)."""
    found = [root]
    index = 0
    while index < len(found):
        pid = found[index]
        index += 1
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            with contextlib.suppress(OSError):
                children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                found.extend(int(child) for child in children)
    return found


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


class Sampler:
    """Samples a process tree until stopped; see the module docstring."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root = root
        self.interval = interval
        self.peak_rss_kib = 0
        self.peak_pss_kib = 0
        self._start_ticks: dict[int, int] = {}
        self._last_ticks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        for pid in tree(self.root):
            self._start_ticks[pid] = self._last_ticks[pid] = _cpu_ticks(pid)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        rss = pss = 0
        for pid in tree(self.root):
            ticks = _cpu_ticks(pid)
            if ticks:
                self._last_ticks[pid] = ticks
                self._start_ticks.setdefault(pid, 0)  # born during the run: count it all
            r, p = _memory_kib(pid)
            rss += r
            pss += p
        self.peak_rss_kib = max(self.peak_rss_kib, rss)
        self.peak_pss_kib = max(self.peak_pss_kib, pss)

    @property
    def cpu_seconds(self) -> float:
        ticks = sum(self._last_ticks[pid] - self._start_ticks.get(pid, 0)
                    for pid in self._last_ticks)
        return ticks / TICK
