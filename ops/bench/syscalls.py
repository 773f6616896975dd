"""Syscalls per proxied request, li-httpd next to nginx (``bash ops/bench/syscalls``).

Each gateway runs with one worker and no access log in front of the same upstream (the
mock upstream's ``GET /small``, or nginx's fixed ``/small``); after a warm-up (so the
upstream keep-alive pool is full and every lazy import is done) ``strace -f -c`` is
attached to the gateway's worker process (the one holding the client connections) for
exactly ``requests`` keep-alive requests (``GET /small``, or with ``--request chat`` a
chat completion POST), sent by a small blocking client in this process
(``concurrency`` connections, one thread each, every request read to its end before
the next). strace's summary divided by the request count is the table: calls per
request by syscall name and in total.

Why strace and not perf: every syscall is counted (nothing sampled), so the same build
gives the same numbers run after run, up to the background of the worker's own timers
(``idle background``: housekeeping's 10 Hz tick, measured over a window with no
requests and printed next to each table so a reader can subtract it). Calls that failed
(EAGAIN: a read tried before the data was there) are shown per request too. The seconds
strace reports are left out: strace stops the worker at every call, which makes it
several times slower. That also skews what depends on timing: how many ready
connections one ``epoll_wait`` returns with 16 connections, and whether a read tried
without waiting would find data (the slowed worker gives the client time to send its
next request first, which it would not have unslowed). Counts that follow from the code
path alone (reads, writes, ``epoll_ctl``, the reuse check) are exact.

The gateway under test may be another build's interpreter (``--li-python``), so this
module drives it only as a process: no li_httpd.workers here.

May import: li_httpd.ops.bench.procs, li_httpd.ops.bench.render.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from .procs import Server, free_port, tree
from .render import gateway_li, gateway_nginx, upstream_nginx

CHAT_BODY = (b'{"messages":[{"role":"system","content":"You are a helpful assistant."},'
             b'{"role":"user","content":"Say hello in five words."}],'
             b'"model":"gpt-4o-mini","max_tokens":64}')
REQUESTS = {
    "get": b"GET /small HTTP/1.1\r\nhost: 127.0.0.1\r\nuser-agent: syscalls\r\n\r\n",
    # What an OpenAI SDK sends (the body of ops/bench/inproc.py's chat request).
    "chat": (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
             b"user-agent: syscalls\r\ncontent-type: application/json\r\n"
             b"content-length: %d\r\n\r\n%s" % (len(CHAT_BODY), CHAT_BODY)),
}
WARMUP = 300
IDLE_WINDOW = 2.0
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


class Client:
    """One keep-alive connection that sends a request and reads its response to the end."""

    def __init__(self, port: int, request: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request = request
        self.buffered = b""

    def get(self) -> None:
        self.sock.sendall(self.request)
        while b"\r\n\r\n" not in self.buffered:
            self._more()
        head, _, rest = self.buffered.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"unexpected response: {head[:200]!r}")
        match = _CONTENT_LENGTH.search(head)
        if match is None:
            raise RuntimeError(f"no content-length: {head[:300]!r}")
        length = int(match.group(1))
        while len(rest) < length:
            rest += self._recv()
        self.buffered = rest[length:]

    def _more(self) -> None:
        self.buffered += self._recv()

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError("the gateway closed the connection")
        return data

    def close(self) -> None:
        self.sock.close()


def run_load(clients: Sequence[Client], requests: int) -> None:
    """Exactly ``requests`` GETs spread over ``clients`` (one thread each)."""
    share = [requests // len(clients) + (1 if i < requests % len(clients) else 0)
             for i in range(len(clients))]
    errors: list[BaseException] = []

    def drive(client: Client, count: int) -> None:
        try:
            for _ in range(count):
                client.get()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=drive, args=(c, n)) for c, n in zip(clients, share,
                                                                          strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"load failed: {errors[0]!r}")


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def serving_pid(root: int, port: int) -> int:
    """The process under ``root`` that holds an established connection on ``port``
    (call while a client is connected): the worker to trace."""
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01":
                    established.add(int(fields[9]))
    for pid in tree(root):
        if _socket_inodes(pid) & established:
            return pid
    raise RuntimeError(f"no process under {root} holds a connection on port {port}")


class Calls(NamedTuple):
    calls: int
    failed: int
    """Calls that returned an error (EAGAIN: work for nothing)."""


class Strace:
    """``strace -f -c`` attached to a running process until :meth:`stop`."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self.process = subprocess.Popen(
            ["strace", "-f", "-c", "-U", "name,calls,errors", "-o", str(out), "-p", str(pid)],
            stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        line = self.process.stderr.readline()  # "strace: Process N attached"
        if "attached" not in line:
            raise RuntimeError(f"strace did not attach: {line.strip()}")
        time.sleep(0.3)  # the other threads' "attached" lines; the worker is idle now

    def stop(self) -> dict[str, Calls]:
        self.process.send_signal(signal.SIGINT)
        self.process.communicate(timeout=30)
        counts: dict[str, Calls] = {}
        for line in self.out.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit() and not line.startswith("-"):
                failed = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else 0
                counts[fields[0]] = Calls(int(fields[1]), failed)
        counts.pop("total", None)
        return counts


