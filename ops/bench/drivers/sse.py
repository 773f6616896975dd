"""SSE load driver: many concurrent streaming chat completions, per-event delay.

    python -m li_httpd.ops.bench.drivers.sse --url http://127.0.0.1:PORT/v1/chat/completions \\
        --streams 1000 --open-rate 200 --events 300 --event-interval-ms 100 --duration 30 \\
        [--query name=value[&name=value]]... [--header name:value]... [--model mock-chat] \\
        [--connect-timeout 10] [--idle-timeout S] [--json out.json]

Opens ``--streams`` streams (``POST`` with ``"stream": true``), one every
1/``--open-rate`` s (0: all at once), each asking the mock upstream for ``--events``
tokens ``--event-interval-ms`` apart by adding ``tokens=`` and ``delay_ms=`` to the URL's
query (``--query`` adds more knobs and wins over both). A chat stream from the mock has
``events + 4`` SSE events (role, tokens, finish, usage, ``[DONE]``). At ``--duration``
seconds after the start (ramp included) every stream still running is closed and
counted as ``cut_by_driver`` (not an error); streams that end earlier end the run
earlier.

Per stream: ``connect_ms`` (TCP connect), ``ttfb_ms`` (connect start to the first
response byte), ``first_event_ms`` (connect start to the first complete SSE event); per
event: ``gap_ms`` (receive time minus the previous event's in the same stream; events
that arrive in one read have gap 0) and ``added_delay_ms`` = receive time − the event's
``x_mock_sent_at`` (``time.time()`` in the mock upstream, which must run on the same host:
same clock). Receive time is ``time.time()`` right after the ``recv`` that completed the
event, so the figure includes the kernel and the driver's own scheduling; check
``loop_lag_ms`` and ``driver_cpu_pct`` before blaming the gateway. It is the gateway's
added delay only if the upstream stamps an event when it writes it: an upstream that
stamps an event before pausing ``delay_ms`` adds the pause to every event but the first.
``gap_ms`` shows the upstream's cadence: a saturated upstream stretches the gaps.

Outcomes (``streams_started`` = ``completed`` + ``cut_by_driver`` + ``cut_before_open`` +
the sum of ``errors``):

- ``completed``: ``data: [DONE]`` was seen (the driver then closes the connection);
- ``errors.connect``: the connection could not be established within
  ``--connect-timeout`` or the request could not be written;
- ``errors.status``: the response status was not 200 (``status_codes`` has the counts);
- ``errors.truncated``: the body ended — connection closed or reset, or the response
  ended cleanly — before ``data: [DONE]``;
- ``errors.timeout``: no byte for ``--idle-timeout`` s (default: max(10 s, 20 event
  intervals)), before or after the head (one watchdog task checks every
  min(0.5 s, timeout / 10), so a timeout fires up to that much late);
- ``errors.protocol``: the response is not HTTP/1.1 that httptools parses;
- ``cut_by_driver`` / ``cut_before_open``: still running (resp. still connecting) at
  ``--duration``.

``peak_concurrent`` is the most streams open at once (connected, not yet finished).

SSE parsing is incremental and cheap: decoded body bytes (chunk framing removed by
httptools, events may be split across reads and chunks) are cut at blank lines (``\\n\\n``;
``\\r\\n`` line ends are normalised first); an event block's ``x_mock_sent_at`` number is
found with one regex search, never a JSON parse; comment-only blocks (``: ping``) are not
events. ``events`` counts every event including ``[DONE]``, ``events_timed`` those that
carried ``x_mock_sent_at``.

Output (``--json``; ``-`` or absent: stdout)::

    {"driver": "sse", "url", "target", "config": {...},
     "streams_requested", "streams_started", "streams_opened", "completed",
     "cut_by_driver", "cut_before_open",
     "errors": {"connect", "status", "truncated", "timeout", "protocol"},
     "status_codes": {"502": n, ...}, "peak_concurrent", "events", "events_timed",
     "events_per_s", "connect_ms", "ttfb_ms", "first_event_ms", "gap_ms",
     "added_delay_ms", "loop_lag_ms", "duration_s", "driver_cpu_s", "driver_cpu_pct",
     "nofile_limit"}

where every ``*_ms`` is ``{"count", "p50", "p95", "p99", "max"}`` (``added_delay_ms`` also
has ``"mean"``; see ``stats.summarize``: nearest-rank percentiles, ``None`` without
samples), and ``driver_cpu_pct`` is the driver's user + system CPU time over the run's
wall time (100 = one core, the most this single-threaded driver can use).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
import trio

from .client import ClientError, Connection, Response, Target, build_request, parse_header, resolve
from .stats import CpuClock, LoopLag, raise_nofile_limit, summarize, write_json

__all__ = ["ERROR_KINDS", "SseConfig", "SseResponse", "SseRun", "main", "run"]

ERROR_KINDS = ("connect", "status", "truncated", "timeout", "protocol")
SENT_AT = re.compile(rb'"x_mock_sent_at"\s*:\s*(-?[0-9][0-9.eE+-]*)')
DONE = b"[DONE]"
DEFAULT_MODEL = "mock-chat"
MIN_IDLE_TIMEOUT = 10.0
IDLE_INTERVALS = 20


@dataclass(slots=True)
class SseConfig:
    """One run's parameters (the CLI's options)."""

    url: str
    streams: int = 100
    open_rate: float = 200.0
    events: int = 300
    event_interval_ms: float = 100.0
    duration: float = 30.0
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    model: str = DEFAULT_MODEL
    connect_timeout: float = 10.0
    idle_timeout: float | None = None

    def effective_idle_timeout(self) -> float:
        if self.idle_timeout is not None:
            return self.idle_timeout
        return max(MIN_IDLE_TIMEOUT, IDLE_INTERVALS * self.event_interval_ms / 1000.0)


class SseResponse(Response):
    """A streaming response whose body is cut into SSE events as it arrives.

    Set ``now`` (``time.time()`` of the read) before each ``feed``; every event completed
    by that read is stamped with it. ``now`` is also what the run's watchdog compares with
    the idle timeout; it cancels ``scope`` and sets ``timed_out``.
    """

    __slots__ = ("_added", "_buf", "_gaps", "_run", "done", "events", "first_event_at",
                 "last_event_at", "now", "scope", "timed_out")

    def __init__(self, run: SseRun) -> None:
        super().__init__()
        self._run = run
        self._gaps = run.gaps
        self._added = run.added
        self._buf = b""
        self.now = 0.0
        self.first_event_at = 0.0
        self.last_event_at = 0.0
        self.events = 0
        self.done = False
        self.scope = trio.CancelScope()
        self.timed_out = False

    def on_body(self, body: bytes) -> None:
        buf = self._buf + body if self._buf else body
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        start = 0
        end = buf.find(b"\n\n")
        if end < 0:
            self._buf = buf
            return
        now = self.now
        count = timed = 0
        while end >= 0:
            if end > start and not (buf[start] == 0x3A and buf.find(b"data", start, end) < 0):
                count += 1
                if self.last_event_at:
                    self._gaps.append((now - self.last_event_at) * 1000.0)
                else:
                    self.first_event_at = now
                self.last_event_at = now
                found = SENT_AT.search(buf, start, end)
                if found is not None:
                    try:
                        sent_at = float(found.group(1))
                    except ValueError:  # a malformed stamp: an untimed event
                        pass
                    else:
                        timed += 1
                        self._added.append((now - sent_at) * 1000.0)
                elif buf.find(DONE, start, end) >= 0:
                    self.done = True
            start = end + 2
            end = buf.find(b"\n\n", start)
        self._buf = buf[start:]
        self.events += count
        run = self._run
        run.events += count
        run.events_timed += timed


class SseRun:
    """The state of one run: counters and samples, filled in by the stream tasks."""

    def __init__(self, config: SseConfig, target: Target) -> None:
        self.config = config
        self.target = target.with_query([
            ("tokens", str(config.events)),
            ("delay_ms", f"{config.event_interval_ms:g}"),
            *config.query,
        ])
        body = orjson.dumps({"model": config.model, "stream": True,
                             "messages": [{"role": "user", "content": "li-httpd sse bench"}]})
        self.request = build_request("POST", self.target, body=body,
                                     content_type="application/json",
                                     headers=[("accept", "text/event-stream"),
                                              *config.headers])
        self.idle_timeout = config.effective_idle_timeout()
        self.connect_ms: array[float] = array("d")
        self.ttfb_ms: array[float] = array("d")
        self.first_event_ms: array[float] = array("d")
        self.gaps: array[float] = array("d")
        self.added: array[float] = array("d")
        self.errors: dict[str, int] = dict.fromkeys(ERROR_KINDS, 0)
        self.status_codes: Counter[int] = Counter()
        self.started = 0
        self.opened = 0
        self.completed = 0
        self.cut = 0
        self.cut_before_open = 0
        self.open_now = 0
        self.peak = 0
        self.events = 0
        self.events_timed = 0
        self.active: set[SseResponse] = set()
        self.lag = LoopLag()
        self.cpu = CpuClock()
        self.wall = 0.0
        self.cpu_s = 0.0

    async def run(self) -> dict[str, Any]:
        config = self.config
        self.cpu.start()
        began = trio.current_time()
        async with trio.open_nursery() as outer:
            outer.start_soon(self.lag.run)
            outer.start_soon(self.watchdog)
            with trio.move_on_after(config.duration):
                async with trio.open_nursery() as streams:
                    rate = config.open_rate
                    for index in range(config.streams):
                        if rate > 0 and index:
                            await trio.sleep_until(began + index / rate)
                        streams.start_soon(self.stream)
            outer.cancel_scope.cancel()
        self.wall = trio.current_time() - began
        self.cpu_s = self.cpu.elapsed()
        return self.report()

    async def watchdog(self) -> None:
        """Time out streams idle for longer than ``idle_timeout``.

        One task scanning the open streams a few times per timeout costs far less than a
        trio deadline moved on every read (a heap push and a context manager per event).
        """
        idle = self.idle_timeout
        interval = max(0.01, min(0.5, idle / 10.0))
        wall = time.time
        while True:
            await trio.sleep(interval)
            limit = wall() - idle
            for response in self.active:
                if response.now < limit and not response.timed_out:
                    response.timed_out = True
                    response.scope.cancel()

    async def stream(self) -> None:
        """One stream, from connect to ``[DONE]``, an error or the run's deadline."""
        self.started += 1
        wall = time.time
        t0 = wall()
        conn: Connection | None = None
        response: SseResponse | None = None
        outcome: str | None = None
        try:
            with trio.move_on_after(self.config.connect_timeout):
                conn = await Connection.open(self.target)
            if conn is None:
                outcome = "connect"
                return
            self.connect_ms.append((wall() - t0) * 1000.0)
            self.opened += 1
            self.open_now += 1
            self.peak = max(self.peak, self.open_now)
            await conn.send_all(self.request)
            response = SseResponse(self)
            response.now = wall()
            self.active.add(response)
            with response.scope:
                while True:
                    data = await conn.receive()
                    if not data:
                        response.feed_eof()
                        outcome = "truncated"
                        break
                    now = wall()
                    if not response.received:
                        self.ttfb_ms.append((now - t0) * 1000.0)
                    response.now = now
                    first = response.first_event_at
                    response.feed(data)
                    if not first and response.first_event_at:
                        self.first_event_ms.append((response.first_event_at - t0) * 1000.0)
                    if response.headers_done and response.status != 200:
                        self.status_codes[response.status] += 1
                        outcome = "status"
                        break
                    if response.done:
                        outcome = "completed"
                        break
                    if response.complete:
                        outcome = "truncated"
                        break
            if response.scope.cancelled_caught:
                outcome = "timeout"
        except ClientError as error:
            outcome = error.kind
        finally:
            if response is not None:
                self.active.discard(response)
            if conn is not None:
                conn.close()
                self.open_now -= 1
            self._count(outcome, opened=conn is not None)

    def _count(self, outcome: str | None, *, opened: bool) -> None:
        if outcome == "completed":
            self.completed += 1
        elif outcome is None:
            if opened:
                self.cut += 1
            else:
                self.cut_before_open += 1
        else:
            self.errors[outcome] = self.errors.get(outcome, 0) + 1

    def report(self) -> dict[str, Any]:
        config = self.config
        wall = self.wall
        return {
            "driver": "sse",
            "url": config.url,
            "target": self.target.target,
            "config": {
                "streams": config.streams, "open_rate": config.open_rate,
                "events": config.events, "event_interval_ms": config.event_interval_ms,
                "duration": config.duration, "query": [list(p) for p in config.query],
                "model": config.model, "connect_timeout": config.connect_timeout,
                "idle_timeout": self.idle_timeout,
            },
            "streams_requested": config.streams,
            "streams_started": self.started,
            "streams_opened": self.opened,
            "completed": self.completed,
            "cut_by_driver": self.cut,
            "cut_before_open": self.cut_before_open,
            "errors": dict(self.errors),
            "status_codes": {str(code): n for code, n in sorted(self.status_codes.items())},
            "peak_concurrent": self.peak,
            "events": self.events,
            "events_timed": self.events_timed,
            "events_per_s": round(self.events / wall, 1) if wall > 0 else None,
            "connect_ms": summarize(self.connect_ms),
            "ttfb_ms": summarize(self.ttfb_ms),
            "first_event_ms": summarize(self.first_event_ms),
            "gap_ms": summarize(self.gaps),
            "added_delay_ms": summarize(self.added, mean=True),
            "loop_lag_ms": summarize(self.lag.samples),
            "duration_s": round(wall, 3),
            "driver_cpu_s": round(self.cpu_s, 3),
            "driver_cpu_pct": round(100.0 * self.cpu_s / wall, 1) if wall > 0 else None,
        }


