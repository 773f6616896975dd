"""Prometheus metrics, in prometheus-client's multiprocess mode.

The master points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory inside its private
runtime directory before it imports prometheus_client and forks, so every process
(workers, and the master for reload counts) writes its samples to its own mmapped
files there; the master calls ``mark_process_dead`` for every worker it reaps. A scrape
of ``[metrics] listen`` + ``path`` is answered by whichever worker accepts it: it merges
all processes' files (:class:`MultiProcessCollector`) and adds the gauges that live in
shared memory (peer health and in-flight requests, per-worker connections, what is left
of each API key's budget, read from Redis when the budgets live there), in a thread so
the event loop never waits for that I/O.

Labels follow the audit log's field names (``route``, ``method``, ``status``, ``peer``,
``outcome``).
When ``[metrics] enabled = false`` the request path calls :class:`NoMetrics`, whose
methods do nothing, and prometheus_client is never imported.

A library of the master and the workers, not tooling: narrower than the li_httpd.ops rule.

May import: li_httpd.config, li_httpd.shm.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from li_httpd.config.model import Config
from li_httpd.shm import BudgetUsage, SharedState, budget_limits, peer_cap, peer_ids, queue_ids
from li_httpd.shm.circuit import STATE_NAMES, shown_state

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 120.0, 300.0)
ENV = "PROMETHEUS_MULTIPROC_DIR"


class NoMetrics:
    """The no-op twin of :class:`Metrics` (metrics disabled)."""

    def request_done(self, route: bytes | None, method: bytes, status: int, seconds: float,
                     ttfb_ms: float | None, peer: str | None) -> None:
        pass

    def rate_limited(self, route: bytes) -> None:
        pass

    def stream_outcome(self, route: bytes, outcome: str) -> None:
        pass

    def upstream_error(self, peer: str, kind: str) -> None:
        pass

    def connection(self, delta: int) -> None:
        pass

    def stream(self, route: bytes, delta: int) -> None:
        pass

    def log_dropped(self, kind: str, count: int) -> None:
        pass

    def usage(self, route: bytes, model: str, tokens: tuple[int, int, int, int],
              cost_usd: float) -> None:
        pass

    def censored(self, route: bytes, kind: str, name: str, count: int) -> None:
        pass

    def saturated(self, pool: str) -> None:
        """A request the gateway answered itself because every usable peer of ``pool``
        was at its ``max_concurrent`` cap."""

    def queue_outcome(self, route: bytes, outcome: str) -> None:
        """How a request left its route's queue: released, timeout, overflow,
        disconnected."""

    def state_backend(self, kind: str, event: str) -> None:
        """The shared-state backend (Redis): ``event`` = down or up (a transition), or
        the on_backend_error policy a ``kind`` decision followed (local, allow, deny)."""


TOKEN_KINDS = ("input", "output", "cache_read", "cache_write")


class Metrics(NoMetrics):
    """One worker's metric families, with label children cached on first use."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self._requests = Counter("li_requests_total", "Requests answered.",
                                 ["route", "method", "status"])
        self._latency = Histogram("li_request_duration_seconds",
                                  "Time from request head to the end of the response.",
                                  ["route"], buckets=LATENCY_BUCKETS)
        self._ttfb = Histogram("li_upstream_ttfb_seconds",
                               "Time from request head to the upstream's response head.",
                               ["route", "peer"], buckets=LATENCY_BUCKETS)
        self._connections = Gauge("li_connections", "Open client connections.",
                                  multiprocess_mode="livesum")
        self._streams = Gauge("li_active_streams", "Responses being forwarded.", ["route"],
                              multiprocess_mode="livesum")
        self._limited = Counter("li_rate_limited_total", "Requests refused with 429.",
                                ["route"])
        self._upstream_errors = Counter("li_upstream_errors_total",
                                        "Upstream failures by peer and kind.",
                                        ["peer", "kind"])
        self._outcomes = Counter("li_stream_outcomes_total",
                                 "Requests on proxy routes by how they ended.",
                                 ["route", "outcome"])
        self._dropped = Counter("li_log_dropped_total",
                                "Log records dropped because a worker's queue was full.",
                                ["kind"])
        self._tokens = Counter("li_tokens_total", "Tokens used, from the usage the upstream "
                               "reported (model: a [models] name, or \"other\").",
                               ["route", "model", "kind"])
        self._cost = Counter("li_cost_usd_total", "Estimated cost in USD, priced from "
                             "[models].", ["route", "model"])
        self._censor = Counter("li_censor_hits_total", "Secrets the leak censor found in "
                               "responses (kind: detector or path; name: the detector id "
                               "or the JSON deny path).", ["route", "kind", "name"])
        self._saturated = Counter("li_upstream_saturated_total", "Requests answered by the "
                                  "gateway because every usable peer of the pool was at "
                                  "its max_concurrent cap.", ["pool"])
        self._queued = Counter("li_route_queue_total", "Requests that waited in a route's "
                               "queue, by how they left it (released, timeout, overflow, "
                               "disconnected).", ["route", "outcome"])
        self._backend = Counter("li_state_backend_total", "Shared-state backend (Redis) "
                                "events: down/up transitions, and decisions taken by the "
                                "on_backend_error policy (local, allow, deny) by kind.",
                                ["kind", "event"])
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, family: Any, *labels: str) -> Any:
        key = (id(family), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    def request_done(self, route: bytes | None, method: bytes, status: int, seconds: float,
                     ttfb_ms: float | None, peer: str | None) -> None:
        name = route.decode() if route else "-"
        self._child(self._requests, name, method.decode("latin-1"), str(status)).inc()
        self._child(self._latency, name).observe(seconds)
        if ttfb_ms is not None and peer:
            self._child(self._ttfb, name, peer).observe(ttfb_ms / 1000)

    def rate_limited(self, route: bytes) -> None:
        self._child(self._limited, route.decode()).inc()

    def stream_outcome(self, route: bytes, outcome: str) -> None:
        self._child(self._outcomes, route.decode(), outcome).inc()

    def upstream_error(self, peer: str, kind: str) -> None:
        self._child(self._upstream_errors, peer, kind).inc()

    def saturated(self, pool: str) -> None:
        self._child(self._saturated, pool).inc()

    def queue_outcome(self, route: bytes, outcome: str) -> None:
        self._child(self._queued, route.decode(), outcome).inc()

    def state_backend(self, kind: str, event: str) -> None:
        self._child(self._backend, kind, event).inc()

    def connection(self, delta: int) -> None:
        self._connections.inc(delta)

    def stream(self, route: bytes, delta: int) -> None:
        self._child(self._streams, route.decode()).inc(delta)

    def log_dropped(self, kind: str, count: int) -> None:
        self._child(self._dropped, kind).inc(count)

    def usage(self, route: bytes, model: str, tokens: tuple[int, int, int, int],
              cost_usd: float) -> None:
        name = route.decode()
        for kind, count in zip(TOKEN_KINDS, tokens, strict=True):
            if count:
                self._child(self._tokens, name, model, kind).inc(count)
        if cost_usd:
            self._child(self._cost, name, model).inc(cost_usd)

    def censored(self, route: bytes, kind: str, name: str, count: int) -> None:
        self._child(self._censor, route.decode(), kind, name).inc(count)


def for_config(config: Config) -> NoMetrics:
    return Metrics() if config.metrics.enabled and os.environ.get(ENV) else NoMetrics()


RemoteBudgets = Callable[[], "Mapping[str, BudgetUsage] | str | None"]
"""Reads the budgets another store holds (Redis), by API key id; a str says why it
could not; None: the budgets are in shared memory."""


class _SharedStateCollector:
    """Gauges read from shared memory at scrape time (budgets from Redis when they live
    there)."""

    def __init__(self, config: Config, shared: SharedState,
                 remote_budgets: RemoteBudgets | None = None) -> None:
        self.config = config
        self.shared = shared
        self.remote_budgets = remote_budgets

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily("li_upstream_peer_up", "1 when passive health has the peer up.",
                               labels=["pool", "peer"])
        active = GaugeMetricFamily("li_upstream_peer_active",
                                   "Requests in flight to the peer, all workers.",
                                   labels=["pool", "peer"])
        cap = GaugeMetricFamily("li_upstream_peer_max_concurrent",
                                "The peer's max_concurrent cap (0 = none).",
                                labels=["pool", "peer"])
        ready = GaugeMetricFamily("li_upstream_peer_ready", "1 when the peer's last health "
                                  "probes found it ready (always 1 in a pool without a "
                                  "health_check, whose peers count as ready).",
                                  labels=["pool", "peer"])
        live = GaugeMetricFamily("li_upstream_peer_live", "1 when the peer's last `live` "
                                 "probes succeeded (pools whose health_check sets `live`).",
                                 labels=["pool", "peer"])
        circuit = GaugeMetricFamily("li_upstream_circuit_state", "1 for the state the peer's "
                                    "circuit breaker is in (closed, open, half_open).",
                                    labels=["pool", "peer", "state"])
        transitions = CounterMetricFamily("li_upstream_circuit_transitions",
                                          "State changes of the peer's circuit breaker.",
                                          labels=["pool", "peer"])
        now = self.shared.clock()
        ids = peer_ids(self.config)
        for pool, upstream in self.config.upstreams.items():
            check = upstream.health_check
            for peer, shared_id in zip(upstream.peers, ids[pool], strict=True):
                up.add_metric([pool, peer.url], 1.0 if self.shared.peer_up(shared_id, now) else 0.0)
                active.add_metric([pool, peer.url], float(self.shared.active_of(shared_id)))
                cap.add_metric([pool, peer.url], float(peer_cap(upstream, peer)))
                probed_ready, probed_live = self.shared.probe_state(shared_id)
                ready.add_metric([pool, peer.url], 1.0 if check is None
                                 or probed_ready.name == "ready" else 0.0)
                if check is not None and check.live:
                    live.add_metric([pool, peer.url],
                                    1.0 if probed_live.live_name == "live" else 0.0)
                if upstream.circuit_breaker.enabled:
                    held = self.shared.circuit(shared_id)  # lock-free: we are a thread
                    shown = shown_state(held, now)
                    for state in STATE_NAMES:
                        circuit.add_metric([pool, peer.url, state],
                                           1.0 if state == shown else 0.0)
                    transitions.add_metric([pool, peer.url], float(held.transitions))
        yield up
        yield active
        yield ready
        yield live
        yield circuit
        yield transitions
        yield cap
        depth = GaugeMetricFamily("li_route_queue_depth", "Requests waiting in the route's "
                                  "queue, all workers.", labels=["route"])
        for route, index in queue_ids(self.config).items():
            depth.add_metric([route], float(self.shared.queue_depth(index)))
        yield depth
        remaining = GaugeMetricFamily(
            "li_budget_remaining", "What is left of an API key's budget in its current "
            "window: tokens this minute, or dollars this budget window.",
            labels=["key_id", "kind"])
        remote = self.remote_budgets() if self.remote_budgets is not None else None
        for index, key in enumerate(self.config.auth.keys):
            limits = budget_limits(key)
            # Redis unreadable: no sample rather than this host's stale counters.
            if not limits.any or isinstance(remote, str):
                continue
            usage = (remote[key.id] if remote is not None  # lock-free: we are a thread
                     else self.shared.budget_usage(index, limits))
            if limits.tokens_per_minute:
                remaining.add_metric([key.id, "tokens"],
                                     float(max(0, limits.tokens_per_minute - usage.tokens)))
            if limits.micro_usd:
                remaining.add_metric([key.id, "usd"],
                                     max(0, limits.micro_usd - usage.micro_usd) / 1e6)
        yield remaining
        not_after = self.shared.cert_not_after()
        if self.config.server.tls.mode != "off" and not_after:
            expiry = GaugeMetricFamily("li_tls_cert_expiry_seconds", "Seconds until the "
                                       "serving certificate's not_after (negative: expired).",
                                       labels=["cert"])
            expiry.add_metric(["server"], float(not_after - time.time()))
            yield expiry


def render(config: Config, shared: SharedState,
           remote_budgets: RemoteBudgets | None = None) -> bytes:
    """The text exposition of every process's metrics plus the shared-memory gauges
    (blocking file reads, and a Redis read with ``remote_budgets``: run it in a
    thread)."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(_SharedStateCollector(config, shared, remote_budgets))
    return generate_latest(registry)


def prepare_directory(path: str) -> None:
    """Master, before importing prometheus_client and forking: an empty directory."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))
    os.environ[ENV] = path


def mark_dead(pid: int) -> None:
    """Master, after reaping a worker: drop its live gauge files."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def count_reload(result: str) -> None:
    """Master: one reload attempt by result (ok, failed, unchanged)."""
    if not os.environ.get(ENV):
        return
    from prometheus_client import Counter

    global _RELOADS  # noqa: PLW0603 - one family per process, created on first use
    if _RELOADS is None:
        _RELOADS = Counter("li_reloads_total", "Reload attempts by result.", ["result"])
    _RELOADS.labels(result).inc()


_RELOADS: Any = None


def count_acme_renewal(result: str) -> None:
    """Master: one ACME issuance by result (success, or the failure kind)."""
    if not os.environ.get(ENV):
        return
    from prometheus_client import Counter

    global _ACME  # noqa: PLW0603 - one family per process, created on first use
    if _ACME is None:
        _ACME = Counter("li_tls_acme_renewals_total", "ACME certificate issuances by "
                        "result: success, acme_error, network, validation, timeout, local.",
                        ["result"])
    _ACME.labels(result).inc()


_ACME: Any = None


def count_ticket_rotation(result: str) -> None:
    """Master: one session ticket key rotation (a new generation) by result (ok, failed)."""
    if not os.environ.get(ENV):
        return
    from prometheus_client import Counter

    global _ROTATIONS  # noqa: PLW0603 - one family per process, created on first use
    if _ROTATIONS is None:
        _ROTATIONS = Counter("li_tls_ticket_rotations_total",
                             "Session ticket key rotations by result.", ["result"])
    _ROTATIONS.labels(result).inc()


_ROTATIONS: Any = None
