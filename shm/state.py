"""The shared-memory segment: layout, locking, and every cross-worker operation.

The master creates one anonymous shared file (``memfd_create``) before it forks, sizes
it from the config and maps it; workers use the inherited mapping and descriptor. No
name exists in the filesystem, so nothing is left behind by a crash.

Layout (version 2; all integers little-endian, 8-byte aligned)::

    offset 0      Header        magic "LIHTTPD1", version, capacities, budget entries
                                (64 bytes)
    keys          KeyEntry × key_capacity        (buckets of SLOTS_PER_BUCKET)
                  ┌──────────┬──────────┬────────────┬──────────┐
                  │ key u64  │ tat i64  │ btat i64   │ reserved │  32 bytes
                  └──────────┴──────────┴────────────┴──────────┘
                  key = 0: free. tat: GCRA state of the request rate,
                  btat: GCRA state of the request-body byte rate (ns, monotonic).
    streams       i32 × key_capacity × worker_slots   (one column per worker slot)
    peers         PeerEntry × peer_count
                  ┌─────────┬─────────┬────────────┬─────────────┬───────────┐
                  │fails i64│win  i64 │ down i64   │ current i64 │ reserved  │ 40 bytes
                  └─────────┴─────────┴────────────┴─────────────┴───────────┘
                  passive health (shm/health.py) and the smooth weighted
                  round-robin weight shared by every worker.
    active        i32 × peer_count × worker_slots     (least_conn, one column per slot)
    workers       WorkerEntry × worker_slots          (each written by its worker only)
                  ┌─────────┬─────────────┬──────────┬─────────┬───────────┐
                  │ pid i64 │ connections │ requests │ started │ accepting │ 40 bytes
                  └─────────┴─────────────┴──────────┴─────────┴───────────┘
                  what `li-httpd ctl status` shows per worker; accepting = 0 once
                  a draining worker has stopped accepting (the master waits for
                  that before a reload reports success).
    budgets       BudgetEntry × configured API keys  (config order)
                  ┌─────────┬───────────┬────────────┬───────────┬──────────────┐
                  │ id i64  │ twin i64  │ tokens i64 │ uwin i64  │ micro-USD i64│ 40 bytes
                  └─────────┴───────────┴────────────┴───────────┴──────────────┘
                  id: hash of the key's id (a reload finds a kept key's entry by
                  it); twin/uwin: the minute / dollar window the counter belongs to
                  (shm/budget.py).
    circuits      CircuitEntry × peer_count          (shm/circuit.py)
                  ┌──────────┬──────────┬───────────┬─────────────────┐
                  │ state i64│until i64 │ floor i64 │ transitions i64 │  32 bytes
                  └──────────┴──────────┴───────────┴─────────────────┘
                  changed only under the peer's circuit lock.
    probes        (count i64, started i64) × peer_count × worker_slots
                  half-open probe places a worker holds (own column only; the
                  count's high 32 bits: its forgotten stale probes, circuit.FORGOTTEN).
    outcomes      (epoch i64, successes i64, errors i64) × BUCKETS
                    × peer_count × worker_slots
                  the circuit breaker's sliding window (own column only).
    readiness     ProbeEntry × peer_count        (written by the health actor only)
                  ┌───────────┬────────────┬──────────┬───────────┐
                  │ ready i64 │ rstreak i64│ live i64 │ lstreak   │ 32 bytes
                  └───────────┴────────────┴──────────┴───────────┘
                  active health (shm/readiness.py): state 0 unknown, 1 ready,
                  2 not ready, and the count toward a change, so a restarted actor
                  carries on where the killed one stopped. Workers read `ready`
                  lock-free, and only for pools with a health check.
    queues        per route with a [route.queue], in config order (shm/waitqueue.py):
                  ┌──────────┬──────────┬───────────┬──────────────┐
                  │ next i64 │ head i64 │ depth i64 │ capacity i64 │  then capacity ×
                  └──────────┴──────────┴───────────┴──────────────┘  (ticket, owner)
                  the cold-start queue: tickets in global arrival order, each tagged
                  with its worker (slot + 1) so the master can clear a dead worker's.

Concurrency, chosen so that a worker killed with SIGKILL at any instant cannot wedge
the others or leak capacity:

- *Counters* (streams, active requests, circuit-breaker results and probe places) are
  single-writer: a worker only ever writes
  its own column; readers sum the columns; the master zeroes a dead worker's column
  (:meth:`SharedState.clear_worker`) before its replacement starts.
- *Read-modify-write* that must be global (a key's GCRA state together with its
  stream-cap check, a pool's round-robin weights, a capped pool's choice together with
  its ``max_concurrent`` check, a peer's failure count, an API key's budget counters, a
  route's wait queue) happens under an ``fcntl`` byte-range lock on the segment's
  descriptor: one lock byte per key bucket, per pool, per peer, per budget entry and per
  queue.
  The kernel releases such locks when the holder dies.
  Lock holders never await, so a trio task cannot be suspended while holding one.
- Single 8-byte aligned loads and stores are atomic on the supported platforms, so
  lock-free readers (is a peer down? how many streams?) see whole values.

Key table eviction: a key's entry is reused for another key only when it is *idle*:
its full burst and byte budget are available again and it has no stream open. An
attacker flooding new keys therefore cannot reset the state of a key that is limited
or streaming; when a bucket has no idle entry, the *new* key is refused (429) until one
frees up (a limited key becomes idle after at most burst/rate seconds).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from . import budget, gcra, saturation, waitqueue
from . import circuit as breaker
from .circuit import Circuit
from .health import PeerHealth, on_failure, on_success
from .readiness import READY, Readiness

MAGIC = b"LIHTTPD1"
VERSION = 2
SLOTS_PER_BUCKET = 8
HEADER_SIZE = 64
KEY_ENTRY = 32
KEY_FIELDS = KEY_ENTRY // 8
PEER_ENTRY = 40
PEER_FIELDS = PEER_ENTRY // 8
WORKER_ENTRY = 40
WORKER_FIELDS = WORKER_ENTRY // 8
BUDGET_ENTRY = 40
BUDGET_FIELDS = BUDGET_ENTRY // 8
CIRCUIT_ENTRY = 32
CIRCUIT_FIELDS = CIRCUIT_ENTRY // 8
PROBE_FIELDS = 2
OUTCOME_FIELDS = breaker.BUCKETS * 3
READINESS_ENTRY = 32
READINESS_FIELDS = READINESS_ENTRY // 8
_HEADER = struct.Struct("<8sIIIIII")
_CERT_NOT_AFTER = struct.Struct("<q")
CERT_OFFSET = _HEADER.size
"""In the header's spare bytes: the serving certificate's not_after (Unix seconds; 0 =
no TLS), written by the master at start and on a certificate swap, read by /metrics."""

# Lock byte namespaces (fcntl locks may lie beyond the end of the file).
_LOCK_BUCKETS = 1 << 40
_LOCK_POOLS = 2 << 40
_LOCK_PEERS = 3 << 40
_LOCK_BUDGETS = 4 << 40
_LOCK_CIRCUITS = 5 << 40
_LOCK_QUEUES = 6 << 40

Clock = Callable[[], int]


@dataclass(frozen=True, slots=True)
class Layout:
    key_capacity: int
    worker_slots: int
    peer_count: int
    budget_ids: tuple[int, ...] = ()
    """Per configured API key (config order), the hash of its id (:func:`budget_id`):
    part of the layout, so a reload that renames, reorders, adds or removes keys gets
    a new segment (old workers keep their indexes into the old one)."""
    queues: tuple[tuple[int, int], ...] = ()
    """Per route with a ``[route.queue]`` (config order): the hash of its name
    (:func:`budget_id`) and its ``max_size``. Part of the layout for the same reason."""

    @property
    def buckets(self) -> int:
        return self.key_capacity // SLOTS_PER_BUCKET

    @property
    def keys_offset(self) -> int:
        return HEADER_SIZE

    @property
    def streams_offset(self) -> int:
        return self.keys_offset + self.key_capacity * KEY_ENTRY

    @property
    def peers_offset(self) -> int:
        return _align(self.streams_offset + self.key_capacity * self.worker_slots * 4)

    @property
    def active_offset(self) -> int:
        return self.peers_offset + self.peer_count * PEER_ENTRY

    @property
    def workers_offset(self) -> int:
        return _align(self.active_offset + self.peer_count * self.worker_slots * 4, 8)

    @property
    def budgets_offset(self) -> int:
        return self.workers_offset + self.worker_slots * WORKER_ENTRY

    @property
    def circuits_offset(self) -> int:
        return self.budgets_offset + len(self.budget_ids) * BUDGET_ENTRY

    @property
    def probes_offset(self) -> int:
        return self.circuits_offset + self.peer_count * CIRCUIT_ENTRY

    @property
    def outcomes_offset(self) -> int:
        return self.probes_offset + self.peer_count * self.worker_slots * PROBE_FIELDS * 8

    @property
    def readiness_offset(self) -> int:
        return self.outcomes_offset + self.peer_count * self.worker_slots * OUTCOME_FIELDS * 8

    @property
    def queues_offset(self) -> int:
        return self.readiness_offset + self.peer_count * READINESS_ENTRY

    @property
    def size(self) -> int:
        return _align(self.queues_offset
                      + sum(waitqueue.fields(size) for _, size in self.queues) * 8)


def budget_id(key_id: str) -> int:
    """A stable nonzero 63-bit hash of an API key's id (ids are not secret)."""
    digest = hashlib.blake2b(key_id.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") >> 1) or 1


def _align(value: int, to: int = 64) -> int:
    return -(-value // to) * to


class TableFull(Exception):  # noqa: N818 - a condition the caller turns into a 429
    """No entry for a new key: its bucket has no idle entry to reuse."""


class SharedState:
    """One mapped segment. Create in the master with :meth:`create`; after fork every
    process uses the same object (inherited), setting :attr:`slot` to its worker slot."""

    def __init__(self, fd: int, memory: mmap.mmap, layout: Layout, clock: Clock) -> None:
        self.fd = fd
        self.memory = memory
        self.layout = layout
        self.clock = clock
        self.slot = 0
        self.wall_clock: Clock = time.time_ns
        """Budget windows are fixed spans of Unix time, the one clock every worker (and
        every host) agrees on; replaceable in tests."""
        self.budget_origin: SharedState | None = None
        """The segment this one inherited budgets from while its workers may still run
        (the master's bookkeeping for :meth:`fold_budgets`)."""
        self.budget_carried: dict[int, tuple[int, budget.Usage]] = {}
        """Entry here -> (entry in the origin, its counters at the last fold)."""
        self.key_secret = b""
        """Keys the rate-limit key hash (set by :meth:`create`, kept across reloads): a
        key's bucket in the table is unpredictable, so nobody can compute keys that fill
        the bucket of a key they want locked out."""
        view = memoryview(memory)
        self.keys = view[layout.keys_offset:layout.streams_offset].cast("q")
        self.streams = view[layout.streams_offset:layout.streams_offset
                            + layout.key_capacity * layout.worker_slots * 4].cast("i")
        self.peers = view[layout.peers_offset:layout.active_offset].cast("q")
        self.active = view[layout.active_offset:layout.active_offset
                           + layout.peer_count * layout.worker_slots * 4].cast("i")
        self.workers = view[layout.workers_offset:layout.budgets_offset].cast("q")
        self.budgets = view[layout.budgets_offset:layout.circuits_offset].cast("q")
        self.circuits = view[layout.circuits_offset:layout.probes_offset].cast("q")
        self.probes = view[layout.probes_offset:layout.outcomes_offset].cast("q")
        self.outcomes = view[layout.outcomes_offset:layout.readiness_offset].cast("q")
        self.readiness = view[layout.readiness_offset:layout.readiness_offset
                              + layout.peer_count * READINESS_ENTRY].cast("q")
        self.queues: list[memoryview] = []
        """One table per queued route (:mod:`.waitqueue`), in layout order."""
        offset = layout.queues_offset
        for _, capacity in layout.queues:
            end = offset + waitqueue.fields(capacity) * 8
            self.queues.append(view[offset:end].cast("q"))
            offset = end

    @classmethod
    def create(cls, layout: Layout, clock: Clock = time.monotonic_ns) -> SharedState:
        fd = os.memfd_create("li-httpd-state")
        os.ftruncate(fd, layout.size)
        memory = mmap.mmap(fd, layout.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        _HEADER.pack_into(memory, 0, MAGIC, VERSION, layout.key_capacity, SLOTS_PER_BUCKET,
                          layout.worker_slots, layout.peer_count, len(layout.budget_ids))
        state = cls(fd, memory, layout, clock)
        for index, key in enumerate(layout.budget_ids):
            state.budgets[index * BUDGET_FIELDS] = key
        for table, (_, capacity) in zip(state.queues, layout.queues, strict=True):
            waitqueue.init(table, capacity)
        state.key_secret = os.urandom(16)
        return state

    def publish_cert_not_after(self, seconds: int) -> None:
        _CERT_NOT_AFTER.pack_into(self.memory, CERT_OFFSET, seconds)

    def cert_not_after(self) -> int:
        """The serving certificate's expiry (Unix seconds), 0 without TLS."""
        value: int = _CERT_NOT_AFTER.unpack_from(self.memory, CERT_OFFSET)[0]
        return value

    def close(self) -> None:
        for view in (self.keys, self.streams, self.peers, self.active, self.workers,
                     self.budgets, self.circuits, self.probes, self.outcomes,
                     self.readiness, *self.queues):
            view.release()
        self.memory.close()
        os.close(self.fd)

    # -- locks --------------------------------------------------------------------------------

    def _lock(self, byte: int) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, byte)

    def _unlock(self, byte: int) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, byte)

    # -- keys -------------------------------------------------------------------------------------

    def _entry_for(self, key: int, now: int) -> int:
        """Index of ``key``'s entry, claiming an idle one if new. Caller holds the lock."""
        keys = self.keys
        base = (key % self.layout.buckets) * SLOTS_PER_BUCKET
        reusable = -1
        for index in range(base, base + SLOTS_PER_BUCKET):
            stored = keys[index * KEY_FIELDS]
            if stored == key:
                return index
            if reusable < 0 and (stored == 0 or self._idle(index, now)):
                reusable = index
        if reusable < 0:
            raise TableFull
        field = reusable * KEY_FIELDS
        keys[field] = key
        keys[field + 1] = 0
        keys[field + 2] = 0
        return reusable

    def _idle(self, index: int, now: int) -> bool:
        field = index * KEY_FIELDS
        return (gcra.is_idle(self.keys[field + 1], now) and gcra.is_idle(self.keys[field + 2], now)
                and self.streams_of(index) == 0)

    def streams_of(self, index: int) -> int:
        width = self.layout.worker_slots
        return sum(self.streams[index * width:(index + 1) * width])

    def admit(self, key: int, rate: gcra.Rate, max_streams: int) -> Admission:
        """Charge one request to ``key`` and open a stream, or say why not (atomic)."""
        now = self.clock()
        bucket = key % self.layout.buckets
        self._lock(_LOCK_BUCKETS + bucket)
        try:
            try:
                index = self._entry_for(key, now)
            except TableFull:
                return Admission(False, -1, gcra.NS_PER_SECOND, "table_full")
            field = index * KEY_FIELDS
            decision = gcra.decide(rate, self.keys[field + 1], now)
            if not decision.allowed:
                return Admission(False, index, decision.retry_after_ns, "rate")
            if self.streams_of(index) >= max_streams:
                return Admission(False, index, gcra.NS_PER_SECOND, "streams")
            self.keys[field + 1] = decision.new_tat
            self.streams[index * self.layout.worker_slots + self.slot] += 1
            return Admission(True, index, 0, "")
        finally:
            self._unlock(_LOCK_BUCKETS + bucket)

    def hold_entry(self, key: int) -> int:
        """Claim ``key``'s entry and count one stream on it, without any limit check
        (the Redis backend decided): the entry meters the request's body bytes and is
        not reused while held. -1 when the table is full. Undone by
        :meth:`release_stream`."""
        bucket = key % self.layout.buckets
        self._lock(_LOCK_BUCKETS + bucket)
        try:
            try:
                index = self._entry_for(key, self.clock())
            except TableFull:
                return -1
            self.streams[index * self.layout.worker_slots + self.slot] += 1
            return index
        finally:
            self._unlock(_LOCK_BUCKETS + bucket)

    def release_stream(self, index: int) -> None:
        """Close a stream opened by :meth:`admit` in this worker (own column: no lock)."""
        self.streams[index * self.layout.worker_slots + self.slot] -= 1

    def consume_bytes(self, index: int, key: int, rate: gcra.Rate, count: int) -> int:
        """Charge ``count`` body bytes to an admitted key; returns the delay (ns) to wait."""
        bucket = key % self.layout.buckets
        self._lock(_LOCK_BUCKETS + bucket)
        try:
            field = index * KEY_FIELDS + 2
            new_tat, delay = gcra.consume(rate, self.keys[field], self.clock(), count)
            self.keys[field] = new_tat
            return delay
        finally:
            self._unlock(_LOCK_BUCKETS + bucket)

    # -- peers --------------------------------------------------------------------------------

    def health(self, peer: int) -> PeerHealth:
        field = peer * PEER_FIELDS
        peers = self.peers
        return PeerHealth(peers[field], peers[field + 1], peers[field + 2])

    def peer_up(self, peer: int, now: int) -> bool:
        return self.peers[peer * PEER_FIELDS + 2] <= now

    def peer_failed(self, peer: int, max_fails: int, fail_timeout_ns: int) -> bool:
        """Record a failure; True when it marked the peer down."""
        self._lock(_LOCK_PEERS + peer)
        try:
            before = self.health(peer)
            after = on_failure(before, self.clock(), max_fails, fail_timeout_ns)
            self._store_health(peer, after)
            return after.down_until_ns != before.down_until_ns
        finally:
            self._unlock(_LOCK_PEERS + peer)

    def peer_succeeded(self, peer: int) -> bool:
        """Record a success; True when it marked a peer that had been down up again."""
        field = peer * PEER_FIELDS
        peers = self.peers
        if peers[field] == 0 and peers[field + 2] == 0:
            return False  # the common case needs no lock
        self._lock(_LOCK_PEERS + peer)
        try:
            before = self.health(peer)
            after = on_success(before, self.clock())
            self._store_health(peer, after)
            return before.down_until_ns != 0 and after.down_until_ns == 0
        finally:
            self._unlock(_LOCK_PEERS + peer)

    def _store_health(self, peer: int, state: PeerHealth) -> None:
        field = peer * PEER_FIELDS
        self.peers[field] = state.fails
        self.peers[field + 1] = state.window_start_ns
        self.peers[field + 2] = state.down_until_ns

    def peer_usable(self, peer: int, now: int) -> bool:
        """Whether pickers may choose ``peer``: passive health has it up and its circuit
        lets requests through (lock-free; two loads in the healthy case)."""
        field = peer * CIRCUIT_FIELDS
        return self.peers[peer * PEER_FIELDS + 2] <= now and breaker.passable(
            self.circuits[field], self.circuits[field + 1], now)

    # -- active health (written by the health actor only) -----------------------------------

    def peer_ready(self, peer: int) -> bool:
        """Whether the last probes found ``peer`` ready (one load: the request path)."""
        return self.readiness[peer * READINESS_FIELDS] == READY

    def probe_state(self, peer: int) -> tuple[Readiness, Readiness]:
        """(ready, live) of ``peer`` as the health actor last stored them."""
        field = peer * READINESS_FIELDS
        probes = self.readiness
        return (Readiness(probes[field], probes[field + 1]),
                Readiness(probes[field + 2], probes[field + 3]))

    def store_probe(self, peer: int, ready: Readiness, live: Readiness) -> None:
        """The health actor's write (single writer, so no lock). Each streak before its
        state: an actor killed between the two stores leaves a state with the count of
        the one before it reset, never a new state with a stale count toward a change."""
        field = peer * READINESS_FIELDS
        probes = self.readiness
        probes[field + 1] = ready.streak
        probes[field] = ready.state
        probes[field + 3] = live.streak
        probes[field + 2] = live.state

    def active_of(self, peer: int) -> int:
        width = self.layout.worker_slots
        return sum(self.active[peer * width:(peer + 1) * width])

    def add_active(self, peer: int, delta: int) -> None:
        self.active[peer * self.layout.worker_slots + self.slot] += delta

    def pick_round_robin(self, pool: int, peers: Sequence[int], weights: Sequence[int],
                         exclude: Sequence[int]) -> int:
        """Smooth weighted round robin shared by all workers; -1 when no peer is up."""
        now = self.clock()
        self._lock(_LOCK_POOLS + pool)
        try:
            shared = self.peers
            best = -1
            best_weight = 0
            total = 0
            for position, peer in enumerate(peers):
                if position in exclude or not self.peer_usable(peer, now):
                    continue
                field = peer * PEER_FIELDS + 3
                current = shared[field] + weights[position]
                shared[field] = current
                total += weights[position]
                if best < 0 or current > best_weight:
                    best, best_weight = position, current
            if best >= 0:
                shared[peers[best] * PEER_FIELDS + 3] -= total
            return best
        finally:
            self._unlock(_LOCK_POOLS + pool)

    def pick_least_conn(self, peers: Sequence[int], weights: Sequence[int],
                        exclude: Sequence[int], start: int) -> int:
        """The up peer with the fewest active requests per weight (lock-free read; ties
        go round from ``start``); -1 when no peer is up."""
        now = self.clock()
        best = -1
        best_load = 0.0
        count = len(peers)
        for step in range(count):
            position = (start + step) % count
            peer = peers[position]
            if position in exclude or not self.peer_usable(peer, now):
                continue
            load = self.active_of(peer) / weights[position]
            if best < 0 or load < best_load:
                best, best_load = position, load
        return best

    def pick_capped(self, pool: int, peers: Sequence[int], weights: Sequence[int],
                    caps: Sequence[int], exclude: Sequence[int], least_conn: bool,
                    start: int) -> int:
        """A peer of a pool with ``max_concurrent`` caps, counted in this worker's active
        column before the pool's lock is released (so that no other worker can take the
        same last place): its position, else :data:`~.saturation.NO_PEER` (none usable)
        or :data:`~.saturation.SATURATED` (usable peers, each at its cap). The caller
        gives the place back with ``add_active(peer, -1)``."""
        now = self.clock()
        self._lock(_LOCK_POOLS + pool)
        try:
            shared = self.peers
            usable = [position not in exclude and self.peer_usable(peer, now)
                      for position, peer in enumerate(peers)]
            active = [self.active_of(peer) for peer in peers]
            current = [shared[peer * PEER_FIELDS + 3] for peer in peers]
            position = saturation.choose(usable, active, caps, weights, current,
                                         least_conn, start)
            if position >= 0:
                if not least_conn:
                    for index, peer in enumerate(peers):
                        shared[peer * PEER_FIELDS + 3] = current[index]
                self.add_active(peers[position], 1)
            return position
        finally:
            self._unlock(_LOCK_POOLS + pool)

    # -- cold-start queues (per route, shm/waitqueue.py) -----------------------------------

    def queue_join(self, queue: int) -> int:
        """Enter route queue ``queue`` from this worker: a ticket, or 0 when it is full."""
        self._lock(_LOCK_QUEUES + queue)
        try:
            return waitqueue.join(self.queues[queue], self.slot + 1)
        finally:
            self._unlock(_LOCK_QUEUES + queue)

    def queue_leave(self, queue: int, ticket: int) -> None:
        self._lock(_LOCK_QUEUES + queue)
        try:
            waitqueue.leave(self.queues[queue], ticket)
        finally:
            self._unlock(_LOCK_QUEUES + queue)

    def queue_head(self, queue: int) -> int:
        """The oldest waiting ticket, 0 when nobody waits (lock-free)."""
        return waitqueue.head(self.queues[queue])

    def queue_depth(self, queue: int) -> int:
        """Requests waiting in the queue, all workers (lock-free)."""
        return waitqueue.depth(self.queues[queue])

    def inherit(self, old: SharedState, peer_map: dict[int, int]) -> None:
        """Carry state into a new segment at a reload: the key table (rate-limit state;
        key hashes include the route name, so they stay meaningful) when the capacity is
        unchanged, the passive and active health and the circuit of peers present in both
        configs (``peer_map``: old number -> new number), and the budget counters of API
        keys whose id is in both (found by id hash, wherever the key now is in the list).
        Stream and request counters, circuit-breaker results and probe places stay with
        the old workers."""
        self.key_secret = old.key_secret  # the carried key hashes were made with it
        if old.layout.key_capacity == self.layout.key_capacity:
            self.keys[:] = old.keys
        for old_peer, new_peer in peer_map.items():
            self._store_health(new_peer, old.health(old_peer))
            self.store_probe(new_peer, *old.probe_state(old_peer))
            # The window's buckets stay behind (their width may have changed), so the
            # floor that guarded them has nothing left to guard; probe places stay with
            # the old workers, so a half-open circuit has free places here at once.
            kept = old.circuit(old_peer)
            until = 0 if kept.state == breaker.HALF_OPEN else kept.until_ns
            self._store_circuit(new_peer, Circuit(kept.state, until, 0, kept.transitions))
        old_entries = {key: index for index, key in enumerate(old.layout.budget_ids)}
        self.budget_origin = old
        for index, key in enumerate(self.layout.budget_ids):
            if key in old_entries:
                carried = old._budget_locked_load(old_entries[key])
                self._budget_store(index, carried)  # nobody uses this segment yet
                self.budget_carried[index] = (old_entries[key], carried)

    def fold_budgets(self) -> None:
        """Master: add what the old generation's workers charged or gave back in the
        segment this one inherited from (:meth:`inherit`) since the last fold, so that
        budgets stay exact across a reload once the old workers are gone (call it often
        while they drain, and before closing the old segment)."""
        old = self.budget_origin
        if old is None:
            return
        if old.memory.closed:  # closed without forget_origin: nothing more to learn
            self.budget_origin = None
            self.budget_carried = {}
            return
        for index, (old_index, before) in self.budget_carried.items():
            after = old._budget_locked_load(old_index)
            if after == before:
                continue
            self._lock(_LOCK_BUDGETS + index)
            try:
                self._budget_store(index, budget.fold(self._budget_load(index), before, after))
            finally:
                self._unlock(_LOCK_BUDGETS + index)
            self.budget_carried[index] = (old_index, after)

    def forget_origin(self, old: SharedState) -> None:
        """Master, before closing ``old``: a last fold if it is this segment's origin."""
        if self.budget_origin is old:
            self.fold_budgets()
            self.budget_origin = None
            self.budget_carried = {}

    # -- budgets (per configured API key) ------------------------------------------------------

    def _budget_load(self, index: int) -> budget.Usage:
        field = index * BUDGET_FIELDS
        entry = self.budgets
        return budget.Usage(entry[field + 1], entry[field + 2], entry[field + 3],
                            entry[field + 4])

    def _budget_store(self, index: int, usage: budget.Usage) -> None:
        """Each counter before its window index: a worker killed between the two stores
        leaves the new total under the old index, where the next reader sees a past
        window and reads 0. That loses only the dead worker's own reservation, which it
        never used (it died inside :meth:`budget_reserve`, before any upstream call);
        settles never change a window, so they cannot tear that way."""
        field = index * BUDGET_FIELDS
        entry = self.budgets
        entry[field + 2] = usage.tokens
        entry[field + 1] = usage.token_window
        entry[field + 4] = usage.micro_usd
        entry[field + 3] = usage.usd_window

    def budget_reserve(self, key_index: int, limits: budget.Limits, tokens: int,
                       micro_usd: int, now_ns: int | None = None) -> BudgetGrant | budget.Denied:
        """Reserve a request's worst case (``tokens``, ``micro_usd``) against the API key
        at ``key_index`` (its position in ``config.auth.keys``), atomically across
        workers. A grant must later go to :meth:`budget_settle`; a denial reserved
        nothing (answer 429 with its ``retry_after_s``)."""
        now = self.wall_clock() if now_ns is None else now_ns
        self._lock(_LOCK_BUDGETS + key_index)
        try:
            decision = budget.reserve(self._budget_load(key_index), limits, tokens,
                                      micro_usd, now)
            if isinstance(decision, budget.Denied):
                return decision
            usage, grant = decision
            self._budget_store(key_index, usage)
            return BudgetGrant(key_index, grant)
        finally:
            self._unlock(_LOCK_BUDGETS + key_index)

    def budget_settle(self, grant: BudgetGrant, tokens: int, micro_usd: int) -> None:
        """Replace ``grant``'s reservation with the actual usage (a stream cut before its
        usage arrived settles with the grant's own amounts, i.e. keeps it charged). A
        window that has ended since the grant is left alone."""
        self._lock(_LOCK_BUDGETS + grant.key_index)
        try:
            usage = self._budget_load(grant.key_index)
            self._budget_store(grant.key_index,
                               budget.settle(usage, grant.grant, tokens, micro_usd))
        finally:
            self._unlock(_LOCK_BUDGETS + grant.key_index)

    def budget_usage(self, key_index: int, limits: budget.Limits,
                     now_ns: int | None = None) -> BudgetUsage:
        """What the API key at ``key_index`` has used in the current windows (for the
        operator view and metrics).

        Lock-free, so that any thread may call it: fcntl locks belong to the process, so
        a scrape thread taking and releasing one would release it under the event loop
        thread of the same worker. Each field is read whole; a read racing a window's
        rollover may pair the old total with the new window for that instant, which a
        display can live with (decisions are only ever made under the lock)."""
        now = self.wall_clock() if now_ns is None else now_ns
        return BudgetUsage.at(self._budget_load(key_index), limits, now)

    def _budget_locked_load(self, index: int) -> budget.Usage:
        self._lock(_LOCK_BUDGETS + index)
        try:
            return self._budget_load(index)
        finally:
            self._unlock(_LOCK_BUDGETS + index)

    # -- circuit breaker (shm/circuit.py) --------------------------------------------------------

    def circuit(self, peer: int) -> Circuit:
        """The circuit of ``peer`` (lock-free read: each field whole)."""
        field = peer * CIRCUIT_FIELDS
        entry = self.circuits
        return Circuit(entry[field], entry[field + 1], entry[field + 2], entry[field + 3])

    def _store_circuit(self, peer: int, state: Circuit) -> None:
        field = peer * CIRCUIT_FIELDS
        entry = self.circuits
        entry[field + 1] = state.until_ns
        entry[field + 2] = state.floor
        entry[field + 3] = state.transitions
        entry[field] = state.state

    def circuit_available_at(self, peer: int) -> int:
        """When ``peer``'s circuit lets a request through again (0: now)."""
        return breaker.available_at(self.circuit(peer))

    def reset_circuit(self, peer: int) -> None:
        """Master: close ``peer``'s circuit (its pool's breaker was turned off)."""
        self._lock(_LOCK_CIRCUITS + peer)
        try:
            held = self.circuit(peer)
            if held.state != breaker.CLOSED:
                self._store_circuit(peer, Circuit(breaker.CLOSED, 0, 0, held.transitions + 1))
        finally:
            self._unlock(_LOCK_CIRCUITS + peer)

    def forget_window(self, peer: int) -> None:
        """Master: drop ``peer``'s floor (a reload changed its pool's ``window``, so the
        floor's bucket number is in units the new buckets no longer use; the buckets
        written in those units never fall in a new window either)."""
        self._lock(_LOCK_CIRCUITS + peer)
        try:
            held = self.circuit(peer)
            self._store_circuit(peer, Circuit(held.state, held.until_ns, 0, held.transitions))
        finally:
            self._unlock(_LOCK_CIRCUITS + peer)

    def _probe_column(self, peer: int) -> int:
        return (peer * self.layout.worker_slots + self.slot) * PROBE_FIELDS

    def circuit_admit(self, peer: int, policy: breaker.Policy) -> CircuitStep:
        """Whether a request may go to ``peer`` now; a ``probe`` admission holds one of
        the half-open places (in this worker's column) until :meth:`circuit_record` or
        :meth:`circuit_probe_abandoned`. No lock while the circuit is closed."""
        field = peer * CIRCUIT_FIELDS
        if self.circuits[field] == breaker.CLOSED:
            return PASSED_CLOSED  # the request path: no allocation either
        now = self.clock()
        width = self.layout.worker_slots * PROBE_FIELDS
        self._lock(_LOCK_CIRCUITS + peer)
        try:
            before = self.circuit(peer)
            probes = breaker.live_probes(self.probes[peer * width:(peer + 1) * width], now,
                                         policy.probe_timeout_ns)
            after, admission = breaker.admit(before, now, probes, policy)
            if admission == "probe":
                column = self._probe_column(peer)
                if now - self.probes[column + 1] >= policy.probe_timeout_ns:
                    # This worker's stale probes hold nothing: forgotten (their ends,
                    # still to come, must not free the place of the one admitted now).
                    held = self.probes[column]
                    self.probes[column] = ((held >> 32) + (held & breaker.LIVE_MASK)) \
                        * breaker.FORGOTTEN
                self.probes[column] += 1
                self.probes[column + 1] = now
            if after != before:
                self._store_circuit(peer, after)
            return CircuitStep(admission, before.state, after.state)
        finally:
            self._unlock(_LOCK_CIRCUITS + peer)

    def circuit_record(self, peer: int, policy: breaker.Policy, error: bool,
                       probe: bool) -> CircuitStep | None:
        """Count one result of a request to ``peer``; the step when it changed the
        circuit. A success of a normal request only touches this worker's column; an
        error sums every worker's window and locks only to open the circuit."""
        now = self.clock()
        epoch = policy.epoch(now)
        width = self.layout.worker_slots * OUTCOME_FIELDS
        base = peer * width + self.slot * OUTCOME_FIELDS + epoch % breaker.BUCKETS * 3
        outcomes = self.outcomes
        if outcomes[base] != epoch:  # a bucket of an earlier lap: start it afresh
            outcomes[base + 1] = 0
            outcomes[base + 2] = 0
            outcomes[base] = epoch
        outcomes[base + (2 if error else 1)] += 1
        if probe:
            return self._probe_done(peer, now, policy, error)
        field = peer * CIRCUIT_FIELDS
        if not error or self.circuits[field] != breaker.CLOSED:
            return None
        results, errors = breaker.window_totals(outcomes[peer * width:(peer + 1) * width],
                                                epoch, self.circuits[field + 2])
        if not breaker.trips(results, errors, policy):
            return None
        self._lock(_LOCK_CIRCUITS + peer)
        try:
            before = self.circuit(peer)
            after = breaker.on_trip(before, now, policy)
            if after == before:
                return None  # another worker opened it first
            self._store_circuit(peer, after)
            return CircuitStep("closed", before.state, after.state)
        finally:
            self._unlock(_LOCK_CIRCUITS + peer)

    def circuit_adopt_open(self, peer: int, remaining_ns: int) -> CircuitStep | None:
        """Another instance opened ``peer``'s circuit for ``remaining_ns`` more: open
        it here too if it is closed (:func:`.circuit.adopt_open`); the step if it did."""
        self._lock(_LOCK_CIRCUITS + peer)
        try:
            before = self.circuit(peer)
            after = breaker.adopt_open(before, self.clock() + remaining_ns)
            if after == before:
                return None
            self._store_circuit(peer, after)
            return CircuitStep("closed", before.state, after.state)
        finally:
            self._unlock(_LOCK_CIRCUITS + peer)

    def circuit_probe_abandoned(self, peer: int, policy: breaker.Policy) -> None:
        """A probe ended with no result to count (the client left, a timer fired)."""
        self._probe_done(peer, self.clock(), policy, None)

    def _probe_done(self, peer: int, now: int, policy: breaker.Policy,
                    error: bool | None) -> CircuitStep | None:
        self._lock(_LOCK_CIRCUITS + peer)
        try:
            column = self._probe_column(peer)
            held = self.probes[column]
            if held >= breaker.FORGOTTEN:  # a late end of a forgotten probe first
                self.probes[column] = held - breaker.FORGOTTEN
            elif held > 0:
                self.probes[column] = held - 1
            before = self.circuit(peer)
            if error is None:
                after = breaker.on_probe_abandoned(before, now)
            else:
                after = breaker.on_probe_result(before, now, error, policy)
            if after == before:
                return None
            self._store_circuit(peer, after)
            return CircuitStep("probe", before.state, after.state)
        finally:
            self._unlock(_LOCK_CIRCUITS + peer)

    # -- per-worker statistics (own slot only) -----------------------------------------------

    def worker_started(self, pid: int) -> None:
        field = self.slot * WORKER_FIELDS
        self.workers[field] = pid
        self.workers[field + 1] = 0
        self.workers[field + 2] = 0
        self.workers[field + 3] = self.clock()
        self.workers[field + 4] = 1

    def stopped_accepting(self) -> None:
        self.workers[self.slot * WORKER_FIELDS + 4] = 0

    def accepting(self, slot: int) -> bool:
        return self.workers[slot * WORKER_FIELDS + 4] == 1

    def add_connection(self, delta: int) -> None:
        self.workers[self.slot * WORKER_FIELDS + 1] += delta

    def count_request(self) -> None:
        self.workers[self.slot * WORKER_FIELDS + 2] += 1

    def worker_stats(self, slot: int) -> tuple[int, int, int, int]:
        """(pid, open connections, requests served, started ns) of a worker slot."""
        field = slot * WORKER_FIELDS
        workers = self.workers
        return (workers[field], workers[field + 1], workers[field + 2], workers[field + 3])

    # -- the master's cleanup -------------------------------------------------------------------

    def clear_worker(self, slot: int) -> None:
        """Zero a dead worker's columns (its streams, active requests, statistics and
        half-open probe places) and remove its entries from every route queue."""
        width = self.layout.worker_slots
        for index in range(slot, len(self.streams), width):
            self.streams[index] = 0
        for index in range(slot, len(self.active), width):
            self.active[index] = 0
        for field in range(slot * WORKER_FIELDS, (slot + 1) * WORKER_FIELDS):
            self.workers[field] = 0
        for peer in range(self.layout.peer_count):
            # Its circuit-breaker results stay: they are still evidence about the peer,
            # and the replacement starts each bucket afresh when its epoch comes round.
            cell = peer * width + slot
            if self.probes[cell * PROBE_FIELDS] == 0:
                continue
            self._lock(_LOCK_CIRCUITS + peer)
            try:
                # The dead worker's probe places are free: say so to lock-free pickers.
                self.probes[cell * PROBE_FIELDS] = 0
                held = self.circuit(peer)
                self._store_circuit(peer, breaker.on_probe_abandoned(held, self.clock()))
            finally:
                self._unlock(_LOCK_CIRCUITS + peer)
        for queue, table in enumerate(self.queues):
            self._lock(_LOCK_QUEUES + queue)
            try:
                waitqueue.clear_owner(table, slot + 1)
            finally:
                self._unlock(_LOCK_QUEUES + queue)


@dataclass(frozen=True, slots=True)
class CircuitStep:
    """What a circuit operation did: the admission it gave, and the state before and
    after (equal when nothing changed)."""

    admission: breaker.Admission
    before: int
    after: int

    @property
    def changed(self) -> bool:
        return self.before != self.after


PASSED_CLOSED = CircuitStep("closed", breaker.CLOSED, breaker.CLOSED)
"""The step of a request through a closed circuit (immutable, so shared)."""


@dataclass(frozen=True, slots=True)
class Admission:
    allowed: bool
    index: int
    """The key's entry (to release the stream, to meter body bytes)."""
    retry_after_ns: int
    reason: Literal["", "rate", "streams", "table_full"]
    """Why it was refused ("" when allowed)."""


@dataclass(frozen=True, slots=True)
class BudgetGrant:
    """A reservation made by :meth:`SharedState.budget_reserve` (or, ``remote``, by the
    Redis backend: then it is settled there)."""

    key_index: int
    grant: budget.Grant
    remote: bool = False

    @property
    def tokens(self) -> int:
        return self.grant.tokens

    @property
    def micro_usd(self) -> int:
        return self.grant.micro_usd


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    """One key's usage in its current windows, with when each window ends (Unix ns)."""

    tokens: int
    tokens_window_end_ns: int
    micro_usd: int
    usd_window_end_ns: int

    @classmethod
    def at(cls, stored: budget.Usage, limits: budget.Limits, now_ns: int) -> BudgetUsage:
        """The stored counters as of ``now_ns`` (an ended window reads 0)."""
        usage = stored.current(limits, now_ns)
        return cls(usage.tokens, budget.window_end_ns(usage.token_window, budget.MINUTE_NS),
                   usage.micro_usd, budget.window_end_ns(usage.usd_window, limits.window_ns))
