"""Latency driver: keep-alive request latency at several concurrency levels.

    python -m li_httpd.ops.bench.drivers.latency --url URL (--body-file body.json | --body '{...}')
        [--method POST] [--header name:value]... [--content-type application/json]
        --concurrency 1,4,16,64 --requests-per-level 2000 [--warmup 200]
        [--baseline-url URL_DIRECT_TO_UPSTREAM] [--timeout 30] [--expect-status 200]
        [--json out.json]

For each concurrency level C, C clients each hold one keep-alive connection and send
requests back to back (a new request as soon as the previous response is complete; no
pipelining). The C connections are opened first (not timed), then ``--warmup`` requests
are sent and thrown away, then ``--requests-per-level`` requests are timed: latency is
from the first byte written to the last byte of the response read
(``time.perf_counter``), ``rps`` is the successful requests over the timed phase's wall
time. Requests are shared by the C clients (a counter, not a fixed split), so a slow
connection does not stretch the phase.

A connection the server closes (``Connection: close``, EOF) is re-opened for the next
request and that reconnect is inside the next request's latency (``reconnects`` counts
them); a request that fails on a reused connection before any response byte (the server
closed an idle connection) is retried once on a fresh one. Errors — ``connect``,
``status`` (not ``--expect-status``), ``timeout`` (``--timeout`` s per request),
``truncated``, ``protocol`` — are counted and left out of the percentiles.

With ``--baseline-url`` every level is first run directly against the upstream with the
same body, headers and concurrency, then against ``--url``; ``added_ms`` is the gateway's
percentile minus the baseline's percentile, key by key (how published AI-gateway
benchmarks report overhead; a difference of percentiles, not a percentile of
differences, so it can be slightly negative for a fast gateway).

Output (``--json``; ``-`` or absent: stdout)::

    {"driver": "latency", "url", "baseline_url", "method", "body_bytes",
     "requests_per_level", "warmup",
     "levels": [{"concurrency", "requests", "rps", "latency_ms", "errors",
                 "errors_by_kind": {...}, "status_codes": {...}, "reconnects",
                 "driver_cpu_pct", "baseline_rps", "baseline_latency_ms",
                 "baseline_errors", "added_ms"}],
     "duration_s", "driver_cpu_s"}

``latency_ms`` / ``baseline_latency_ms`` / ``added_ms`` are ``{"p50", "p95", "p99", "max",
"mean"}`` in milliseconds (nearest-rank percentiles, see ``stats.summarize``; empty when
no request succeeded); the ``baseline_*`` fields and ``added_ms`` are ``null`` without
``--baseline-url``. ``errors`` is the total, ``errors_by_kind`` the breakdown.
``driver_cpu_pct`` (100 = one core) tells a saturated driver from a slow server.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from .client import (
    ClientError,
    Connection,
    Response,
    Target,
    build_request,
    exchange,
    parse_header,
    resolve,
)
from .stats import CpuClock, raise_nofile_limit, subtract, summarize, write_json

__all__ = ["ERROR_KINDS", "LatencyConfig", "LevelResult", "main", "measure_level", "run"]

ERROR_KINDS = ("connect", "status", "timeout", "truncated", "protocol")


@dataclass(slots=True)
class LatencyConfig:
    """One run's parameters (the CLI's options)."""

    url: str
    body: bytes = b""
    method: str = "POST"
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str | None = "application/json"
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    requests_per_level: int = 2000
    warmup: int = 200
    baseline_url: str | None = None
    timeout: float = 30.0
    expect_status: int = 200


@dataclass(slots=True)
class LevelResult:
    """One concurrency level against one URL."""

    concurrency: int
    requests: int = 0
    wall: float = 0.0
    cpu: float = 0.0
    reconnects: int = 0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    status_codes: Counter[int] = field(default_factory=Counter)

    @property
    def rps(self) -> float:
        return round(self.requests / self.wall, 1) if self.wall > 0 else 0.0

    def latency_ms(self) -> dict[str, Any]:
        summary = summarize(self.latencies, mean=True, count=False)
        return {key: value for key, value in summary.items() if value is not None}


class _Client:
    """One of the C clients: a connection slot and the request loop."""

    __slots__ = ("conn", "request", "result", "target", "timeout", "want")

    def __init__(self, target: Target, request: bytes, config: LatencyConfig,
                 result: LevelResult) -> None:
        self.target = target
        self.request = request
        self.timeout = config.timeout
        self.want = config.expect_status
        self.result = result
        self.conn: Connection | None = None

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    async def connect(self) -> None:
        """Open the connection if there is none (errors are left to the first request)."""
        if self.conn is None:
            with trio.move_on_after(self.timeout), contextlib.suppress(ClientError):
                self.conn = await Connection.open(self.target)

    async def one(self, record: bool) -> None:
        result = self.result
        started = time.perf_counter()
        kind: str | None = None
        response: Response | None = None
        with trio.move_on_after(self.timeout) as scope:
            for _attempt in (0, 1):
                reused = self.conn is not None
                try:
                    if self.conn is None:
                        self.conn = await Connection.open(self.target)
                        if record:
                            result.reconnects += 1
                    response = Response(head_only=self.request.startswith(b"HEAD "))
                    await exchange(self.conn, self.request, response)
                    kind = None
                    break
                except ClientError as error:
                    kind = error.kind
                    self.drop()
                    if not (reused and response is not None and response.received == 0):
                        break
        elapsed = time.perf_counter() - started
        if scope.cancelled_caught:
            kind = "timeout"
            self.drop()
        if kind is None and response is not None:
            if not response.keep_alive:
                self.drop()
            if response.status != self.want:
                kind = "status"
                if record:
                    result.status_codes[response.status] += 1
        if not record:
            return
        if kind is None:
            result.requests += 1
            result.latencies.append(elapsed * 1000.0)
        else:
            result.errors[kind] = result.errors.get(kind, 0) + 1

    async def loop(self, tickets: list[int], record: bool) -> None:
        while tickets[0] > 0:
            tickets[0] -= 1
            await self.one(record)


async def measure_level(config: LatencyConfig, target: Target, concurrency: int,
                        ) -> LevelResult:
    """Open ``concurrency`` connections, warm up, then time ``requests_per_level``."""
    request = build_request(config.method, target, body=config.body, headers=config.headers,
                            content_type=config.content_type)
    result = LevelResult(concurrency)
    clients = [_Client(target, request, config, result) for _ in range(concurrency)]
    try:
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(client.connect)
        for record, count in ((False, config.warmup), (True, config.requests_per_level)):
            if count <= 0:
                continue
            tickets = [count]
            cpu = CpuClock()
            began = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for client in clients:
                    nursery.start_soon(client.loop, tickets, record)
            if record:
                result.wall = time.perf_counter() - began
                result.cpu = cpu.elapsed()
    finally:
        for client in clients:
            client.drop()
    return result


def _level_doc(gateway: LevelResult, baseline: LevelResult | None) -> dict[str, Any]:
    latency = gateway.latency_ms()
    doc: dict[str, Any] = {
        "concurrency": gateway.concurrency,
        "requests": gateway.requests,
        "rps": gateway.rps,
        "latency_ms": latency,
        "errors": sum(gateway.errors.values()),
        "errors_by_kind": dict(gateway.errors),
        "status_codes": {str(code): n for code, n in sorted(gateway.status_codes.items())},
        "reconnects": gateway.reconnects,
        "driver_cpu_pct": (round(100.0 * gateway.cpu / gateway.wall, 1)
                           if gateway.wall > 0 else None),
        "baseline_rps": None,
        "baseline_latency_ms": None,
        "baseline_errors": None,
        "added_ms": None,
    }
    if baseline is not None:
        base = baseline.latency_ms()
        doc["baseline_rps"] = baseline.rps
        doc["baseline_latency_ms"] = base
        doc["baseline_errors"] = sum(baseline.errors.values())
        added = subtract(latency, base)
        doc["added_ms"] = {key: value for key, value in added.items() if value is not None}
    return doc


async def run(config: LatencyConfig) -> dict[str, Any]:
    """Run every level (baseline first when configured); returns the JSON document."""
    target = await resolve(config.url)
    baseline_target = await resolve(config.baseline_url) if config.baseline_url else None
    cpu = CpuClock()
    began = time.perf_counter()
    levels = []
    for concurrency in config.concurrency:
        baseline = None
        if baseline_target is not None:
            baseline = await measure_level(config, baseline_target, concurrency)
        gateway = await measure_level(config, target, concurrency)
        levels.append(_level_doc(gateway, baseline))
    return {
        "driver": "latency",
        "url": config.url,
        "baseline_url": config.baseline_url,
        "method": config.method,
        "body_bytes": len(config.body),
        "requests_per_level": config.requests_per_level,
        "warmup": config.warmup,
        "levels": levels,
        "duration_s": round(time.perf_counter() - began, 3),
        "driver_cpu_s": round(cpu.elapsed(), 3),
    }


def parse_concurrency(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--concurrency must be integers separated by commas: {text!r}",
                         ) from None
    if not levels or any(level < 1 for level in levels):
        raise ValueError(f"--concurrency levels must be >= 1: {text!r}")
    return levels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m li_httpd.ops.bench.drivers.latency",
        description="Keep-alive request latency percentiles and requests/s at several "
                    "concurrency levels, optionally minus a direct-to-upstream baseline.")
    parser.add_argument("--url", required=True, help="http://HOST:PORT/path[?query]")
    body = parser.add_mutually_exclusive_group()
    body.add_argument("--body-file", default=None, metavar="PATH", help="request body file")
    body.add_argument("--body", default=None, help="request body text")
    parser.add_argument("--method", default=None,
                        help="request method (default POST with a body, else GET)")
    parser.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                        help="extra request header, repeatable")
    parser.add_argument("--content-type", default="application/json",
                        help="content-type sent with a body (unless --header sets one)")
    parser.add_argument("--concurrency", default="1,4,16,64", help="levels, e.g. 1,4,16,64")
    parser.add_argument("--requests-per-level", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200,
                        help="untimed requests per level before the timed ones")
    parser.add_argument("--baseline-url", default=None,
                        help="the same endpoint directly on the upstream; adds added_ms")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--expect-status", type=int, default=200,
                        help="any other status is an error")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="write the result here (default or '-': stdout)")
    return parser


def config_from_args(args: argparse.Namespace) -> LatencyConfig:
    if args.body_file is not None:
        body = Path(args.body_file).read_bytes()
    elif args.body is not None:
        body = args.body.encode()
    else:
        body = b""
    method = (args.method or ("POST" if body else "GET")).upper()
    if args.requests_per_level < 1 or args.warmup < 0:
        raise ValueError("--requests-per-level must be >= 1 and --warmup >= 0")
    return LatencyConfig(url=args.url, body=body, method=method,
                         headers=[parse_header(text) for text in args.header],
                         content_type=args.content_type or None,
                         concurrency=parse_concurrency(args.concurrency),
                         requests_per_level=args.requests_per_level, warmup=args.warmup,
                         baseline_url=args.baseline_url, timeout=args.timeout,
                         expect_status=args.expect_status)


def summary_line(doc: dict[str, Any]) -> str:
    parts = []
    for level in doc["levels"]:
        latency = level["latency_ms"]
        text = (f"c{level['concurrency']}: {level['rps']} rps p50 {latency.get('p50')} "
                f"p99 {latency.get('p99')} ms")
        if level["added_ms"] is not None:
            text += (f" (added p50 {level['added_ms'].get('p50')} "
                     f"p99 {level['added_ms'].get('p99')} ms)")
        if level["errors"]:
            text += f" errors {level['errors']}"
        parts.append(text)
    return "latency: " + "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    raise_nofile_limit()
    try:
        doc = trio.run(run, config)
    except (OSError, ValueError) as error:
        print(f"latency: {error}", file=sys.stderr)
        return 1
    write_json(doc, args.json)
    print(summary_line(doc), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
