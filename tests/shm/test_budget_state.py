"""Budgets in the shared segment across real processes: exact under contention, safe
when a worker is SIGKILLed at any instant, carried across a reload by key id."""

from __future__ import annotations

import os
import random
import signal
import struct
import time

import pytest
from li_httpd.config import load_text
from li_httpd.shm import BudgetDenied, BudgetGrant, BudgetLimits, budget_limits, layout_for
from li_httpd.shm.budget import MINUTE_NS, NS_PER_SECOND
from li_httpd.shm.state import Layout, SharedState, budget_id

NOW = 1_000_000 * MINUTE_NS + 7 * NS_PER_SECOND  # 7 s into a minute (and into no day end)
TOKENS = 200_000
LIMITS = BudgetLimits(TOKENS, 3 * TOKENS, 24 * 60 * MINUTE_NS)
MAX_REQUEST = TOKENS // 100
CHURN = 0.4


def _state(keys: tuple[str, ...] = ("k",)) -> SharedState:
    return SharedState.create(Layout(64, 4, 1, tuple(budget_id(k) for k in keys)))


def _worker(state: SharedState, seed: int, out: int) -> None:
    """For CHURN seconds: reserve random worst cases and settle earlier grants in
    random order (like responses arriving) with a random actual amount ≤ the
    reservation, some never (like cut streams). Then reserve, settling nothing, until
    20 denials in a row. Reports its net charge (tokens, micro-USD)."""
    rng = random.Random(seed)
    charged_tokens = charged_usd = 0
    pending: list[BudgetGrant] = []
    until = time.monotonic() + CHURN
    denials = 0
    while denials < 20:
        churning = time.monotonic() < until
        if churning and pending and rng.random() < 0.5:
            grant = pending.pop(rng.randrange(len(pending)))
            actual = grant.tokens if rng.random() < 0.2 else rng.randint(0, grant.tokens)
            state.budget_settle(grant, actual, 3 * actual)
            charged_tokens += actual - grant.tokens
            charged_usd += 3 * (actual - grant.tokens)
            continue
        tokens = rng.randint(1, MAX_REQUEST)
        decision = state.budget_reserve(0, LIMITS, tokens, 3 * tokens, NOW)
        if isinstance(decision, BudgetDenied):
            denials += 0 if churning else 1
            continue
        denials = 0
        pending.append(decision)
        charged_tokens += tokens
        charged_usd += 3 * tokens
    os.write(out, struct.pack("<qq", charged_tokens, charged_usd))


