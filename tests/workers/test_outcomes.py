"""The outcome vocabulary: every deadline reason maps to exactly one outcome (table)."""

from __future__ import annotations

from typing import get_args

import pytest
from li_httpd.workers.exchange import NORMAL_OUTCOMES, Outcome, deadline_outcome
from li_httpd.workers.sockio import DeadlineReason

TABLE: dict[str, str] = {
    "": "internal_error",
    "handshake": "timeout",
    "header": "timeout",
    "idle": "timeout",
    "body": "timeout",
    "send": "timeout",
    "upstream_ttfb": "ttfb_timeout",
    "upstream_idle": "idle_timeout",
    "stream_max": "max_duration",
    "client_gone": "client_gone",
    "shutdown": "shutdown",
    "heartbeat": "internal_error",
}


@pytest.mark.parametrize(("reason", "outcome"), sorted(TABLE.items()))
def test_deadline_reason_to_outcome(reason: DeadlineReason, outcome: str) -> None:
    assert deadline_outcome(reason) == outcome


def test_every_deadline_reason_is_in_the_table() -> None:
    # A new reason must get its row here (and in exchange._DEADLINE_OUTCOMES).
    assert set(get_args(DeadlineReason)) <= set(TABLE)


def test_mapped_outcomes_are_in_the_vocabulary() -> None:
    vocabulary = set(get_args(Outcome))
    assert set(TABLE.values()) <= vocabulary
    assert set(NORMAL_OUTCOMES) == {"completed", "rejected"}
    assert set(NORMAL_OUTCOMES) <= vocabulary
    assert {"upstream_cut", "upstream_error", "shutdown", "client_gone", "ttfb_timeout",
            "idle_timeout", "max_duration", "timeout", "internal_error"} <= vocabulary
