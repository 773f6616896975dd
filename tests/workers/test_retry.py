"""Retry and failover decisions as a table covering every combination of inputs.

The table is written as rules with wildcards (``ANY``); the test checks that every
combination of (failure, reused, request sent, replay, stale retry left, failovers
left) matches exactly one rule, and that :func:`decide` returns that rule's decision.
"""

from __future__ import annotations

import itertools
from typing import get_args

import pytest
from li_httpd.workers.retry import (
    FALLBACK_KIND,
    Attempts,
    Decision,
    FailureKind,
    FallbackPolicy,
    FallbackTrigger,
    Replay,
    decide,
    falls_back,
    replay_of,
)

ANY = object()
RETRY = Decision("retry", False)
NEXT = Decision("next_peer", True)
FAIL = Decision("fail", True)

# failure,   reused, sent,  replay,       stale_left, failovers_left -> decision
RULES: list[tuple[object, object, object, object, object, object, Decision]] = [
    # A malformed response is never retried.
    ("protocol", ANY, ANY, ANY, ANY, ANY, FAIL),
    # A retryable status moves on only for idempotent, buffered requests; otherwise the
    # upstream's answer goes to the client.
    ("status", ANY, ANY, "always", ANY, 1, NEXT),
    ("status", ANY, ANY, "always", ANY, 0, FAIL),
    ("status", ANY, ANY, "if_unsent", ANY, ANY, FAIL),
    ("status", ANY, ANY, "never", ANY, ANY, FAIL),
    # A failed connect sent nothing: any buffered body may go to the next peer.
    ("connect", ANY, ANY, "never", ANY, ANY, FAIL),
    ("connect", ANY, ANY, "if_unsent", ANY, 1, NEXT),
    ("connect", ANY, ANY, "always", ANY, 1, NEXT),
    ("connect", ANY, ANY, "if_unsent", ANY, 0, FAIL),
    ("connect", ANY, ANY, "always", ANY, 0, FAIL),
    # Closed before any response byte. A streamed body is gone: fail.
    ("closed", ANY, ANY, "never", ANY, ANY, FAIL),
    # Nothing of the request reached the upstream: safe whatever the method.
    ("closed", True, False, "if_unsent", True, ANY, RETRY),      # stale pooled connection
    ("closed", True, False, "always", True, ANY, RETRY),
    ("closed", True, False, "if_unsent", False, 1, NEXT),        # stale retry spent
    ("closed", True, False, "always", False, 1, NEXT),
    ("closed", True, False, "if_unsent", False, 0, FAIL),
    ("closed", True, False, "always", False, 0, FAIL),
    ("closed", False, False, "if_unsent", ANY, 1, NEXT),         # fresh connection: blame
    ("closed", False, False, "always", ANY, 1, NEXT),
    ("closed", False, False, "if_unsent", ANY, 0, FAIL),
    ("closed", False, False, "always", ANY, 0, FAIL),
    # The request was sent: only an idempotent request may be replayed.
    ("closed", ANY, True, "if_unsent", ANY, ANY, FAIL),
    ("closed", True, True, "always", True, ANY, RETRY),
    ("closed", True, True, "always", False, 1, NEXT),
    ("closed", True, True, "always", False, 0, FAIL),
    ("closed", False, True, "always", ANY, 1, NEXT),
    ("closed", False, True, "always", ANY, 0, FAIL),
    # No response head in time: the request was sent and may be running; only an
    # idempotent one goes to another peer.
    ("ttfb", ANY, ANY, "always", ANY, 1, NEXT),
    ("ttfb", ANY, ANY, "always", ANY, 0, FAIL),
    ("ttfb", ANY, ANY, "if_unsent", ANY, ANY, FAIL),
    ("ttfb", ANY, ANY, "never", ANY, ANY, FAIL),
]

FAILURES = get_args(FailureKind)
REPLAYS = get_args(Replay)
COMBINATIONS = list(itertools.product(FAILURES, (False, True), (False, True), REPLAYS,
                                      (False, True), (0, 1)))


def _matches(rule: tuple[object, ...], combination: tuple[object, ...]) -> bool:
    return all(want is ANY or want == got for want, got in zip(rule, combination, strict=True))


@pytest.mark.parametrize("combination", COMBINATIONS, ids=lambda c: "-".join(map(str, c)))
def test_every_combination_has_one_rule(combination: tuple[FailureKind, bool, bool, Replay,
                                                           bool, int]) -> None:
    matching = [rule for rule in RULES if _matches(rule[:6], combination)]
    assert len(matching) == 1, f"{combination}: {len(matching)} rules match"
    failure, reused, sent, replay, stale_left, failovers_left = combination
    assert decide(failure, reused=reused, request_sent=sent, replay=replay,
                  stale_retry_left=stale_left, failovers_left=failovers_left) \
        == matching[0][6]


