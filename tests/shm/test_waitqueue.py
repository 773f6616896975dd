"""The cold-start queue table: ordering, bounds and a dead worker's entries. Pure (the
table is a plain buffer; shm locking is tested in test_state.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from li_httpd.shm import waitqueue


def _table(capacity: int) -> memoryview:
    table = memoryview(bytearray(waitqueue.fields(capacity) * 8)).cast("q")
    waitqueue.init(table, capacity)
    return table


def test_fifo_bound_and_head() -> None:
    table = _table(3)
    assert waitqueue.head(table) == 0 and waitqueue.depth(table) == 0
    tickets = [waitqueue.join(table, owner) for owner in (1, 2, 1)]
    assert tickets == [1, 2, 3]
    assert waitqueue.join(table, 2) == 0  # full: overflow
    assert waitqueue.head(table) == 1 and waitqueue.depth(table) == 3
    assert waitqueue.leave(table, 2)  # a middle one times out: head unchanged
    assert waitqueue.head(table) == 1 and waitqueue.depth(table) == 2
    assert waitqueue.join(table, 2) == 4  # its entry is reused, its order is new
    assert waitqueue.leave(table, 1)
    assert waitqueue.head(table) == 3
    assert not waitqueue.leave(table, 1)  # gone already
    assert waitqueue.leave(table, 3) and waitqueue.leave(table, 4)
    assert waitqueue.head(table) == 0 and waitqueue.depth(table) == 0


def test_a_dead_owner_leaves_nothing_behind() -> None:
    table = _table(4)
    for owner in (1, 2, 1, 3):
        waitqueue.join(table, owner)
    assert waitqueue.clear_owner(table, 1) == 2
    assert waitqueue.depth(table) == 2 and waitqueue.head(table) == 2
    assert waitqueue.clear_owner(table, 9) == 0


def test_clear_owner_repairs_a_half_written_join() -> None:
    """Killed inside join after its ticket was stored but before depth and head."""
    table = _table(2)
    field = waitqueue.HEADER_FIELDS
    table[field + 1] = 5
    table[field] = 1
    table[0] = 2
    assert waitqueue.depth(table) == 0 and waitqueue.head(table) == 0
    assert waitqueue.clear_owner(table, 5) == 1
    assert waitqueue.depth(table) == 0 and waitqueue.head(table) == 0
    assert waitqueue.join(table, 1) == 2


ops = st.lists(st.tuples(st.sampled_from(["join", "leave", "release", "die"]),
                         st.integers(1, 3), st.integers(0, 10)), max_size=60)


@given(st.integers(1, 6), ops)
def test_matches_a_reference_fifo(capacity: int, steps: list[tuple[str, int, int]]) -> None:
    """Against a list model: depth, head, overflow, and release order = arrival order."""
    table = _table(capacity)
    model: list[tuple[int, int]] = []  # (ticket, owner), in arrival order
    released: list[int] = []
    for op, owner, pick in steps:
        if op == "join":
            ticket = waitqueue.join(table, owner)
            if len(model) >= capacity:
                assert ticket == 0
            else:
                assert ticket > max((t for t, _ in model), default=0)
                model.append((ticket, owner))
        elif op == "leave" and model:
            ticket, _ = model.pop(pick % len(model))
            assert waitqueue.leave(table, ticket)
        elif op == "release" and model:
            # Only the head may take capacity: it is always the oldest arrival.
            assert waitqueue.head(table) == model[0][0]
            released.append(model.pop(0)[0])
            assert waitqueue.leave(table, released[-1])
        elif op == "die":
            gone = [t for t, o in model if o == owner]
            assert waitqueue.clear_owner(table, owner) == len(gone)
            model = [(t, o) for t, o in model if o != owner]
        assert waitqueue.depth(table) == len(model)
        assert waitqueue.head(table) == (model[0][0] if model else 0)
    assert released == sorted(released)
