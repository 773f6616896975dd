"""Per-worker state compiled once from a config generation.

:class:`WorkerContext` holds what every connection of a worker shares: the router, one
:class:`RoutePlan` per route (header policy, upstream group or static site, timeouts,
all precomputed so the request path does no config work), parse limits, request-id
generation and the housekeeping task.
"""

from __future__ import annotations

import os
import random
import ssl
import time
from dataclasses import dataclass
from typing import cast

import orjson
from li_httpd.config import Found, LoadedConfig, Router, effective_deny_paths
from li_httpd.config.acme_paths import challenge_directory
from li_httpd.config.checks import parse_redis_url
from li_httpd.config.model import Config, Model, RateLimit, Route, State
from li_httpd.ops.log.writer import WorkerLog
from li_httpd.ops.metrics import for_config as metrics_for
from li_httpd.shm import SharedState, budget_limits, gcra, layout_for, peer_ids, queue_ids

from .censor import Rules, rules_for
from .housekeeping import Housekeeping
from .http1 import DECISION_HEADERS, ParseLimits
from .identity import KeyRing
from .policy import HeaderPolicy
from .redis_client import RedisPool
from .retry import FallbackPolicy, FallbackTrigger
from .shared_limits import RemoteLimits, host_id, read_password
from .static import StaticSite
from .upstream import UpstreamGroup
from .usage import Price
from .waitline import WaitLine


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Client-side timeouts, in seconds."""

    header: float
    body: float
    keepalive: float
    send: float


@dataclass(frozen=True, slots=True)
class RouteLimit:
    """A route's ``[route.rate_limit]``, compiled."""

    key_kind: str
    rate: gcra.Rate
    byte_rate: gcra.Rate
    max_streams: int

    @classmethod
    def of(cls, limit: RateLimit) -> RouteLimit:
        return cls(limit.key, gcra.Rate.of(limit.requests_per_sec, limit.burst),
                   gcra.Rate.of(limit.bytes_in_per_sec, limit.bytes_in_per_sec),
                   limit.concurrent_streams)


@dataclass(slots=True)
class RoutePlan:
    route: Route
    name_bytes: bytes
    policy: HeaderPolicy
    group: UpstreamGroup | None
    static: StaticSite | None
    healthcheck: bool
    requires_key: bool
    requires_cert: bool
    """``auth = "client_cert"``: the caller is the [auth] entry naming the connection's
    verified client certificate."""
    limit: RouteLimit | None
    ttfb_timeout: float
    """Seconds to wait for the upstream's response head."""
    idle_timeout: float
    """Longest gap between reads of a streamed body (no Content-Length)."""
    read_timeout: float
    """Longest gap between reads of a body with a Content-Length (the pool's)."""
    max_duration: float
    heartbeat: float
    """Seconds between SSE comments while an event stream is silent; 0 = none."""
    buffer_body: bool
    """``request_buffering``: the whole body is read before an upstream is contacted."""
    fallback: tuple[UpstreamGroup, ...]
    """``[route.fallback] chain``: the pools tried after ``group``, in order."""
    fallback_policy: FallbackPolicy | None
    """What moves a request on to the next pool (None: no chain)."""
    early_head: bool
    """``early_stream_head``: a request asking for a stream gets the SSE head at once."""
    model_routing: bool
    """The pool comes from the model the request names (``[models]``)."""
    accounting: bool
    """``usage_accounting``: token usage is read from the responses."""
    inject_usage: bool
    """``inject_stream_usage``: OpenAI streaming requests ask for a usage chunk."""
    models_list: bool
    """The built-in ``GET /v1/models`` responder."""
    x_api_key: bool
    """``accept_x_api_key``: the API key may come in ``x-api-key``."""
    censor: Rules | None
    """The leak censor's rules for response bodies (None: the censor is off here)."""
    expose_errors: bool
    """``expose_upstream_errors``: upstream 4xx/5xx bodies pass through unchanged."""
    queue: WaitLine | None = None
    """``[route.queue]``: where requests wait while the pool has no usable peer."""


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """A ``[models]`` entry, compiled: its pool and prices."""

    group: UpstreamGroup
    price: Price
    default_max_tokens: int

    @classmethod
    def of(cls, model: Model, group: UpstreamGroup) -> ModelPlan:
        price = model.price
        return cls(group, Price(price.input, price.output, price.cache_read,
                                price.cache_write), model.default_max_tokens)


