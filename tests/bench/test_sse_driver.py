"""The SSE driver against a real ``li-httpd mock-upstream`` subprocess (and, for exact
numbers, a scripted in-test upstream). Small numbers; no assertion on performance."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio
from li_httpd.ops.bench.drivers import sse
from li_httpd.ops.bench.drivers.sse import SseConfig

CHAT = "/v1/chat/completions"
EVENTS = 5
PER_STREAM = EVENTS + 4  # role, tokens, finish, usage, [DONE]
TIMED_PER_STREAM = EVENTS + 3
TOP_KEYS = {"streams_requested", "streams_opened", "completed", "cut_by_driver", "errors",
            "peak_concurrent", "events", "ttfb_ms", "gap_ms", "added_delay_ms", "duration_s",
            "driver_cpu_s", "driver_cpu_pct", "first_event_ms", "loop_lag_ms"}


def _accounted(doc: dict[str, Any]) -> int:
    return (doc["completed"] + doc["cut_by_driver"] + doc["cut_before_open"]
            + sum(doc["errors"].values()))


async def test_streams_complete_with_small_added_delay(mock_url: str) -> None:
    doc = await sse.run(SseConfig(url=mock_url + CHAT, streams=20, open_rate=400,
                                  events=EVENTS, event_interval_ms=20, duration=20))
    assert doc.keys() >= TOP_KEYS
    assert doc["target"] == f"{CHAT}?tokens={EVENTS}&delay_ms=20"
    assert doc["streams_requested"] == doc["streams_started"] == doc["streams_opened"] == 20
    assert doc["completed"] == 20
    assert doc["cut_by_driver"] == 0
    assert doc["errors"] == dict.fromkeys(sse.ERROR_KINDS, 0)
    assert _accounted(doc) == 20
    assert 1 <= doc["peak_concurrent"] <= 20
    assert doc["events"] == 20 * PER_STREAM
    assert doc["events_timed"] == 20 * TIMED_PER_STREAM
    assert doc["ttfb_ms"]["count"] == doc["first_event_ms"]["count"] == 20
    assert doc["gap_ms"]["count"] == 20 * (PER_STREAM - 1)
    added = doc["added_delay_ms"]
    assert added["count"] == 20 * TIMED_PER_STREAM
    assert set(added) == {"count", "p50", "p95", "p99", "max", "mean"}
    assert added["p50"] <= added["p95"] <= added["p99"] <= added["max"]
    # Same host, same clock: never meaningfully negative; and milliseconds, not seconds
    # (the bound is loose on purpose: this is no performance assertion).
    assert added["p50"] > -1.0
    assert added["max"] < 5_000
    assert doc["ttfb_ms"]["p50"] <= doc["first_event_ms"]["p50"]
    assert doc["driver_cpu_s"] >= 0
    assert doc["duration_s"] < 20


async def test_close_after_is_a_truncated_stream(mock_url: str) -> None:
    doc = await sse.run(SseConfig(url=mock_url + CHAT, streams=6, open_rate=0, events=EVENTS,
                                  event_interval_ms=5, duration=20,
                                  query=[("close_after", "3")]))
    assert doc["target"].endswith("close_after=3")
    assert doc["completed"] == 0
    assert doc["errors"]["truncated"] == 6
    assert sum(doc["errors"].values()) == 6
    assert doc["events"] == 6 * 3


async def test_status_and_connect_errors(mock_url: str) -> None:
    doc = await sse.run(SseConfig(url=mock_url + CHAT, streams=4, open_rate=0, events=2,
                                  event_interval_ms=0, duration=20, query=[("fail", "503")]))
    assert doc["errors"]["status"] == 4
    assert doc["status_codes"] == {"503": 4}
    assert doc["completed"] == 0

    with trio.socket.socket() as unused:
        await unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        # Bound but not listening: connections are refused.
        doc = await sse.run(SseConfig(url=f"http://127.0.0.1:{port}{CHAT}", streams=3,
                                      open_rate=0, events=2, duration=10))
    assert doc["errors"]["connect"] == 3
    assert doc["streams_opened"] == 0
    assert _accounted(doc) == 3


async def test_duration_cuts_running_streams(mock_url: str) -> None:
    began = time.monotonic()
    doc = await sse.run(SseConfig(url=mock_url + CHAT, streams=10, open_rate=0, events=1000,
                                  event_interval_ms=50, duration=0.6))
    assert time.monotonic() - began < 5
    assert doc["cut_by_driver"] == 10
    assert doc["completed"] == 0
    assert sum(doc["errors"].values()) == 0
    assert doc["peak_concurrent"] == 10
    assert doc["events"] >= 10  # at least every role event arrived
    assert 0.5 <= doc["duration_s"] < 5


async def test_idle_timeout(mock_url: str) -> None:
    doc = await sse.run(SseConfig(url=mock_url + CHAT, streams=2, open_rate=0, events=EVENTS,
                                  event_interval_ms=0, duration=10, idle_timeout=0.3,
                                  query=[("stall_after", "2")]))
    assert doc["errors"]["timeout"] == 2
    assert doc["events"] == 4


async def test_added_delay_is_receive_minus_sent_at() -> None:
    """A scripted upstream that stamps every event 250 ms in the past, splits events over
    chunks, uses CRLF, sends a comment and an event per write: the driver must see 250 ms
    plus a little, per event, with every event counted once."""
    backdate = 0.25

    async def serve(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(65536)
        head, _, body = request.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                              b"transfer-encoding: chunked\r\n\r\n")
        for index in range(4):
            stamp = time.time() - backdate
            event = (b'data: {"i":%d,"x_mock_sent_at":%r}\r\n\r\n' % (index, stamp)
                     + b": ping\r\n\r\n")
            for piece in (event[:7], event[7:]):
                await stream.send_all(b"%x\r\n%s\r\n" % (len(piece), piece))
                await trio.sleep(0.005)
        await stream.send_all(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        doc = await sse.run(SseConfig(url=f"http://127.0.0.1:{port}{CHAT}", streams=3,
                                      open_rate=0, events=4, event_interval_ms=0,
                                      duration=20))
        nursery.cancel_scope.cancel()
    assert doc["completed"] == 3
    assert doc["events"] == 3 * 5
    assert doc["events_timed"] == 3 * 4
    added = doc["added_delay_ms"]
    assert added["count"] == 12
    low = backdate * 1000 - 1  # generous against float rounding of the stamp
    assert min(added["p50"], added["p95"], added["p99"], added["max"], added["mean"]) > low
    assert added["max"] < backdate * 1000 + 5_000


def test_cli_writes_json(mock_url: str, tmp_path: Path) -> None:
    out = tmp_path / "sse.json"
    result = subprocess.run(
        [sys.executable, "-m", "li_httpd.ops.bench.drivers.sse", "--url", mock_url + CHAT,
         "--streams", "8", "--open-rate", "200", "--events", "3", "--event-interval-ms", "10",
         "--duration", "20", "--query", "ttfb_ms=5&x=1", "--header", "x-bench: yes",
         "--json", str(out)],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    assert doc["completed"] == 8
    assert doc["events"] == 8 * (3 + 4)
    assert doc["target"] == f"{CHAT}?tokens=3&delay_ms=10&ttfb_ms=5&x=1"
    assert doc["nofile_limit"] >= 8
    assert "sse: 8/8 opened, 8 completed" in result.stderr

    bad = subprocess.run([sys.executable, "-m", "li_httpd.ops.bench.drivers.sse",
                          "--url", mock_url + CHAT, "--header", "no-colon"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2
    assert "header must be name:value" in bad.stderr
