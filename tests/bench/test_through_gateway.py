"""Both drivers through a real li-httpd gateway in front of the mock upstream: the
gateway re-frames the chunked SSE body, and the drivers must still see every event, its
``x_mock_sent_at`` and the upstream's early close. No assertion on performance."""

from __future__ import annotations

import pytest
from li_httpd.ops.bench.drivers import latency, sse
from li_httpd.ops.bench.drivers.latency import LatencyConfig
from li_httpd.ops.bench.drivers.sse import SseConfig

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
BODY = b'{"model":"mock-chat","messages":[{"role":"user","content":"hi"}]}'


async def test_sse_through_gateway(gateway_url: str) -> None:
    doc = await sse.run(SseConfig(url=gateway_url + CHAT, streams=10, open_rate=0, events=5,
                                  event_interval_ms=10, duration=20))
    assert doc["completed"] == 10
    assert sum(doc["errors"].values()) == 0
    assert doc["events"] == 10 * (5 + 4)
    assert doc["events_timed"] == 10 * (5 + 3)
    assert doc["added_delay_ms"]["p50"] > -1.0


async def test_upstream_close_through_gateway_is_truncated(gateway_url: str) -> None:
    doc = await sse.run(SseConfig(url=gateway_url + CHAT, streams=4, open_rate=0, events=5,
                                  event_interval_ms=5, duration=20,
                                  query=[("close_after", "3")]))
    assert doc["completed"] == 0
    assert doc["errors"]["truncated"] == 4


async def test_latency_through_gateway_with_baseline(gateway_url: str, mock_url: str) -> None:
    doc = await latency.run(LatencyConfig(url=gateway_url + CHAT, body=BODY, concurrency=[2],
                                          requests_per_level=40, warmup=4,
                                          baseline_url=mock_url + CHAT))
    (level,) = doc["levels"]
    assert level["requests"] == 40
    assert level["errors"] == 0
    assert set(level["added_ms"]) == {"p50", "p95", "p99", "max", "mean"}
