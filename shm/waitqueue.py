"""A bounded FIFO of waiting requests in one shared-memory table. Pure.

One table per route with a ``[route.queue]``, a flat array of 64-bit integers::

    [0] next ticket   [1] head   [2] depth   [3] capacity
    then capacity × (ticket, owner)          ticket 0 = a free entry

Tickets come from one counter, so they are the global arrival order across workers;
``owner`` is the worker slot + 1 of the request's worker, so the master can clear a
dead worker's entries (:func:`clear_owner`). ``head`` is the oldest ticket still
waiting (0: nobody waits) and ``depth`` the number waiting: both are kept up to date by
every change, so waiters and the status read them lock-free (one aligned 8-byte load
each). Only the request holding the head ticket may take freed capacity, which is what
makes release order equal arrival order.

Every function here mutates the table and must run under the table's lock (see
:class:`~.state.SharedState`); none of them does I/O.
"""

from __future__ import annotations

HEADER_FIELDS = 4
ENTRY_FIELDS = 2
_NEXT, _HEAD, _DEPTH, _CAPACITY = 0, 1, 2, 3


def fields(capacity: int) -> int:
    """The table's size in 64-bit fields."""
    return HEADER_FIELDS + capacity * ENTRY_FIELDS


def init(table: memoryview, capacity: int) -> None:
    table[_NEXT] = 1
    table[_HEAD] = 0
    table[_DEPTH] = 0
    table[_CAPACITY] = capacity


def head(table: memoryview) -> int:
    return int(table[_HEAD])


def depth(table: memoryview) -> int:
    return int(table[_DEPTH])


def join(table: memoryview, owner: int) -> int:
    """Enter the queue as worker ``owner`` (slot + 1): the new ticket, or 0 when full."""
    capacity = int(table[_CAPACITY])
    if table[_DEPTH] >= capacity:
        return 0
    for entry in range(capacity):
        field = HEADER_FIELDS + entry * ENTRY_FIELDS
        if table[field] == 0:
            ticket = int(table[_NEXT])
            table[_NEXT] = ticket + 1
            table[field + 1] = owner
            table[field] = ticket
            table[_DEPTH] += 1
            if table[_HEAD] == 0:
                table[_HEAD] = ticket
            return ticket
    return 0  # cannot happen while depth is right; a full table is a full queue


def leave(table: memoryview, ticket: int) -> bool:
    """Remove ``ticket`` (released, timed out or gone); False when it was not there
    (already cleared by the master)."""
    capacity = int(table[_CAPACITY])
    for entry in range(capacity):
        field = HEADER_FIELDS + entry * ENTRY_FIELDS
        if table[field] == ticket:
            table[field] = 0
            table[field + 1] = 0
            table[_DEPTH] -= 1
            if table[_HEAD] == ticket:
                table[_HEAD] = _oldest(table, capacity)
            return True
    return False


def clear_owner(table: memoryview, owner: int) -> int:
    """Remove every entry of worker ``owner`` (it died); how many there were. Depth and
    head are counted again from the entries, which also repairs a table the dead worker
    left half-written (killed inside :func:`join` or :func:`leave`)."""
    capacity = int(table[_CAPACITY])
    removed = 0
    waiting = 0
    for entry in range(capacity):
        field = HEADER_FIELDS + entry * ENTRY_FIELDS
        if table[field + 1] == owner:
            removed += table[field] != 0
            table[field] = 0
            table[field + 1] = 0
        elif table[field] != 0:
            waiting += 1
    table[_DEPTH] = waiting
    table[_HEAD] = _oldest(table, capacity)
    return removed


def _oldest(table: memoryview, capacity: int) -> int:
    oldest = 0
    for entry in range(capacity):
        ticket = int(table[HEADER_FIELDS + entry * ENTRY_FIELDS])
        if ticket and (oldest == 0 or ticket < oldest):
            oldest = ticket
    return oldest