def test_more_failovers_behave_like_one() -> None:
    for failure, reused, sent, replay, stale_left in itertools.product(
            FAILURES, (False, True), (False, True), REPLAYS, (False, True)):
        args = {"reused": reused, "request_sent": sent, "replay": replay,
                "stale_retry_left": stale_left}
        assert decide(failure, failovers_left=5, **args) == \
            decide(failure, failovers_left=1, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("method", "buffered", "replay"), [
    (b"GET", True, "always"), (b"HEAD", True, "always"), (b"PUT", True, "always"),
    (b"DELETE", True, "always"), (b"OPTIONS", True, "always"),
    (b"POST", True, "if_unsent"), (b"PATCH", True, "if_unsent"),
    (b"GET", False, "never"), (b"POST", False, "never"),
])
def test_replay_of(method: bytes, buffered: bool, replay: Replay) -> None:
    assert replay_of(method, buffered) == replay


def test_attempts_spend_budgets_and_exclude_blamed_peers() -> None:
    attempts = Attempts("always", failovers_left=1)
    stale = attempts.decide("closed", reused=True, request_sent=True)
    assert stale == RETRY
    attempts.record(stale, 0)
    assert attempts.excluded == [] and not attempts.stale_retry_left
    again = attempts.decide("closed", reused=True, request_sent=True)
    assert again == NEXT  # one stale retry per request
    attempts.record(again, 0)
    assert attempts.excluded == [0] and attempts.failovers_left == 0
    last = attempts.decide("connect")
    assert last == FAIL
    attempts.record(last, 1)
    assert attempts.excluded == [0, 1]


def test_health_failure_names_match_the_config_vocabulary() -> None:
    """The names ``health_failures`` accepts are exactly the kinds the proxy reports, and
    every failure kind of an attempt has one."""
    from typing import get_args

    from li_httpd.config.model import HEALTH_FAILURES
    from li_httpd.workers.retry import HEALTH_KIND, FailureKind, HealthFailure
    assert set(get_args(HealthFailure)) == set(HEALTH_FAILURES)
    assert set(HEALTH_KIND) == set(get_args(FailureKind))


ALL_TRIGGERS: frozenset[FallbackTrigger] = frozenset(get_args(FallbackTrigger))
DEFAULT_ON: frozenset[FallbackTrigger] = frozenset({"connect", "status", "ttfb_timeout"})
POLICY = FallbackPolicy(DEFAULT_ON, frozenset({429, 502, 503, 504}))


@pytest.mark.parametrize(("trigger", "status", "replay", "policy", "left", "expected"), [
    ("connect", 0, "if_unsent", POLICY, 1, True),
    ("connect", 0, "always", POLICY, 2, True),
    ("connect", 0, "never", POLICY, 1, False),         # a streamed body is gone
    ("connect", 0, "if_unsent", POLICY, 0, False),     # the chain is spent
    ("connect", 0, "if_unsent", None, 1, False),       # no chain on this route
    ("status", 503, "if_unsent", POLICY, 1, True),
    ("status", 429, "if_unsent", POLICY, 1, True),
    ("status", 500, "if_unsent", POLICY, 1, False),    # not a listed status
    ("ttfb_timeout", 0, "if_unsent", POLICY, 1, True),
    ("reset", 0, "if_unsent", POLICY, 1, False),       # not in the default `on`
    ("reset", 0, "if_unsent", FallbackPolicy(ALL_TRIGGERS, frozenset()), 1, True),
    ("status", 503, "if_unsent", FallbackPolicy(frozenset({"connect"}),
                                                frozenset({503})), 1, False),
    (None, 0, "always", POLICY, 1, False),              # a malformed response
])
def test_falls_back(trigger: FallbackTrigger | None, status: int, replay: Replay,
                    policy: FallbackPolicy | None, left: int, expected: bool) -> None:
    assert falls_back(trigger, status=status, replay=replay, policy=policy,
                      pools_left=left) is expected


def test_every_failure_kind_has_a_fallback_trigger_or_none() -> None:
    assert set(FALLBACK_KIND) == set(FAILURES)
    assert {t for t in FALLBACK_KIND.values() if t is not None} == ALL_TRIGGERS
    from li_httpd.config.model import FALLBACK_TRIGGERS
    assert set(FALLBACK_TRIGGERS) == ALL_TRIGGERS
