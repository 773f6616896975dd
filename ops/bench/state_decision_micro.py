"""What one rate-limit decision costs: shared memory vs Redis, one request at a time.

    python -m li_httpd.ops.bench.state_decision_micro [--decisions 20000] [--redis-port 0]

Starts a private redis-server on a free loopback port (unless ``--redis-port`` names a
running one), then times admit + release of one key in a loop: ``local`` is
:meth:`SharedState.admit` / ``release_stream`` (an fcntl lock, no await), ``redis`` is
:meth:`RemoteLimits.admit` (one EVALSHA round trip over a pooled trio connection) and
``release`` (queued; sent by the background task, as in a worker). Prints wall time and
this process's CPU time per decision (the server's CPU is not counted: Redis runs
elsewhere in production). Not a test; no test asserts on its timings.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time

import trio
from li_httpd.config.checks import RedisUrl
from li_httpd.config.model import State
from li_httpd.shm import Layout, SharedState, gcra
from li_httpd.workers.redis_client import RedisPool
from li_httpd.workers.shared_limits import RemoteLimits, key_digest

from .procs import free_port, wait_listening

RATE = gcra.Rate.of(100_000, 100_000)


def local(decisions: int) -> tuple[float, float]:
    shared = SharedState.create(Layout(64, 2, 1))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(decisions):
        admission = shared.admit(12345, RATE, 100_000)
        shared.release_stream(admission.index)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    shared.close()
    return wall / decisions, cpu / decisions


async def remote(decisions: int, port: int) -> tuple[float, float]:
    state = State(backend="redis", url=f"redis://127.0.0.1:{port}", key_prefix="micro:")
    pool = RedisPool(RedisUrl(False, "127.0.0.1", port, 0, ""), None, 4, 1.0)
    limits = RemoteLimits(state, pool, 0, "micro")
    digest = key_digest(b"route", b"key")
    async with trio.open_nursery() as nursery:
        await nursery.start(limits.run)
        for _ in range(200):  # warm: connection open, script loaded
            verdict = await limits.admit(digest, RATE.interval_ns, RATE.tolerance_ns, 100_000)
            limits.release(verdict.lease)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(decisions):
            verdict = await limits.admit(digest, RATE.interval_ns, RATE.tolerance_ns, 100_000)
            assert verdict.allowed and not verdict.fallback, verdict
            limits.release(verdict.lease)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        nursery.cancel_scope.cancel()
    return wall / decisions, cpu / decisions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--redis-port", type=int, default=0)
    args = parser.parse_args(argv)
    server = None
    port = args.redis_port
    if not port:
        port = free_port()
        directory = tempfile.mkdtemp(prefix="micro-redis-")
        server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no", "--dir", directory],
                                  stdout=subprocess.DEVNULL)
        wait_listening(port, 10, None)
    try:
        for name, (wall, cpu) in (("local", local(args.decisions)),
                                  ("redis", trio.run(remote, args.decisions, port))):
            print(f"{name:6} {wall * 1e6:8.1f} us wall/decision  {cpu * 1e6:8.1f} us CPU "
                  "(this process)")
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