class ModelLists:
    """What ``GET /v1/models`` answers (OpenAI's list shape), per API key: only the models
    the key may use. Rendered once per config generation."""

    __slots__ = ("_allowed", "_bodies")

    def __init__(self, config: Config) -> None:
        created = int(time.time())
        self._allowed: dict[str | None, frozenset[str]] = {
            key.id: frozenset(key.models) for key in config.auth.keys if key.models}
        self._bodies: dict[str | None, bytes] = {}
        for key_id in (None, *self._allowed):
            names = [name for name in config.models if self.allows(key_id, name)]
            self._bodies[key_id] = orjson.dumps({"object": "list", "data": [
                {"id": name, "object": "model", "created": created,
                 "owned_by": config.models[name].owned_by} for name in names]})

    def allows(self, key_id: str | None, model: str) -> bool:
        """Whether the caller with ``key_id`` may use ``model`` (a key without a list may
        use any model)."""
        allowed = self._allowed.get(key_id) if key_id is not None else None
        return allowed is None or model in allowed

    def restricts(self, key_id: str | None) -> bool:
        """Whether the key may use only some models."""
        return key_id is not None and key_id in self._allowed

    def body(self, key_id: str | None) -> bytes:
        return self._bodies.get(key_id, self._bodies[None])


class RequestIds:
    """``<worker prefix>-<counter>``: unique across workers and restarts, cheap."""

    __slots__ = ("_count", "_prefix")

    def __init__(self, seed_bytes: bytes) -> None:
        self._prefix = seed_bytes.hex().encode() + b"-"
        self._count = 0

    def next(self) -> bytes:
        self._count += 1
        return self._prefix + b"%x" % self._count


def censor_rules(loaded: LoadedConfig, route: Route) -> Rules | None:
    """A route's compiled leak censor, or None when the master switch or the route's own
    switch is off. Its deny paths include the generated ones when the route asks."""
    censor = route.leak_censor
    if not (loaded.config.leak_censor.enabled and censor.enabled):
        return None
    paths = effective_deny_paths(censor, loaded.generated_censor)
    return rules_for((tuple(censor.patterns), censor.on_detect, paths,
                      censor.max_scrub_bytes, censor.oversize_json))


def _seed(config: LoadedConfig) -> bytes:
    rng = config.config.server.rng
    if rng.mode in ("prng", "sim"):
        return random.Random(rng.seed ^ os.getpid()).randbytes(6)
    return os.urandom(6)