@pytest.mark.parametrize(("seed", "kills"), [(1, 0), (2, 2), (3, 3)])
def test_concurrent_reservations_stay_exact_and_survive_kills(seed: int, kills: int) -> None:
    state = _state()
    rng = random.Random(seed)
    children: dict[int, int] = {}
    for slot in range(4):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read)
            state.slot = slot
            try:
                _worker(state, seed * 10 + slot, write)
            finally:
                os._exit(0)
        os.close(write)
        children[pid] = read
    victims = rng.sample(sorted(children), kills)
    deadline = time.monotonic() + 30
    for victim in victims:
        time.sleep(rng.uniform(0, CHURN / kills))  # each lands while they all churn
        os.kill(victim, signal.SIGKILL)
    survivors_tokens = survivors_usd = 0
    killed = 0
    for pid, read in children.items():
        while True:  # meanwhile the counters never exceed the limits
            usage = state.budget_usage(0, LIMITS, NOW)
            assert usage.tokens <= TOKENS and usage.micro_usd <= 3 * TOKENS
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            assert time.monotonic() < deadline
            time.sleep(0.005)
        report = os.read(read, 16)
        os.close(read)
        if os.WIFSIGNALED(status):
            killed += 1
            continue
        assert pid not in victims or len(report) == 16
        tokens, usd = struct.unpack("<qq", report)
        survivors_tokens += tokens
        survivors_usd += usd
    started = time.monotonic()
    usage = state.budget_usage(0, LIMITS, NOW)  # takes the lock: no dead holder kept it
    assert time.monotonic() - started < 1
    assert usage.tokens <= TOKENS and usage.micro_usd <= 3 * TOKENS
    # what the survivors know they charged is in the counter; the dead ones' charges
    # (reservations never settled, settles done) are too, never less than 0 each
    assert survivors_tokens <= usage.tokens and survivors_usd <= usage.micro_usd
    if killed == 0:
        assert (survivors_tokens, survivors_usd) == (usage.tokens, usage.micro_usd)
    # demand exceeded the budget: the last operation anywhere was a denial, so what is
    # left is less than one request (1 %)
    assert usage.tokens >= 0.95 * TOKENS
    assert usage.tokens_window_end_ns == (NOW // MINUTE_NS + 1) * MINUTE_NS
    state.close()


def test_reserve_settle_usage_and_wall_clock() -> None:
    state = _state(("a", "b"))
    state.wall_clock = lambda: NOW
    limits = BudgetLimits(100, 1_000, MINUTE_NS * 60)
    grant = state.budget_reserve(1, limits, 60, 500)
    assert not isinstance(grant, BudgetDenied) and grant.key_index == 1
    denied = state.budget_reserve(1, limits, 50, 0)
    assert isinstance(denied, BudgetDenied) and denied.limit == "tokens"
    assert denied.retry_after_s == 53 and denied.reason == "over the budget"
    assert state.budget_usage(0, limits).tokens == 0  # the other key is untouched
    state.budget_settle(grant, 10, 100)
    usage = state.budget_usage(1, limits)
    assert (usage.tokens, usage.micro_usd) == (10, 100)
    assert usage.usd_window_end_ns == (NOW // (60 * MINUTE_NS) + 1) * 60 * MINUTE_NS
    state.wall_clock = lambda: NOW + MINUTE_NS  # the next minute: a late settle of a
    late = state.budget_reserve(1, limits, 90, 0)  # grant from the previous one
    assert not isinstance(late, BudgetDenied)
    state.budget_settle(grant, 0, 0)
    assert state.budget_usage(1, limits).tokens == 90
    state.close()


def test_a_killed_lock_holder_does_not_block_budgets() -> None:
    state = _state()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        state._lock((4 << 40) + 0)
        time.sleep(60)
        os._exit(0)
    time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    started = time.monotonic()
    assert not isinstance(state.budget_reserve(0, LIMITS, 1, 1, NOW), BudgetDenied)
    assert time.monotonic() - started < 1
    state.close()


def _config(keys: list[tuple[str, int]]) -> str:
    entries = ", ".join(
        f'{{ id = "{key}", sha256 = "{str(n) * 64}", tokens_per_minute = 1000, '
        f'usd_budget = 2.5, budget_window = "1h" }}' for key, n in keys)
    return ('[server]\nlisten = "127.0.0.1:0"\nprofile = "dev"\nworkers = 1\n'
            '[routes]\n"GET /health" = "static:healthcheck"\n'
            f'[auth]\nkeys = [{entries}]\n')


def test_budget_usage_survives_a_reload_that_reorders_and_adds_keys() -> None:
    """The reload path (supervisor/generations.py next_generation): a changed key list
    changes the layout, so the new generation gets a new segment that inherits the
    counters of every key whose id it still has, wherever that key now is."""
    from li_httpd.supervisor.generations import Generation, WorkerSlot, next_generation
    from li_httpd.supervisor.listeners import Listeners

    old_loaded = load_text(_config([("alice", 1), ("bob", 2), ("carol", 3)]), "gw.toml")
    keys = old_loaded.config.auth.keys
    shared = SharedState.create(layout_for(old_loaded.config, 1))
    shared.wall_clock = lambda: NOW
    for index, spent in enumerate((100, 200, 300)):
        grant = shared.budget_reserve(index, budget_limits(keys[index]), spent, spent * 10)
        assert not isinstance(grant, BudgetDenied)
    listeners = Listeners()
    listeners.bind("127.0.0.1:0")
    try:
        current = Generation(0, old_loaded, shared, None, [], [WorkerSlot(0)])
        new_loaded = load_text(_config([("dave", 4), ("carol", 3), ("alice", 1)]),
                               "gw.toml")
        following = next_generation(current, [], new_loaded, None, listeners)
        # an unchanged key list keeps the very same segment (and so its counters)
        again = next_generation(following, [current], new_loaded, None, listeners)
    finally:
        listeners.close_all()
    assert following.shared is not shared and again.shared is following.shared
    new_keys = new_loaded.config.auth.keys

    def seen() -> list[tuple[int, int]]:
        usage = [following.shared.budget_usage(i, budget_limits(new_keys[i]), NOW)
                 for i in range(3)]
        return [(u.tokens, u.micro_usd) for u in usage]

    assert seen() == [(0, 0), (300, 3000), (100, 1000)]
    # the old generation drains: it still reserves and settles in the old segment; the
    # master folds that into the new one on every tick and a last time before closing
    late = shared.budget_reserve(0, budget_limits(keys[0]), 50, 500)  # alice
    assert not isinstance(late, BudgetDenied)
    following.shared.fold_budgets()
    assert seen() == [(0, 0), (300, 3000), (150, 1500)]
    shared.budget_settle(late, 20, 200)  # alice used less than reserved
    carol = following.shared.budget_reserve(1, budget_limits(new_keys[1]), 5, 50, NOW)
    assert not isinstance(carol, BudgetDenied)
    following.shared.forget_origin(shared)
    assert seen() == [(0, 0), (305, 3050), (120, 1200)]
    assert following.shared.budget_origin is None
    following.shared.fold_budgets()  # nothing left to fold
    following.shared.close()
    shared.close()


def test_a_closed_origin_is_dropped_not_read() -> None:
    old = _state(("a",))
    new = _state(("b", "a"))
    new.inherit(old, {})
    assert new.budget_origin is old and list(new.budget_carried) == [1]
    old.close()
    new.fold_budgets()  # no read of the unmapped segment
    assert new.budget_origin is None
    new.close()


def test_a_store_torn_by_a_kill_only_drops_the_dead_reservation() -> None:
    """A worker killed inside budget_reserve between storing a new minute's total and
    its window index leaves that total under the previous minute's index: everyone
    then reads the new minute as empty (the dead worker never called upstream)."""
    state = _state()
    minute = NOW // MINUTE_NS
    state.budgets[1], state.budgets[2] = minute - 1, 150_000  # a full previous minute
    state.budgets[2] = 1_234  # the killed worker stored its total, not yet the index
    assert state.budget_usage(0, LIMITS, NOW).tokens == 0
    assert not isinstance(state.budget_reserve(0, LIMITS, TOKENS, 0, NOW), BudgetDenied)
    assert state.budget_usage(0, LIMITS, NOW).tokens == TOKENS
    state.close()
