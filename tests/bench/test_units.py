"""Unit tests of the load drivers' pieces: percentile math, URL/query handling, request
bytes, response framing and the incremental SSE parser (no network)."""

from __future__ import annotations

import random
import socket

import orjson
import pytest
from li_httpd.ops.bench.drivers import sse
from li_httpd.ops.bench.drivers.client import (
    ClientError,
    Response,
    Target,
    build_request,
    parse_header,
    split_url,
    with_query,
)
from li_httpd.ops.bench.drivers.latency import parse_concurrency
from li_httpd.ops.bench.drivers.stats import percentile, subtract, summarize

# ------------------------------------------------------------------------ percentiles


def test_percentile_nearest_rank_on_1_to_100() -> None:
    samples = [float(n) for n in range(1, 101)]
    random.Random(7).shuffle(samples)
    assert summarize(samples) == {"count": 100, "p50": 50.0, "p95": 95.0, "p99": 99.0,
                                  "max": 100.0}


def test_percentile_small_samples_take_measured_values() -> None:
    ten = [float(n) for n in range(10, 0, -1)]  # 10..1, unordered on purpose
    # rank = ceil(p/100 * n): p50 -> 5th, p95 -> ceil(9.5) = 10th, p99 -> 10th
    assert summarize(ten) == {"count": 10, "p50": 5.0, "p95": 10.0, "p99": 10.0, "max": 10.0}
    assert summarize([3.0]) == {"count": 1, "p50": 3.0, "p95": 3.0, "p99": 3.0, "max": 3.0}
    assert summarize([2.0, 1.0]) == {"count": 2, "p50": 1.0, "p95": 2.0, "p99": 2.0,
                                     "max": 2.0}


def test_percentile_on_1000_samples_and_edges() -> None:
    ordered = [n / 10 for n in range(1, 1001)]  # 0.1 .. 100.0
    assert percentile(ordered, 50) == 50.0
    assert percentile(ordered, 99) == 99.0
    assert percentile(ordered, 99.9) == 99.9
    assert percentile(ordered, 100) == 100.0
    assert percentile(ordered, 0) == 0.1
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(ordered, 101)


def test_summary_mean_rounding_and_empty() -> None:
    summary = summarize([1.0, 2.0, 4.0, 1.00049], mean=True)
    assert summary["mean"] == 2.0
    assert summary["p50"] == 1.0
    assert summarize([0.12345], count=False) == {"p50": 0.123, "p95": 0.123, "p99": 0.123,
                                                 "max": 0.123}
    assert summarize([], mean=True) == {"count": 0, "p50": None, "p95": None, "p99": None,
                                        "max": None, "mean": None}


def test_subtract_is_key_wise_and_skips_count() -> None:
    gateway = {"count": 5, "p50": 1.5, "p95": 2.0, "p99": None, "max": 9.0}
    baseline = {"count": 9, "p50": 1.0, "p95": 2.5, "p99": 3.0}
    assert subtract(gateway, baseline) == {"p50": 0.5, "p95": -0.5, "p99": None}


# ---------------------------------------------------------------------- URLs, requests


def test_split_url_and_query_merge() -> None:
    assert split_url("http://127.0.0.1:8080/v1/chat/completions?a=1") == (
        "127.0.0.1", 8080, "127.0.0.1:8080", "/v1/chat/completions?a=1")
    assert split_url("http://example.test") == ("example.test", 80, "example.test", "/")
    assert split_url("http://[::1]:81/x")[:3] == ("::1", 81, "[::1]:81")
    with pytest.raises(ValueError):
        split_url("https://example.test/")
    merged = with_query("/p?tokens=1&keep=yes", [("tokens", "5"), ("delay_ms", "20"),
                                                  ("tokens", "7")])
    assert merged == "/p?keep=yes&delay_ms=20&tokens=7"
    assert with_query("/p", []) == "/p"


def test_build_request_and_headers() -> None:
    target = Target(socket.AF_INET, ("127.0.0.1", 9), "h:9", "/x?y=1")
    raw = build_request("POST", target, body=b"{}", content_type="application/json",
                        headers=[parse_header("Authorization: Bearer k"), ("x-a", "b")])
    assert raw == (b"POST /x?y=1 HTTP/1.1\r\nhost: h:9\r\ncontent-type: application/json\r\n"
                   b"content-length: 2\r\nAuthorization: Bearer k\r\nx-a: b\r\n\r\n{}")
    assert build_request("GET", target, headers=[("Host", "other")]) == (
        b"GET /x?y=1 HTTP/1.1\r\nHost: other\r\n\r\n")
    assert parse_header("x-k:v") == ("x-k", "v")
    for bad in ("novalue", ": v", "a b: c"):
        with pytest.raises(ValueError):
            parse_header(bad)
    assert parse_concurrency("1, 4,16") == [1, 4, 16]
    with pytest.raises(ValueError):
        parse_concurrency("0,2")