class WorkerContext:
    __slots__ = ("acme_challenges", "budgets", "client_identity", "config", "groups",
                 "housekeeping", "keyring",
                 "limits", "log",
                 "metrics", "model_lists", "models", "plans", "remote", "request_ids",
                 "resolved", "router", "server_tls", "shared", "timeouts")

    def __init__(self, loaded: LoadedConfig, server_tls: ssl.SSLContext | None = None,
                 shared: SharedState | None = None, slot: int = 0,
                 log: WorkerLog | None = None) -> None:
        """``shared``: the master's segment (a private one is made when None, for a
        worker run in-process); ``slot``: this worker's column in it."""
        config = loaded.config
        self.config = loaded
        self.server_tls = server_tls
        tls = config.server.tls
        self.client_identity: str | None = (tls.client_identity if server_tls is not None
                                            and tls.client_auth != "off" else None)
        """The configured client-certificate identity field, when clients present one."""
        self.acme_challenges = (challenge_directory(tls.cert_dir)
                                if tls.mode == "lets_encrypt" else "")
        """The HTTP-01 token store ("" = no ACME: the reserved path is routed like any)."""
        self.shared = shared or SharedState.create(layout_for(config, 1))
        self.shared.slot = slot
        self.keyring = KeyRing(config.auth.keys)
        self.log = log or WorkerLog(config.log)
        self.metrics = metrics_for(config)
        self.remote = remote_limits(config.state, os.getpid()) \
            if config.state.backend == "redis" else None
        """The Redis limits (``[state] backend = "redis"``), else None."""
        limits = config.limits
        self.limits = ParseLimits(
            single_headers=DECISION_HEADERS | frozenset(
                literal.name.encode() for route in config.route
                for literal in route.match.headers),
            max_request_line=limits.max_request_line,
            max_header_bytes=limits.max_header_bytes,
            max_headers=limits.max_headers,
            max_chunk_extension=limits.max_chunk_extension,
            max_body=limits.max_body,
        )
        self.timeouts = Timeouts(limits.header_timeout / 1000, limits.body_timeout / 1000,
                                 limits.keepalive_timeout / 1000, limits.send_timeout / 1000)
        self.router = Router(config.route)
        self.resolved: dict[tuple[bytes, bytes | None, bytes], tuple[str, Found]] = {}
        """Recent route resolutions by raw (method, host, path): see admission.py."""
        self.housekeeping = Housekeeping()
        self.request_ids = RequestIds(_seed(loaded))
        ids = peer_ids(config)
        self.groups = {name: UpstreamGroup(name, upstream, self.limits, self.shared, index,
                                           ids[name], self.log, self.remote)
                       for index, (name, upstream) in enumerate(config.upstreams.items())}
        self.housekeeping.sweepers.extend(g.sweep for g in self.groups.values())
        self.models = {name: ModelPlan.of(model, self.groups[model.pool])
                       for name, model in config.models.items()}
        self.model_lists = ModelLists(config)
        self.budgets = {key.id: (index, budget_limits(key))
                        for index, key in enumerate(config.auth.keys)
                        if key.tokens_per_minute or key.usd_budget}
        """Keys with a token or dollar budget: their entry in the shared state, limits."""
        sites = {name: StaticSite(root) for name, root in config.static.items()}
        self.plans: dict[str, RoutePlan] = {}
        queues = queue_ids(config)
        for route in config.route:
            group = self.groups.get(route.proxy) if route.proxy else None
            read_timeout = group.settings.read_timeout / 1000 if group else 60.0
            limit = route.rate_limit
            timers = route.timeouts
            self.plans[route.name] = RoutePlan(
                route=route,
                name_bytes=route.name.encode(),
                policy=HeaderPolicy(route.headers, route.leak_censor.deny_headers),
                group=group,
                static=sites.get(route.static) if route.static else None,
                healthcheck=route.static == "healthcheck",
                requires_key=route.auth == "api_key",
                requires_cert=route.auth == "client_cert",
                limit=RouteLimit.of(limit) if limit else None,
                ttfb_timeout=timers.ttfb_timeout / 1000,
                idle_timeout=timers.stream_idle_timeout / 1000,
                read_timeout=read_timeout,
                max_duration=timers.stream_max_duration / 1000,
                heartbeat=timers.heartbeat_interval / 1000,
                buffer_body=route.request_buffering,
                fallback=tuple(self.groups[name] for name in route.fallback.chain),
                fallback_policy=FallbackPolicy(
                    frozenset(cast("tuple[FallbackTrigger, ...]", route.fallback.on)),
                    frozenset(route.fallback.statuses)) if route.fallback.chain else None,
                early_head=timers.early_stream_head and timers.heartbeat_interval > 0,
                model_routing=route.model_routing,
                accounting=route.usage_accounting,
                inject_usage=route.inject_stream_usage,
                models_list=route.static == "models",
                x_api_key=route.accept_x_api_key,
                censor=censor_rules(loaded, route),
                expose_errors=config.server.expose_upstream_errors,
                queue=WaitLine(self.shared, queues[route.name], route.queue.max_wait / 1000)
                if route.queue is not None else None,
            )

    def report_backend(self) -> None:
        """Log and count the Redis backend's up/down changes (once per change)."""
        remote = self.remote
        if remote is None:
            return
        for change in remote.transitions:
            event = change.partition(":")[0]
            self.metrics.state_backend("backend", event)
            if event == "down":
                self.log.diagnostic("error", "shared state backend down; decisions follow "
                                    "on_backend_error until it answers again",
                                    error=change.partition(": ")[2])
            else:
                self.log.diagnostic("warn", "shared state backend answers again")
        remote.transitions.clear()

    def close(self) -> None:
        for group in self.groups.values():
            group.close_all()


def remote_limits(state: State, worker: int) -> RemoteLimits:
    """The Redis limits of one worker (``worker``: its pid, part of its lease ids; not its
    slot, which a reload may give a new worker while the retiring one still holds
    leases)."""
    url = parse_redis_url(state.url)
    if isinstance(url, str):
        raise ValueError(url)  # validation refused this config already
    context = ssl.create_default_context(cafile=state.ca_file or None) if url.tls else None
    pool = RedisPool(url, read_password(state), state.pool_size, state.timeout / 1000,
                     context)
    return RemoteLimits(state, pool, worker, host_id())
