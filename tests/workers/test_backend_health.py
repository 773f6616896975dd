"""The shared-state backend's up/down state and its backoff (pure)."""

from __future__ import annotations

import pytest
from li_httpd.workers.backend_health import BackendHealth

MS = 1_000_000

# (event, at ms, usable after?, transition reported)
SCRIPT = [
    ("ok", 0, True, ""),
    ("fail", 10, False, "down"),        # down: no call for retry_after (100 ms)
    ("check", 50, False, ""),
    ("check", 109, False, ""),
    ("check", 110, True, ""),            # backoff over: the next call is a probe
    ("fail", 110, False, ""),            # the probe failed: still down, no new report
    ("check", 150, False, ""),
    ("check", 210, True, ""),
    ("ok", 210, True, "up"),             # the probe answered: up, reported once
    ("ok", 220, True, ""),
    ("fail", 300, False, "down"),
]


def test_down_backoff_probe_up() -> None:
    health = BackendHealth(100 * MS)
    for event, at, usable, transition in SCRIPT:
        now = at * MS
        if event == "ok":
            assert health.succeeded() == transition
        elif event == "fail":
            assert health.failed(now) == transition
        assert health.usable(now) is usable, (event, at)


@pytest.mark.parametrize("retry_ms", [1, 100, 60_000])
def test_never_two_down_reports_without_an_up(retry_ms: int) -> None:
    health = BackendHealth(retry_ms * MS)
    reports = [health.failed(i * MS) for i in range(5)]
    assert reports == ["down", "", "", "", ""]
    assert health.succeeded() == "up"
    assert health.succeeded() == ""