# --------------------------------------------------------------------- response framing


def test_response_framing() -> None:
    fixed = Response()
    fixed.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab")
    assert fixed.headers_done and fixed.status == 200 and not fixed.complete
    fixed.feed(b"cde")
    assert fixed.complete and fixed.keep_alive and fixed.body_bytes == 5

    short = Response()
    short.feed(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab")
    with pytest.raises(ClientError) as caught:
        short.feed_eof()
    assert caught.value.kind == "truncated"

    until_close = Response()
    until_close.feed(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nsome body")
    until_close.feed_eof()
    assert until_close.complete and not until_close.keep_alive

    closing = Response()
    closing.feed(b"HTTP/1.1 503 Busy\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
    assert closing.complete and closing.status == 503 and not closing.keep_alive

    with pytest.raises(ClientError) as caught:
        Response().feed(b"SPDY/9 what\r\n\r\n")
    assert caught.value.kind == "protocol"
    with pytest.raises(ClientError) as caught:
        Response().feed_eof()
    assert caught.value.kind == "truncated"


# ----------------------------------------------------------------------- SSE parsing


def _sse_run() -> sse.SseRun:
    target = Target(socket.AF_INET, ("127.0.0.1", 9), "h:9", "/v1/chat/completions")
    return sse.SseRun(sse.SseConfig(url="http://h:9/v1/chat/completions", events=3,
                                    event_interval_ms=20), target)


def _chunked_sse(events: list[bytes]) -> bytes:
    head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n")
    body = b"".join(b"%x\r\n%s\r\n" % (len(event), event) for event in events)
    return head + body + b"0\r\n\r\n"


def _event(sent_at: float, text: str) -> bytes:
    payload = orjson.dumps({"choices": [{"delta": {"content": text}}], "x_mock_sent_at": sent_at})
    return b"data: " + payload + b"\n\n"


def test_sse_run_target_carries_knobs() -> None:
    run = _sse_run()
    assert run.target.target == "/v1/chat/completions?tokens=3&delay_ms=20"
    assert run.request.startswith(b"POST /v1/chat/completions?tokens=3&delay_ms=20 HTTP/1.1\r\n")
    assert b'"stream":true' in run.request


@pytest.mark.parametrize("crlf", [False, True])
def test_sse_parser_split_at_every_byte(crlf: bool) -> None:
    """Every split point of a chunked SSE response gives the same events, and each event
    is stamped with the time of the read that completed it."""
    sent = (1000.0, 1000.25, 1000.5)
    events = [_event(sent[0], "a"), b": keep-alive comment\n\n", _event(sent[1], "b"),
              _event(sent[2], "c\u00e9"), b"data: [DONE]\n\n"]
    # Two events in one chunk, one event split over two chunks.
    chunks = [events[0] + events[1], events[2][:10], events[2][10:], events[3], events[4]]
    terminator = b"\n\n"
    if crlf:
        chunks = [chunk.replace(b"\n", b"\r\n") for chunk in chunks]
        terminator = b"\r\n\r\n"
    wire = _chunked_sse(chunks)
    # Where each timed event's terminating blank line ends on the wire.
    ends = []
    for stamp in sent:
        marker = b'"x_mock_sent_at":%s}' % repr(stamp).encode()
        ends.append(wire.index(marker) + len(marker) + len(terminator))
    for split in range(1, len(wire)):
        run = _sse_run()
        response = sse.SseResponse(run)
        response.now = 1001.0
        response.feed(wire[:split])
        response.now = 1002.0
        response.feed(wire[split:])
        assert response.complete and response.done, split
        assert response.events == run.events == 4, split  # the comment is not an event
        assert run.events_timed == 3
        expected = [((1001.0 if end <= split else 1002.0) - stamp) * 1000.0
                    for end, stamp in zip(ends, sent, strict=True)]
        assert list(run.added) == pytest.approx(expected), split
        assert len(run.gaps) == 3


def test_sse_done_and_gaps() -> None:
    run = _sse_run()
    response = sse.SseResponse(run)
    response.now = 10.0
    response.feed(b"HTTP/1.1 200 OK\r\ncontent-length: 2000\r\n\r\n")
    response.feed(_event(9.999, "x"))
    response.now = 10.1
    response.feed(_event(10.05, "y") + b"data:[DONE]\n\n")
    assert response.done and not response.complete
    assert list(run.gaps) == pytest.approx([100.0, 0.0])
    assert list(run.added) == pytest.approx([1.0, 50.0])
    assert response.first_event_at == 10.0


def test_sse_malformed_stamp_is_an_untimed_event() -> None:
    run = _sse_run()
    response = sse.SseResponse(run)
    response.now = 5.0
    response.feed(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"
                  b'data: {"x_mock_sent_at":1.2.3}\n\ndata: {"x_mock_sent_at": 4.5e0}\n\n')
    assert run.events == 2
    assert run.events_timed == 1
    assert list(run.added) == [500.0]
