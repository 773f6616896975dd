"""Per-key token and dollar budgets through a real gateway: exact across workers,
refused with 429 before any upstream call, settled on the usage each response reports,
and nothing lost or leaked when a worker is SIGKILLed mid-load."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from .conftest import Gateway, MockUpstream

KEY = "sk-budget-test"
TOKENS_PER_MINUTE = 6000


def _config(upstream: str, key_fields: str) -> str:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    return f'''
[server]
listen = "127.0.0.1:0"
profile = "dev"
workers = 2
shutdown_timeout = "5s"

[upstreams.main]
peers = ["{upstream}"]

[models."mock-chat"]
pool = "main"
price = {{ input = 100.0, output = 200.0 }}
default_max_tokens = 300

[auth]
keys = [{{ id = "team", sha256 = "{digest}", {key_fields} }}]

[routes]
"/v1/*" = "proxy:main"
'''


def _fresh_minute(need: float) -> None:
    """Wait, if needed, so that the next ``need`` seconds stay in one minute window."""
    left = 60 - time.time() % 60
    if left < need:
        time.sleep(left + 0.05)


def _audit(gateway: Gateway) -> list[dict[str, Any]]:
    path = gateway.log_dir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() \
        else []


def test_token_budget_is_exact_across_workers_and_killed_workers(
        mock: MockUpstream, start_gateway: Callable[..., Gateway]) -> None:
    gateway = start_gateway(_config(mock.origin, f"tokens_per_minute = {TOKENS_PER_MINUTE}"))
    _fresh_minute(25)
    statuses: list[int] = []
    lock = threading.Lock()
    stop = time.monotonic() + 8

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as http:
            while time.monotonic() < stop:
                cap = rng.randint(20, 300)
                body = {"model": "mock-chat", "max_tokens": cap,
                        "messages": [{"role": "user", "content": "count to ten"}]}
                try:
                    reply = http.post("/v1/chat/completions", json=body,
                                      params={"tokens": str(rng.randint(1, cap)),
                                              "delay_ms": "2"},
                                      headers={"authorization": f"Bearer {KEY}"})
                except httpx.HTTPError:
                    continue  # a connection on the worker killed below
                with lock:
                    statuses.append(reply.status_code)
                if reply.status_code == 429:
                    assert int(reply.headers["retry-after"]) >= 1
                    assert reply.json()["error"]["type"] == "budget_exceeded"
                    time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    os.kill(gateway.workers()[0], signal.SIGKILL)  # mid-load, reservations in flight
    for thread in threads:
        thread.join()
    assert statuses.count(200) > 20 and statuses.count(429) > 0, statuses
    budgets = gateway.status()["budgets"]
    charged = budgets[0]["tokens"]
    assert charged <= TOKENS_PER_MINUTE
    assert charged >= 0.95 * TOKENS_PER_MINUTE  # demand exceeded it: the budget was used
    # What the upstream reported for the answered requests is within what was charged
    # (the killed worker's reservations stay charged: their tokens may have been spent).
    time.sleep(0.5)
    used = sum(r["input_tokens"] + r["output_tokens"] for r in _audit(gateway)
               if r["status"] == 200 and r["input_tokens"] is not None)
    assert used <= charged


def test_dollar_budget_refuses_before_the_upstream_and_sdk_sees_429(
        mock: MockUpstream, start_gateway: Callable[..., Gateway]) -> None:
    # input 100 $/M, output 200 $/M: a request capped at 100 output tokens reserves
    # about 2 cents; a 5-cent budget admits two such requests at once, not three.
    gateway = start_gateway(_config(mock.origin, "usd_budget = 0.05"))
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{gateway.port}/v1", api_key=KEY,
                           max_retries=0)
    before = int(mock.stats()["requests"])
    answered = refused = 0
    for _ in range(10):
        try:
            client.chat.completions.create(model="mock-chat", max_tokens=100,
                                           messages=[{"role": "user", "content": "hi"}],
                                           extra_query={"tokens": "100"})
            answered += 1
        except openai.RateLimitError as error:
            refused += 1
            assert error.response.headers["retry-after"]
    # Each answer settles at its real cost (~2 cents): two fit, the rest are refused.
    assert (answered, refused) == (2, 8)
    assert int(mock.stats()["requests"]) - before == 2 + 1  # refusals never reached it
    dollars = gateway.status()["budgets"][0]["usd"]
    assert 0.04 <= dollars <= 0.05


@pytest.mark.parametrize("cut", ["close_after", "stall_after"])
def test_a_stream_cut_before_its_usage_keeps_the_reservation(
        cut: str, mock: MockUpstream, start_gateway: Callable[..., Gateway]) -> None:
    gateway = start_gateway(_config(mock.origin, f"tokens_per_minute = {TOKENS_PER_MINUTE}")
                            + '\n[defaults.timeouts]\nstream_idle_timeout = "2s"\n'
                              'heartbeat_interval = "1s"\n')
    _fresh_minute(15)
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as http:
        reply = http.post("/v1/chat/completions", params={"tokens": "50", cut: "3"},
                          json={"model": "mock-chat", "max_tokens": 200, "stream": True,
                                "messages": []},
                          headers={"authorization": f"Bearer {KEY}"})
    assert b"event: error" in reply.content
    time.sleep(0.3)
    charged = gateway.status()["budgets"][0]["tokens"]
    assert charged >= 200  # the whole reservation: output cap and input estimate


@pytest.mark.parametrize("cap", ['"5000"', "5000.0", "5000"])
def test_a_cap_in_any_form_the_upstream_accepts_is_reserved(
        cap: str, mock: MockUpstream, start_gateway: Callable[..., Gateway]) -> None:
    gateway = start_gateway(_config(mock.origin, "tokens_per_minute = 1000"))
    before = int(mock.stats()["requests"])
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as http:
        reply = http.post("/v1/chat/completions",
                          content='{"model":"mock-chat","messages":[],"max_tokens":' + cap + "}",
                          headers={"authorization": f"Bearer {KEY}",
                                   "content-type": "application/json"})
    assert reply.status_code == 429 and "larger than the budget" in reply.text
    assert int(mock.stats()["requests"]) - before == 1  # the /stats read only


def test_the_input_reservation_bounds_any_text(
        mock: MockUpstream, start_gateway: Callable[..., Gateway]) -> None:
    # 7,000 bytes of one-letter words can be 3,500 tokens or more: reserved as 7,000.
    gateway = start_gateway(_config(mock.origin, "tokens_per_minute = 6000"))
    text = "a " * 3500
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as http:
        reply = http.post("/v1/chat/completions", json={
            "model": "mock-chat", "max_tokens": 1,
            "messages": [{"role": "user", "content": text}]},
            headers={"authorization": f"Bearer {KEY}"})
    assert reply.status_code == 429


def test_an_anthropic_stream_cut_after_message_start_keeps_the_reservation(
        mock: MockUpstream, start_gateway: Callable[..., Gateway]) -> None:
    gateway = start_gateway(_config(mock.origin, f"tokens_per_minute = {TOKENS_PER_MINUTE}")
                            .replace('"/v1/*" = "proxy:main"',
                                     '"/v1/*" = "proxy:main"\n\n[defaults]\n'
                                     'accept_x_api_key = true'))
    _fresh_minute(15)
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as http, \
            http.stream("POST", "/v1/messages", params={"tokens": "400", "delay_ms": "5"},
                        json={"model": "mock-chat", "max_tokens": 1000, "stream": True,
                              "messages": [{"role": "user", "content": "hi"}]},
                        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"}
                        ) as reply:
        seen = b""
        for piece in reply.iter_bytes():
            seen += piece
            if seen.count(b"content_block_delta") >= 5:
                break  # the client goes away mid-stream, after message_start's usage
    time.sleep(0.5)
    charged = gateway.status()["budgets"][0]["tokens"]
    assert charged >= 1000  # the reservation (cap 1000 + the input bound), not ~2 tokens