async def run(config: SseConfig) -> dict[str, Any]:
    """Run the driver in the current trio run; returns the JSON document (without
    ``nofile_limit``, which only ``main`` sets)."""
    target = await resolve(config.url)
    return await SseRun(config, target).run()


def _query_pairs(text: str) -> list[tuple[str, str]]:
    pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True)
    if not pairs:
        raise ValueError(f"empty --query: {text!r}")
    return pairs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m li_httpd.ops.bench.drivers.sse",
        description="Hold many concurrent SSE chat-completion streams open; measure time "
                    "to first byte/event, inter-event gaps and the per-event delay added "
                    "between the mock upstream and this client.")
    parser.add_argument("--url", required=True,
                        help="http://HOST:PORT/v1/chat/completions (gateway or upstream)")
    parser.add_argument("--streams", type=int, default=100, help="streams to open")
    parser.add_argument("--open-rate", type=float, default=200.0,
                        help="streams opened per second (0: all at once)")
    parser.add_argument("--events", type=int, default=300,
                        help="content tokens (SSE events) per stream (query tokens=)")
    parser.add_argument("--event-interval-ms", type=float, default=100.0,
                        help="upstream pause between events (query delay_ms=)")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="seconds from the start after which running streams are cut")
    parser.add_argument("--query", action="append", default=[], metavar="NAME=VALUE[&...]",
                        help="extra query parameters (mock knobs), repeatable")
    parser.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                        help="extra request header, repeatable")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the body's model field")
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    parser.add_argument("--idle-timeout", type=float, default=None,
                        help="seconds without a byte before a stream is a timeout error "
                             "(default max(10, 20 event intervals))")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="write the result here (default or '-': stdout)")
    return parser


