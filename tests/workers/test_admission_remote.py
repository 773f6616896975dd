"""Admission with ``[state] backend = "redis"``: the limit step as a table of what Redis
(or the on_backend_error policy) decided -> Admitted | Reject. Pure: no Redis here (the
scripts are tested against a real server in test_shared_limits_redis.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from li_httpd.workers.admission import Admitted, Limited, Reject, admit, settle
from li_httpd.workers.context import WorkerContext
from li_httpd.workers.shared_limits import RemoteVerdict

from .test_admission import CONFIG, KEY, context_for, head

REMOTE = CONFIG.replace('[auth]', '[state]\nbackend = "redis"\nurl = "redis://127.0.0.1:9"\n\n'
                        '[auth]', 1)
REQUEST = "POST /v1/chat HTTP/1.1\nhost: a\n" + KEY


@pytest.fixture
def ctx() -> Iterator[WorkerContext]:
    yield from context_for(REMOTE)


def _pending(ctx: WorkerContext) -> Limited:
    pending = admit(head(REQUEST), "127.0.0.1", b"gw-1", ctx)
    assert isinstance(pending, Limited), pending
    return pending


def test_the_limit_step_waits_for_redis_and_other_steps_do_not(ctx: WorkerContext) -> None:
    assert isinstance(admit(head("GET /health HTTP/1.1\nhost: a\n"), "127.0.0.1", b"g", ctx),
                      Admitted)
    assert _pending(ctx).digest == _pending(ctx).digest  # the same key, the same name


DECIDED = [
    # id, verdict, expected (status, reason, retry-after) or "admit"
    ("redis_admits", RemoteVerdict("", True, 0, "", b"k l"), "admit"),
    ("redis_rate", RemoteVerdict("", False, 4_200_000_000, "rate", b""), (429, "rate", b"5")),
    ("redis_streams", RemoteVerdict("", False, 1_000_000_000, "streams", b""),
     (429, "streams", b"1")),
    ("down_allow", RemoteVerdict("allow", False, 0, "", b""), "admit"),
    ("down_deny", RemoteVerdict("deny", False, 0, "", b""), (503, "backend_down", b"1")),
]


@pytest.mark.parametrize(("verdict", "expected"), [c[1:] for c in DECIDED],
                         ids=[c[0] for c in DECIDED])
def test_settle_table(ctx: WorkerContext, verdict: RemoteVerdict,
                      expected: str | tuple[int, str, bytes]) -> None:
    result = settle(_pending(ctx), verdict, ctx)
    if expected == "admit":
        assert isinstance(result, Admitted), result
        assert result.lease == verdict.lease
        assert result.stream_entry is not None and result.meter is not None  # body bytes
        assert ctx.shared.streams_of(result.stream_entry) == 1
        ctx.remote = None  # release without the background task (nothing to send)
        result.release(ctx)
        assert ctx.shared.streams_of(result.stream_entry) == 0
    else:
        assert isinstance(result, Reject), result
        assert (result.status, result.reason, dict(result.headers)[b"retry-after"]) == expected


def test_the_local_policy_uses_this_hosts_limits(ctx: WorkerContext) -> None:
    """burst = 2, concurrent_streams = 2: the shared-memory table decides."""
    down = RemoteVerdict("local", False, 0, "", b"")
    first, second, third = (settle(_pending(ctx), down, ctx) for _ in range(3))
    assert isinstance(first, Admitted) and isinstance(second, Admitted)
    assert first.lease == b"" and first.stream_entry is not None
    assert isinstance(third, Reject) and third.reason == "rate"
