"""li_httpd.shm: the only code that knows shared-memory layouts.

Fixed-layout records for state that must hold across workers (rate limits, stream
counters, least-connection counts, passive health, circuit breakers, per-key token and
dollar budgets, the health actor's probe results, per-route cold-start queues), in one
segment the master creates before it forks (:mod:`.state`), plus the pure arithmetic on
that state (:mod:`.gcra`, :mod:`.health`, :mod:`.circuit`, :mod:`.budget`,
:mod:`.readiness`, :mod:`.saturation`, :mod:`.waitqueue`).

May import: li_httpd.config.
"""

from .budget import Denied as BudgetDenied
from .budget import Limits as BudgetLimits
from .circuit import Policy as CircuitPolicy
from .state import BudgetGrant, BudgetUsage, CircuitStep, Layout, SharedState

__all__ = ["BudgetDenied", "BudgetGrant", "BudgetLimits", "BudgetUsage", "CircuitPolicy",
           "CircuitStep", "Layout", "SharedState", "budget_limits", "layout_for", "peer_cap",
           "peer_ids", "queue_ids"]

from li_httpd.config.model import ApiKey, Config, Peer, Upstream

from .state import SLOTS_PER_BUCKET, budget_id

GENERATIONS = 2
"""Worker slots per configured worker: a reload's new generation uses fresh columns."""


def layout_for(config: Config, workers: int) -> Layout:
    capacity = -(-config.limits.max_rate_keys // SLOTS_PER_BUCKET) * SLOTS_PER_BUCKET
    peers = sum(len(pool.peers) for pool in config.upstreams.values())
    return Layout(capacity, workers * GENERATIONS, max(peers, 1),
                  tuple(budget_id(key.id) for key in config.auth.keys),
                  tuple((budget_id(route.name), route.queue.max_size)
                        for route in config.route if route.queue is not None))


def peer_cap(pool: Upstream, peer: Peer) -> int:
    """A peer's ``max_concurrent`` (its own, else the pool's; 0 = no cap)."""
    return pool.max_concurrent if peer.max_concurrent is None else peer.max_concurrent


def queue_ids(config: Config) -> dict[str, int]:
    """The queue table of each route with a ``[route.queue]`` (its layout position)."""
    queued = [route.name for route in config.route if route.queue is not None]
    return {name: index for index, name in enumerate(queued)}


def budget_limits(key: ApiKey) -> BudgetLimits:
    """A configured key's budget limits in the shared state's units."""
    return BudgetLimits.of(key.tokens_per_minute, key.usd_budget, key.budget_window)


def peer_ids(config: Config) -> dict[str, tuple[int, ...]]:
    """Global peer numbers per upstream pool, in config order (stable across workers)."""
    ids: dict[str, tuple[int, ...]] = {}
    next_id = 0
    for name, pool in config.upstreams.items():
        ids[name] = tuple(range(next_id, next_id + len(pool.peers)))
        next_id += len(pool.peers)
    return ids
