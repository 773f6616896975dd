"""The shared-state backend's up/down state, its backoff and its one probe (pure)."""

from __future__ import annotations

import pytest
from li_httpd.workers.backend_health import BackendHealth

MS = 1_000_000

# (event, at ms, expected): "call" -> may a call be made (usable), "ok"/"fail" -> the
# transition reported.
SCRIPT: list[tuple[str, int, bool | str]] = [
    ("call", 0, True),
    ("ok", 0, ""),
    ("call", 5, True),
    ("fail", 10, "down"),     # down: no call for retry_after (100 ms)
    ("call", 50, False),
    ("call", 109, False),
    ("call", 110, True),      # backoff over: this call is the probe
    ("call", 111, False),     # one probe at a time: the others do not call
    ("fail", 112, ""),        # the probe failed: still down, no second report
    ("call", 150, False),
    ("call", 212, True),      # the next probe
    ("ok", 213, "up"),        # it answered: up, reported once
    ("call", 214, True),
    ("ok", 220, ""),
    ("fail", 300, "down"),
    ("call", 301, False),
]


def test_down_backoff_probe_up() -> None:
    health = BackendHealth(100 * MS)
    for event, at, expected in SCRIPT:
        now = at * MS
        if event == "call":
            assert health.usable(now) is expected, (event, at)
        elif event == "ok":
            assert health.succeeded() == expected, (event, at)
        else:
            assert health.failed(now) == expected, (event, at)


def test_a_probe_that_never_reports_lets_the_next_one_go_after_retry_after() -> None:
    health = BackendHealth(100 * MS)
    health.failed(0)
    assert health.usable(100 * MS)       # the probe (its task was cancelled, say)
    assert not health.usable(150 * MS)
    assert health.usable(200 * MS)       # the next probe


@pytest.mark.parametrize("retry_ms", [1, 100, 60_000])
def test_never_two_down_reports_without_an_up(retry_ms: int) -> None:
    health = BackendHealth(retry_ms * MS)
    reports = [health.failed(i * MS) for i in range(5)]
    assert reports == ["down", "", "", "", ""]
    assert health.succeeded() == "up"
    assert health.succeeded() == ""
