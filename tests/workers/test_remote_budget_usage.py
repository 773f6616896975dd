"""Reading a Redis budget hash back (ctl status, /metrics): the same windows as the
reserve script and shared memory, and malformed fields refused rather than misread."""

from __future__ import annotations

import pytest
from li_httpd.shm import BudgetUsage, budget
from li_httpd.workers.resp import Reply
from li_httpd.workers.shared_limits import budget_key, remote_budget_usage

LIMITS = budget.Limits.of(1000, 5.0, 3_600_000)  # 1000 tokens/min, $5 an hour
NOW_MS = 1_800_000_123_456
MINUTE = NOW_MS // 60_000
HOUR = NOW_MS // 3_600_000


def _expected(tokens: int, token_window: int, micro: int, usd_window: int) -> BudgetUsage:
    return BudgetUsage(tokens, token_window * 60_000_000_000, micro,
                       usd_window * 3_600_000_000_000)


@pytest.mark.parametrize(("values", "expected"), [
    # Nothing stored: zero in the current windows.
    ([None, None, None, None], _expected(0, MINUTE + 1, 0, HOUR + 1)),
    # Both counters in the current windows.
    ([b"%d" % MINUTE, b"250", b"%d" % HOUR, b"1500000"],
     _expected(250, MINUTE + 1, 1_500_000, HOUR + 1)),
    # The token window ended, the dollar window did not.
    ([b"%d" % (MINUTE - 1), b"999", b"%d" % HOUR, b"7"],
     _expected(0, MINUTE + 1, 7, HOUR + 1)),
    # A later window than the clock (the server clock stepped back): kept, as the
    # reserve script keeps it.
    ([b"%d" % (MINUTE + 2), b"40", None, None], _expected(40, MINUTE + 3, 0, HOUR + 1)),
])
def test_a_budget_hash_reads_as_the_reserve_script_reads_it(
        values: list[Reply], expected: BudgetUsage) -> None:
    assert remote_budget_usage(values, LIMITS, NOW_MS) == expected


@pytest.mark.parametrize("bad", [b"-1", b"1.5", b"x", b"9" * 20, 7, [b"1"]])
def test_malformed_fields_are_refused(bad: Reply) -> None:
    problem = remote_budget_usage([bad, b"1", None, None], LIMITS, NOW_MS)
    assert isinstance(problem, str) and problem.startswith("unexpected budget field")


def test_the_hash_name_is_the_one_the_scripts_use() -> None:
    assert budget_key(b"li-httpd:", "team-a") == b"li-httpd:budget:{team-a}"
