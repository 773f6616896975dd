"""What the master reports about budgets (`ctl status` JSON and the metrics gauge)."""

from __future__ import annotations

from li_httpd.config import load_text
from li_httpd.config.model import Config
from li_httpd.ops.metrics import _SharedStateCollector
from li_httpd.shm import BudgetDenied, SharedState, budget_limits, layout_for
from li_httpd.supervisor.master import budget_status

NOW = 1_800_000_030 * 1_000_000_000  # 30 s into a minute; the day ends at 1800057600
CONFIG = ('[server]\nlisten = "127.0.0.1:0"\nprofile = "dev"\nworkers = 1\n'
          '[routes]\n"GET /health" = "static:healthcheck"\n'
          '[auth]\nkeys = [{ id = "free", sha256 = "' + "1" * 64 + '" }, '
          '{ id = "team", sha256 = "' + "2" * 64 + '", tokens_per_minute = 5000, '
          'usd_budget = 20.0 }, '
          '{ id = "bot", sha256 = "' + "3" * 64 + '", usd_budget = 1.5, '
          'budget_window = "1h" }]\n')


def _shared() -> tuple[SharedState, Config]:
    config = load_text(CONFIG, "gw.toml").config
    shared = SharedState.create(layout_for(config, 1))
    keys = config.auth.keys
    assert not isinstance(shared.budget_reserve(1, budget_limits(keys[1]), 1200, 1_500_000,
                                                NOW), BudgetDenied)
    assert not isinstance(shared.budget_reserve(2, budget_limits(keys[2]), 10, 250_000, NOW),
                          BudgetDenied)
    return shared, config


def test_status_lists_keys_with_a_budget() -> None:
    shared, config = _shared()
    rows = budget_status(shared, config.auth.keys, NOW)
    assert rows == [
        {"key": "team", "tokens": 1200, "tokens_per_minute": 5000,
         "tokens_window_end": 1_800_000_060, "usd": 1.5, "usd_budget": 20.0,
         "usd_window_end": 1_800_057_600},
        {"key": "bot", "tokens": 10, "tokens_per_minute": 0,
         "tokens_window_end": 1_800_000_060, "usd": 0.25, "usd_budget": 1.5,
         "usd_window_end": 1_800_003_600},
    ]


def test_remaining_gauge() -> None:
    shared, config = _shared()
    shared.wall_clock = lambda: NOW
    families = {f.name: f for f in _SharedStateCollector(config, shared).collect()}
    samples = {tuple(s.labels.values()): s.value
               for s in families["li_budget_remaining"].samples}
    assert samples == {("team", "tokens"): 3800.0, ("team", "usd"): 18.5,
                       ("bot", "usd"): 1.25}


def test_redis_held_budgets_replace_this_hosts_counters() -> None:
    """With the Redis backend the status rows and the gauge show what Redis holds;
    when Redis cannot be read the gauge has no sample (not this host's share)."""
    from li_httpd.shm import BudgetUsage

    shared, config = _shared()
    shared.wall_clock = lambda: NOW
    remote = {"team": BudgetUsage(4000, 1_800_000_060 * 10**9, 19_000_000,
                                  1_800_057_600 * 10**9),
              "bot": BudgetUsage(0, 1_800_000_060 * 10**9, 0, 1_800_003_600 * 10**9)}
    rows = budget_status(shared, config.auth.keys, NOW, remote)
    assert [(r["key"], r["tokens"], r["usd"]) for r in rows] == [("team", 4000, 19.0),
                                                                 ("bot", 0, 0.0)]
    families = {f.name: f for f in _SharedStateCollector(config, shared,
                                                         lambda: remote).collect()}
    assert {tuple(s.labels.values()): s.value
            for s in families["li_budget_remaining"].samples} == {
        ("team", "tokens"): 1000.0, ("team", "usd"): 1.0, ("bot", "usd"): 1.5}
    families = {f.name: f for f in _SharedStateCollector(
        config, shared, lambda: "Redis did not answer in time").collect()}
    assert families["li_budget_remaining"].samples == []


def test_where_ctl_status_takes_budgets_from() -> None:
    """While Redis cannot be read, the local counters are shown only where they decide
    (budgets_on_error = "local"); under allow or deny nothing is counted."""
    from li_httpd.config.model import State
    from li_httpd.supervisor.master import budget_source

    redis = State(backend="redis", url="redis://127.0.0.1:6379")
    assert budget_source(State(), None) == "shared memory"
    assert budget_source(redis, {}) == "redis"
    assert budget_source(redis, "refused") == "shared memory (Redis unavailable: refused)"
    for policy in ("allow", "deny"):
        assert budget_source(State(backend="redis", url=redis.url, on_backend_error=policy),
                             "refused") == "unavailable: refused"
        assert budget_source(State(backend="redis", url=redis.url, budgets_on_error=policy),
                             "refused") == "unavailable: refused"
    assert budget_source(State(backend="redis", url=redis.url, on_backend_error="deny",
                               budgets_on_error="local"), "refused").startswith("shared")
