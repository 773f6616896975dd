"""LogQueue overload policy: oldest diagnostics go first, drops are counted, never blocks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from li_httpd.ops.log.queue import LogQueue
from li_httpd.ops.log.records import ERROR, WARN, AccessRecord, AuditRecord


def access(n: int) -> AccessRecord:
    return ("access", float(n), f"a{n}", "r", "p", 200, "completed", 1.0, 0, 0, None, None,
            None, None)


def audit(n: int) -> AuditRecord:
    return ("audit", float(n), f"u{n}", None, "r", None, "GET", "/", 200, "completed", "allow",
            "p", 1.0, None, 0, 0, None, None, None, None)


def names(queue: LogQueue, limit: int = 1000) -> list[str]:
    out = []
    for record in queue.drain(limit):
        if record[0] == "diagnostic":
            out.append(str(record[3]))
        else:
            out.append(str(record[2]))
    return out


def test_drain_returns_arrival_order_across_kinds() -> None:
    queue = LogQueue(10)
    queue.put_request(access(1))
    queue.put_diagnostic(WARN, "d1", {})
    queue.put_request(audit(2))
    queue.put_diagnostic("error", "d2", {"k": 1}, ts=5.0)
    assert len(queue) == 4
    assert names(queue, 3) == ["a1", "d1", "u2"]
    assert names(queue) == ["d2"]
    assert names(queue) == []
    assert queue.dropped == {"access": 0, "audit": 0, "diagnostic": 0}


def test_overflow_drops_oldest_diagnostics_first() -> None:
    queue = LogQueue(4)
    queue.put_diagnostic(WARN, "d1", {})
    queue.put_request(access(1))
    queue.put_diagnostic(WARN, "d2", {})
    queue.put_request(audit(2))
    assert len(queue) == 4
    queue.put_request(access(3))   # full: d1 goes
    queue.put_request(access(4))   # d2 goes
    assert queue.dropped == {"access": 0, "audit": 0, "diagnostic": 2}
    queue.put_request(access(5))   # no diagnostic left: the oldest access/audit (a1) goes
    queue.put_request(access(6))   # then u2
    assert queue.dropped == {"access": 1, "audit": 1, "diagnostic": 2}
    assert names(queue) == ["a3", "a4", "a5", "a6"]


def test_new_diagnostic_never_displaces_access_or_audit() -> None:
    queue = LogQueue(2)
    queue.put_request(access(1))
    queue.put_request(audit(2))
    queue.put_diagnostic(ERROR, "lost", {})
    assert queue.dropped["diagnostic"] == 1 and len(queue) == 2
    assert names(queue) == ["a1", "u2"]


def test_newer_diagnostic_replaces_the_oldest_one() -> None:
    queue = LogQueue(3)
    queue.put_request(access(1))
    queue.put_diagnostic(WARN, "d1", {})
    queue.put_diagnostic(WARN, "d2", {})
    queue.put_diagnostic(WARN, "d3", {})
    assert names(queue) == ["a1", "d2", "d3"]
    assert queue.dropped == {"access": 0, "audit": 0, "diagnostic": 1}


def test_unknown_level_name_counts_as_error() -> None:
    queue = LogQueue(1)
    queue.put_diagnostic("fatal", "x", {})
    (record,) = queue.drain(1)
    assert record[0] == "diagnostic" and record[2] == ERROR


def test_tiny_queue_takes_a_flood_without_blocking_or_growing() -> None:
    queue = LogQueue(1)
    for n in range(10_000):
        assert queue.put_request(access(n)) == 1
        queue.put_diagnostic(WARN, "d", {})
    assert len(queue) == 1
    assert queue.dropped == {"access": 9_999, "audit": 0, "diagnostic": 10_000}
    assert names(queue) == ["a9999"]


@settings(max_examples=200)
@given(capacity=st.integers(1, 8),
       ops=st.lists(st.sampled_from(["access", "audit", "diagnostic", "drain"]),
                    max_size=60))
def test_bounded_ordered_and_accounted(capacity: int, ops: list[str]) -> None:
    queue = LogQueue(capacity)
    put = {"access": 0, "audit": 0, "diagnostic": 0}
    out = {"access": 0, "audit": 0, "diagnostic": 0}
    last_ts = -1.0
    for n, op in enumerate(ops):
        if op == "access":
            queue.put_request(("access", float(n), None, None, None, 200, "completed", 0.0, 0,
                               0, None, None, None, None))
        elif op == "audit":
            queue.put_request(("audit", float(n), None, None, None, None, None, None, 200,
                              "completed", "allow", None, 0.0, None, 0, 0, None, None, None,
                               None))
        elif op == "diagnostic":
            queue.put_diagnostic(WARN, "d", {}, ts=float(n))
        else:
            for record in queue.drain(3):
                assert record[1] > last_ts
                last_ts = record[1]
                out[record[0]] += 1
            continue
        put[op] += 1
        assert len(queue) <= capacity
    for record in queue.drain(capacity):
        assert record[1] > last_ts
        last_ts = record[1]
        out[record[0]] += 1
    assert len(queue) == 0
    for kind, count in put.items():
        assert count == out[kind] + queue.dropped[kind]  # type: ignore[index]
