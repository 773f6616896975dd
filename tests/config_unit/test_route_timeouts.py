"""[route.timeouts] inherits [defaults.timeouts] key by key; every route has timers,
with or without a rate limit."""

from __future__ import annotations

from li_httpd.config import load_text
from li_httpd.workers.context import WorkerContext

CONFIG = """
[server]
listen = "127.0.0.1:8080"
profile = "dev"

[upstreams.m]
peers = ["http://127.0.0.1:9000"]
read_timeout = "2s"

[defaults.timeouts]
stream_idle_timeout = "30s"
heartbeat_interval = "10s"

[[route]]
name = "own"
priority = 1
match.path = { type = "prefix", value = "/v1/" }
proxy = "m"

[route.timeouts]
ttfb_timeout = "5s"

[[route]]
name = "inherits"
priority = 2
match.path = { type = "prefix", value = "/v2/" }
proxy = "m"
"""


def test_a_route_section_overrides_defaults_key_by_key() -> None:
    config = load_text(CONFIG, "timers.toml").config
    own, inherits = config.route
    assert (own.timeouts.ttfb_timeout, own.timeouts.stream_idle_timeout,
            own.timeouts.heartbeat_interval, own.timeouts.stream_max_duration) == (
        5_000, 30_000, 10_000, 600_000)
    assert inherits.timeouts == config.defaults.timeouts
    assert inherits.timeouts.ttfb_timeout == 60_000
    assert own.rate_limit is None and inherits.rate_limit is None


def test_timers_are_compiled_for_routes_without_a_rate_limit() -> None:
    ctx = WorkerContext(load_text(CONFIG, "timers.toml"))
    try:
        plan = ctx.plans["own"]
        assert plan.limit is None
        # The pool's shorter read_timeout caps nothing: it bounds only gaps in a body
        # with a Content-Length.
        assert (plan.ttfb_timeout, plan.idle_timeout, plan.max_duration, plan.heartbeat,
                plan.read_timeout) == (5.0, 30.0, 600.0, 10.0, 2.0)
    finally:
        ctx.close()