def config_from_args(args: argparse.Namespace) -> SseConfig:
    query = [pair for text in args.query for pair in _query_pairs(text)]
    headers = [parse_header(text) for text in args.header]
    if args.streams < 0 or args.events < 0 or args.event_interval_ms < 0:
        raise ValueError("--streams, --events and --event-interval-ms must be >= 0")
    if args.duration <= 0 or args.open_rate < 0:
        raise ValueError("--duration must be > 0 and --open-rate >= 0")
    return SseConfig(url=args.url, streams=args.streams, open_rate=args.open_rate,
                     events=args.events, event_interval_ms=args.event_interval_ms,
                     duration=args.duration, query=query, headers=headers, model=args.model,
                     connect_timeout=args.connect_timeout, idle_timeout=args.idle_timeout)


def summary_line(doc: dict[str, Any]) -> str:
    added = doc["added_delay_ms"]
    return (f"sse: {doc['streams_opened']}/{doc['streams_requested']} opened, "
            f"{doc['completed']} completed, {doc['cut_by_driver']} cut, "
            f"errors {sum(doc['errors'].values())} {doc['errors']}, "
            f"peak {doc['peak_concurrent']}, {doc['events']} events, "
            f"added p50/p99/max {added['p50']}/{added['p99']}/{added['max']} ms, "
            f"cpu {doc['driver_cpu_pct']}% in {doc['duration_s']} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    nofile = raise_nofile_limit()
    if config.streams + 64 > nofile:
        print(f"sse: warning: RLIMIT_NOFILE is {nofile}, fewer than {config.streams} streams "
              "can be open at once", file=sys.stderr)
    try:
        doc = trio.run(run, config)
    except (OSError, ValueError) as error:
        print(f"sse: {error}", file=sys.stderr)
        return 1
    doc["nofile_limit"] = nofile
    write_json(doc, args.json)
    print(summary_line(doc), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
