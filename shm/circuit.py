"""The circuit breaker of one upstream peer: a small state machine. Pure.

Theory of operation. A peer's circuit is *closed* (traffic flows) until the error rate
of its results within a sliding ``window`` reaches ``error_percent`` with at least
``min_requests`` results; then it is *open*: no request goes to the peer for
``open_duration``. After that it is *half-open*: at most ``half_open_probes``
requests at once (across all workers) go to the peer as probes. A probe that succeeds
closes the circuit; a probe that fails opens it again for another ``open_duration``.

Results are counted per worker in ``BUCKETS`` time buckets (``window / BUCKETS`` wide)
that only their own worker writes, so recording a result takes no lock; the window is
the sum of every worker's buckets whose epoch (``now // bucket width``) lies in the
last ``BUCKETS`` epochs and not before the circuit's ``floor`` (the first epoch after
it last closed, so errors from before a recovery cannot re-open it at once). Only
transitions take the peer's lock. Probe places are held in per-worker columns too (a
count and the start of the worker's latest probe), so the master frees the places of a
killed worker by zeroing its column, and a place whose probe has had no answer for
``probe_timeout`` counts as free.

The open -> half-open step is lazy: it is made by the first worker that wants to send
the peer a request once ``until_ns`` has passed. ``until_ns`` therefore also serves
lock-free pickers as a hint: a circuit that is not closed may be tried once
``until_ns`` is reached (for half-open: when a probe place may be free). Times are
nanoseconds on the shared monotonic clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from li_httpd.config.model import CircuitBreaker

CircuitState = Literal["closed", "open", "half_open"]
Admission = Literal["closed", "probe", "refused"]
"""What a request to a peer may do: go as a normal request (the circuit is closed), go
as a half-open probe (it must report its result), or not go at all."""

CLOSED: Final = 0
OPEN: Final = 1
HALF_OPEN: Final = 2
STATE_NAMES: Final[tuple[CircuitState, ...]] = ("closed", "open", "half_open")
BUCKETS: Final = 10
"""Time buckets per window: the window slides in steps of a tenth of its length."""

_MS = 1_000_000
FORGOTTEN: Final = 1 << 32
"""A probe column's count is ``live + FORGOTTEN * forgotten``: the probes of a worker
that held no place any more (``probe_timeout``) when that worker admitted another are
forgotten; each end frees a forgotten one first, so a late end never frees the place
of a newer probe."""
LIVE_MASK: Final = FORGOTTEN - 1


@dataclass(frozen=True, slots=True)
class Policy:
    """A pool's ``circuit_breaker`` settings in nanoseconds."""

    enabled: bool
    bucket_ns: int
    min_requests: int
    error_percent: int
    open_ns: int
    probes: int
    probe_timeout_ns: int
    failures: frozenset[str]

    @classmethod
    def of(cls, config: CircuitBreaker) -> Policy:
        return cls(config.enabled, max(1, config.window * _MS // BUCKETS), config.min_requests,
                   config.error_percent, config.open_duration * _MS, config.half_open_probes,
                   config.probe_timeout * _MS, frozenset(config.failures))

    def epoch(self, now: int) -> int:
        return now // self.bucket_ns


@dataclass(frozen=True, slots=True)
class Circuit:
    state: int = CLOSED
    until_ns: int = 0
    """Open: when probing may begin. Half-open: before then every probe place is taken."""
    floor: int = 0
    """The first bucket epoch whose results count (the one after the last close)."""
    transitions: int = 0
    """State changes so far (the metrics' counter)."""

    @property
    def name(self) -> CircuitState:
        return STATE_NAMES[self.state]


def passable(state: int, until_ns: int, now: int) -> bool:
    """Whether a picker may choose the peer (lock-free hint; :func:`admit` decides)."""
    return state == CLOSED or now >= until_ns


def shown_state(circuit: Circuit, now: int) -> CircuitState:
    """The state an operator sees: an open circuit whose open time is over is
    half-open, even before a request has made the step."""
    if circuit.state == OPEN and now >= circuit.until_ns:
        return "half_open"
    return circuit.name


def available_at(circuit: Circuit) -> int:
    """When the peer may get a request again (0: now)."""
    return 0 if circuit.state == CLOSED else circuit.until_ns


def trips(requests: int, errors: int, policy: Policy) -> bool:
    """Whether the window's results open a closed circuit."""
    return requests >= policy.min_requests and errors * 100 >= policy.error_percent * requests


def on_trip(circuit: Circuit, now: int, policy: Policy) -> Circuit:
    """The window's error rate tripped (checked with :func:`trips`)."""
    if circuit.state != CLOSED:
        return circuit
    return Circuit(OPEN, now + policy.open_ns, circuit.floor, circuit.transitions + 1)


def adopt_open(circuit: Circuit, until_ns: int) -> Circuit:
    """Another gateway instance opened this peer's circuit (shared through Redis): a
    closed circuit opens until ``until_ns``; an open or half-open one is left alone
    (this instance is already sparing the peer and probes it on its own)."""
    if circuit.state != CLOSED:
        return circuit
    return Circuit(OPEN, until_ns, circuit.floor, circuit.transitions + 1)


def admit(circuit: Circuit, now: int, probes: Probes,
          policy: Policy) -> tuple[Circuit, Admission]:
    """Whether a request may go to the peer, given the live probes of all workers. A
    ``probe`` admission takes one place (the caller counts it in its column)."""
    if circuit.state == CLOSED:
        return circuit, "closed"
    if circuit.state == OPEN:
        if now < circuit.until_ns:
            return circuit, "refused"
        circuit = Circuit(HALF_OPEN, now, circuit.floor, circuit.transitions + 1)
    if probes.count >= policy.probes:
        return Circuit(HALF_OPEN, max(now + 1, probes.free_at_ns), circuit.floor,
                       circuit.transitions), "refused"
    full = probes.count + 1 >= policy.probes
    until = min(probes.free_at_ns, now + policy.probe_timeout_ns) if full else now
    return Circuit(HALF_OPEN, until, circuit.floor, circuit.transitions), "probe"


def on_probe_result(circuit: Circuit, now: int, error: bool, policy: Policy) -> Circuit:
    """A probe's result: an error opens the circuit again, a success closes it (and
    starts a fresh window). A result that arrives when the circuit has moved on (another
    probe decided first) changes nothing."""
    if circuit.state != HALF_OPEN:
        return circuit
    if error:
        return Circuit(OPEN, now + policy.open_ns, circuit.floor, circuit.transitions + 1)
    return Circuit(CLOSED, 0, policy.epoch(now) + 1, circuit.transitions + 1)


def on_probe_abandoned(circuit: Circuit, now: int) -> Circuit:
    """A probe ended without a result (the client left, a timer fired): its place is
    free again."""
    if circuit.state != HALF_OPEN:
        return circuit
    return Circuit(HALF_OPEN, now, circuit.floor, circuit.transitions)


def counted(epoch: int, now_epoch: int, floor: int) -> bool:
    """Whether a bucket of ``epoch`` lies in the window ending at ``now_epoch``."""
    return max(floor, now_epoch - BUCKETS + 1) <= epoch <= now_epoch


def window_totals(buckets: Sequence[int], now_epoch: int, floor: int) -> tuple[int, int]:
    """(results, errors) in the window: ``buckets`` is a flat run of (epoch, successes,
    errors) triples, any number of workers' columns."""
    if floor > now_epoch + 1:
        # Set in the units of a wider window (a worker of the generation before a reload
        # closed the circuit): no floor of these buckets' units lies that far ahead.
        floor = 0
    results = errors = 0
    for index in range(0, len(buckets), 3):
        if counted(buckets[index], now_epoch, floor):
            results += buckets[index + 1] + buckets[index + 2]
            errors += buckets[index + 2]
    return results, errors


@dataclass(frozen=True, slots=True)
class Probes:
    count: int
    """Probes holding a place now."""
    free_at_ns: int
    """When the oldest of them stops holding its place even without an answer."""


def live_probes(columns: Sequence[int], now: int, probe_timeout_ns: int) -> Probes:
    """The probes in flight: ``columns`` is a flat run of (count, latest start ns)
    pairs, one per worker; a worker's probes whose latest start is ``probe_timeout_ns``
    ago or more no longer hold a place."""
    total = 0
    free_at = now + probe_timeout_ns
    for index in range(0, len(columns), 2):
        count = columns[index] & LIVE_MASK
        expires = columns[index + 1] + probe_timeout_ns
        if count > 0 and now < expires:
            total += count
            free_at = min(free_at, expires)
    return Probes(total, free_at)