def measure(server_pid: int, port: int, request: bytes, requests: int, concurrency: int,
            work: Path, label: str) -> tuple[dict[str, Calls], float]:
    """(syscall counts over ``requests`` requests, the worker's idle syscalls/s)."""
    clients = [Client(port, request) for _ in range(concurrency)]
    try:
        run_load(clients, max(WARMUP, 10 * concurrency))
        worker = serving_pid(server_pid, port)
        idle_trace = Strace(worker, work / f"{label}.idle.strace")
        time.sleep(IDLE_WINDOW)
        idle = sum(c.calls for c in idle_trace.stop().values()) / IDLE_WINDOW
        trace = Strace(worker, work / f"{label}.strace")
        try:
            run_load(clients, requests)
        finally:
            counts = trace.stop()
    finally:
        for client in clients:
            client.close()
    return counts, idle


def report(label: str, counts: dict[str, Calls], idle: float, requests: int) -> None:
    total = sum(c.calls for c in counts.values())
    print(f"{label}: {total / requests:.2f} syscalls per request "
          f"({total} calls / {requests} requests; idle background {idle:.1f}/s)")
    for name, (calls, failed) in sorted(counts.items(), key=lambda item: (-item[1].calls,
                                                                          item[0])):
        per = calls / requests
        if per >= 0.005:
            errors = f"  ({failed / requests:.2f} failed)" if failed / requests >= 0.005 else ""
            print(f"    {name:<18} {per:8.2f}{errors}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, action="append",
                        help="client connections (repeatable; default 1 and 16)")
    parser.add_argument("--li-python", action="append",
                        help="interpreter of a li-httpd install to measure (repeatable; "
                             "default: this one)")
    parser.add_argument("--upstream", choices=("mock", "nginx"), default="mock")
    parser.add_argument("--request", choices=sorted(REQUESTS), default="get",
                        help="get: GET /small; chat: a chat completion POST (mock only)")
    parser.add_argument("--no-nginx", action="store_true", help="skip the nginx gateway")
    args = parser.parse_args(argv)
    concurrencies = args.concurrency or [1, 16]
    pythons = args.li_python or [sys.executable]
    with tempfile.TemporaryDirectory(prefix="li-syscalls-") as tmp:
        work = Path(tmp)
        (work / "static").mkdir()
        upstream_port = free_port()
        if args.upstream == "mock":
            upstream = Server("mock", [sys.executable, "-m", "li_httpd.ops.mock_upstream",
                                       "--port", str(upstream_port)], upstream_port,
                              work / "mock.log")
        else:
            conf = work / "upstream.conf"
            conf.write_text(upstream_nginx(work, upstream_port, work / "static"))
            upstream = Server("upstream-nginx", ["nginx", "-p", str(work), "-c", str(conf)],
                              upstream_port, work / "upstream.log")
        upstream.start()
        config = {"global": {"workers": 1}}
        origin = [f"http://127.0.0.1:{upstream_port}"]
        gateways: list[tuple[str, list[str]]] = [
            (f"li ({python})", [python, "-m", "li_httpd.supervisor.cli", "start", "-c",
                                str(work / f"li-{index}.toml")])
            for index, python in enumerate(pythons)]
        if not args.no_nginx:
            gateways.append(("nginx", ["nginx", "-p", str(work), "-c",
                                       str(work / "gateway-nginx.conf")]))
        try:
            for index, (label, command) in enumerate(gateways):
                port = free_port()
                if label == "nginx":
                    (work / "gateway-nginx.conf").write_text(
                        gateway_nginx(config, work, port, origin, work / "static"))
                else:
                    (work / f"li-{index}").mkdir()
                    Path(command[-1]).write_text(gateway_li(config, work / f"li-{index}", port,
                                                            origin, work / "static"))
                server = Server(label.split()[0], command, port, work / f"gw-{index}.log")
                server.start()
                try:
                    for concurrency in concurrencies:
                        counts, idle = measure(server.pid, port, REQUESTS[args.request],
                                               args.requests,
                                               concurrency, work, f"gw-{index}-c{concurrency}")
                        report(f"{label}, {args.request}, {concurrency} connection(s)",
                               counts, idle,
                               args.requests)
                finally:
                    server.stop()
        finally:
            upstream.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
