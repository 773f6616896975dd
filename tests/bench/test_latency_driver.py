"""The latency driver against a real ``li-httpd mock-upstream`` subprocess. Small
numbers; no assertion on performance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trio
from li_httpd.ops.bench.drivers import latency
from li_httpd.ops.bench.drivers.latency import LatencyConfig

CHAT = "/v1/chat/completions"
BODY = b'{"model":"mock-chat","messages":[{"role":"user","content":"hi"}],"max_tokens":8}'
STATS = {"p50", "p95", "p99", "max", "mean"}


async def test_levels_with_baseline(mock_url: str) -> None:
    doc = await latency.run(LatencyConfig(url=mock_url + CHAT, body=BODY, concurrency=[1, 4],
                                          requests_per_level=60, warmup=8,
                                          baseline_url=mock_url + CHAT))
    assert doc["driver"] == "latency"
    assert doc["body_bytes"] == len(BODY)
    assert [level["concurrency"] for level in doc["levels"]] == [1, 4]
    for level in doc["levels"]:
        assert level["requests"] == 60
        assert level["errors"] == 0
        assert level["rps"] > 0
        for key in ("latency_ms", "baseline_latency_ms", "added_ms"):
            assert set(level[key]) == STATS, key
        lat, base, added = level["latency_ms"], level["baseline_latency_ms"], level["added_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        for key in STATS:
            assert abs(added[key] - round(lat[key] - base[key], 3)) < 0.0015
        assert level["baseline_errors"] == 0
        assert level["baseline_rps"] > 0
        assert level["reconnects"] == 0


async def test_errors_and_no_baseline(mock_url: str) -> None:
    doc = await latency.run(LatencyConfig(url=mock_url + CHAT + "?fail=502", body=BODY,
                                          concurrency=[2], requests_per_level=10, warmup=0))
    (level,) = doc["levels"]
    assert level["requests"] == 0
    assert level["errors"] == 10
    assert level["errors_by_kind"]["status"] == 10
    assert level["status_codes"] == {"502": 10}
    assert level["latency_ms"] == {}
    assert level["added_ms"] is None and level["baseline_latency_ms"] is None

    with trio.socket.socket() as unused:
        await unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        doc = await latency.run(LatencyConfig(url=f"http://127.0.0.1:{port}/", method="GET",
                                              concurrency=[2], requests_per_level=5,
                                              warmup=0))
    assert doc["levels"][0]["errors_by_kind"]["connect"] == 5


async def test_server_closing_connections_is_not_an_error(mock_url: str) -> None:
    """``Connection: close`` on every response: the driver reconnects (timed)."""
    doc = await latency.run(LatencyConfig(url=mock_url + "/small", method="GET",
                                          headers=[("connection", "close")],
                                          concurrency=[3], requests_per_level=20, warmup=0))
    (level,) = doc["levels"]
    assert level["requests"] == 20
    assert level["errors"] == 0
    assert level["reconnects"] >= 17  # the first request per client uses the pre-opened one


async def test_timeout(mock_url: str) -> None:
    doc = await latency.run(LatencyConfig(url=mock_url + "/small?ttfb_ms=2000", method="GET",
                                          concurrency=[2], requests_per_level=2, warmup=0,
                                          timeout=0.2))
    assert doc["levels"][0]["errors_by_kind"]["timeout"] == 2


def test_cli_writes_json(mock_url: str, tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_bytes(BODY)
    out = tmp_path / "latency.json"
    result = subprocess.run(
        [sys.executable, "-m", "li_httpd.ops.bench.drivers.latency", "--url", mock_url + CHAT,
         "--body-file", str(body), "--concurrency", "1,2", "--requests-per-level", "20",
         "--warmup", "2", "--baseline-url", mock_url + CHAT, "--header", "x-k: v",
         "--json", str(out)],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    assert doc["method"] == "POST"
    assert [(level["concurrency"], level["requests"]) for level in doc["levels"]] == [
        (1, 20), (2, 20)]
    assert all(set(level["added_ms"]) == STATS for level in doc["levels"])
    assert result.stderr.startswith("latency: c1: ")
