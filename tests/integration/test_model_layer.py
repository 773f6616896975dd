"""The model layer through a real gateway, with the official OpenAI and Anthropic SDKs.

Two mock upstream pools serve two catalog models; the gateway routes by the model a
request names, answers ``GET /v1/models`` itself per key, refuses unknown and disallowed
models, and records each response's token usage and cost in the audit record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import openai
import pytest

from .conftest import Gateway, MockUpstream, RecordingUpstream

KEY_ALL, KEY_A = "sk-test-all-models", "sk-test-only-a"
PRICE_A = {"input": 1.0, "output": 2.0, "cache_read": 0.5, "cache_write": 1.25}


def _sha(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def _config(pool_a: str, pool_b: str) -> str:
    price = ", ".join(f"{k} = {v}" for k, v in PRICE_A.items())
    return f'''
[server]
listen = "127.0.0.1:0"
profile = "dev"
workers = 2

[upstreams.a]
peers = ["{pool_a}"]

[upstreams.b]
peers = ["{pool_b}"]

[models."m-a"]
pool = "a"
price = {{ {price} }}

[models."m-b"]
pool = "b"
owned_by = "team-b"

[auth]
keys = [
  {{ id = "all", sha256 = "{_sha(KEY_ALL)}" }},
  {{ id = "only-a", sha256 = "{_sha(KEY_A)}", models = ["m-a"] }},
]

[[route]]
name = "models"
priority = 1
match.methods = ["GET"]
match.path = {{ type = "exact", value = "/v1/models" }}
static = "models"
auth = "api_key"

[[route]]
name = "v1"
priority = 2
match.path = {{ type = "prefix", value = "/v1/" }}
proxy = "a"
model_routing = true
auth = "api_key"
accept_x_api_key = true
'''


class _Pools:
    def __init__(self, gateway: Gateway, a: MockUpstream, b: MockUpstream) -> None:
        self.gateway, self.a, self.b = gateway, a, b

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"

    def openai(self, key: str = KEY_ALL) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base + "/v1", api_key=key, max_retries=0)

    def anthropic(self, key: str = KEY_ALL) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.base, api_key=key, max_retries=0)


@pytest.fixture
def pools(start_mock: Callable[..., MockUpstream],
          start_gateway: Callable[..., Gateway]) -> _Pools:
    a, b = start_mock(), start_mock()
    return _Pools(start_gateway(_config(a.origin, b.origin)), a, b)


def _served(mock: MockUpstream) -> int:
    return int(mock.stats()["requests"])


MESSAGES: list[Any] = [{"role": "user", "content": "hello there model"}]


def test_routes_by_the_body_model_and_by_x_model(pools: _Pools) -> None:
    client = pools.openai()
    before_a, before_b = _served(pools.a), _served(pools.b)
    reply = client.chat.completions.create(model="m-b", messages=MESSAGES)
    assert reply.choices[0].message.content
    assert (_served(pools.a) - before_a, _served(pools.b) - before_b) == (1, 2)  # +stats
    client.chat.completions.create(model="m-a", messages=MESSAGES)
    assert _served(pools.a) - before_a == 3
    # x-model routes a body that names no model; a body naming another one is refused
    # (the upstream reads the body: routing, access and price must follow it).
    with httpx.Client(base_url=pools.base) as raw:
        auth = {"authorization": f"Bearer {KEY_ALL}"}
        answer = raw.post("/v1/chat/completions", json={"messages": []},
                          headers={**auth, "x-model": "m-b"})
        assert answer.status_code == 200
        mismatch = raw.post("/v1/chat/completions", json={"model": "m-a", "messages": []},
                            headers={**auth, "x-model": "m-b"})
        assert mismatch.status_code == 400
        assert mismatch.json()["error"]["type"] == "model_mismatch"
    assert _served(pools.b) - before_b == 4  # the request and two /stats reads
    assert _served(pools.a) - before_a == 4  # only the /stats read


def test_unknown_and_disallowed_models(pools: _Pools) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        pools.openai().chat.completions.create(model="gpt-unknown", messages=MESSAGES)
    error = missing.value.body
    assert isinstance(error, dict) and error["type"] == "model_not_found"
    assert "127.0.0.1" not in str(error)  # no upstream named
    with pytest.raises(openai.PermissionDeniedError) as refused:
        pools.openai(KEY_A).chat.completions.create(model="m-b", messages=MESSAGES)
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["type"] == "model_not_allowed"
    assert pools.openai(KEY_A).chat.completions.create(model="m-a", messages=MESSAGES)


def test_models_list_per_key(pools: _Pools) -> None:
    everything = pools.openai().models.list()
    assert [(m.id, m.owned_by) for m in everything] == [("m-a", "li-httpd"),
                                                        ("m-b", "team-b")]
    assert [m.id for m in pools.openai(KEY_A).models.list()] == ["m-a"]
    with pytest.raises(openai.AuthenticationError):
        pools.openai("sk-wrong").models.list()


def _cost(input_tokens: int, output: int, cache_read: int, cache_write: int) -> float:
    return round((input_tokens * PRICE_A["input"] + output * PRICE_A["output"]
                  + cache_read * PRICE_A["cache_read"]
                  + cache_write * PRICE_A["cache_write"]) / 1e6, 8)


def _check_usage(record: dict[str, Any], *, input_tokens: int, output: int,
                 cache_read: int, cache_write: int, model: str = "m-a") -> None:
    assert record["key_id"] == "all" and record["route"] == "v1"
    assert record["model"] == model and record["status"] == 200
    assert record["outcome"] == "completed"
    assert (record["input_tokens"], record["output_tokens"], record["cache_read_tokens"],
            record["cache_write_tokens"]) == (input_tokens, output, cache_read, cache_write)
    assert record["cost_usd"] == pytest.approx(
        _cost(input_tokens, output, cache_read, cache_write) if model == "m-a" else 0.0)
    assert record["ttfb_ms"] > 0 and record["latency_ms"] >= record["ttfb_ms"]


KNOBS = {"tokens": "5", "cached_tokens": "2", "cache_write_tokens": "3"}


@pytest.mark.parametrize("stream", [False, True])
def test_openai_chat_usage(pools: _Pools, stream: bool) -> None:
    request_id = f"chat-{stream}"
    client = pools.openai()
    if stream:
        chunks = list(client.chat.completions.create(
            model="m-a", messages=MESSAGES, stream=True, extra_query=KNOBS,
            stream_options={"include_usage": True},
            extra_headers={"x-request-id": request_id}))
        assert chunks[-1].usage is not None
    else:
        client.chat.completions.create(model="m-a", messages=MESSAGES, extra_query=KNOBS,
                                       extra_headers={"x-request-id": request_id})
    # The mock counts 3 prompt words + 2 cached; the gateway splits out the cached ones.
    _check_usage(pools.gateway.audit_record(request_id), input_tokens=3, output=5, cache_read=2,
                 cache_write=0)


@pytest.mark.parametrize("stream", [False, True])
def test_openai_responses_usage(pools: _Pools, stream: bool) -> None:
    request_id = f"responses-{stream}"
    client = pools.openai()
    if stream:
        events = list(client.responses.create(model="m-a", input="hello there model",
                                              stream=True, extra_query=KNOBS,
                                              extra_headers={"x-request-id": request_id}))
        assert events[-1].type == "response.completed"
    else:
        reply = client.responses.create(model="m-a", input="hello there model",
                                        extra_query=KNOBS,
                                        extra_headers={"x-request-id": request_id})
        assert reply.output_text
    _check_usage(pools.gateway.audit_record(request_id), input_tokens=3, output=5, cache_read=2,
                 cache_write=0)


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_messages_usage(pools: _Pools, stream: bool) -> None:
    request_id = f"messages-{stream}"
    client = pools.anthropic()  # sends its key in x-api-key
    arguments: dict[str, Any] = {
        "model": "m-a", "max_tokens": 64, "messages": MESSAGES, "extra_query": KNOBS,
        "extra_headers": {"x-request-id": request_id}}
    if stream:
        with client.messages.stream(**arguments) as events:
            final = events.get_final_message()
    else:
        final = client.messages.create(**arguments)
    assert final.usage.output_tokens == 5
    _check_usage(pools.gateway.audit_record(request_id),
                 input_tokens=final.usage.input_tokens, output=5, cache_read=2, cache_write=3)


def test_embeddings_usage_and_an_unpriced_model(pools: _Pools) -> None:
    pools.openai().embeddings.create(model="m-b", input="hello there model",
                                     extra_headers={"x-request-id": "embed-1"})
    record = pools.gateway.audit_record("embed-1")
    assert record["model"] == "m-b" and record["input_tokens"] == 3
    assert record["output_tokens"] == 0 and record["cost_usd"] == 0.0


def test_the_upstream_receives_the_exact_bytes(
        recording_upstream: RecordingUpstream, start_mock: Callable[..., MockUpstream],
        start_gateway: Callable[..., Gateway]) -> None:
    gateway = start_gateway(_config(recording_upstream.origin, start_mock().origin))
    bodies = [b'{ "model" :"m-a",\n\t"messages":[{"content":"caf\\u00e9 \\ud83d\\ude00"}] }',
              b'{"z":1,"messages":[],"model":"m-a","a":{"model":"m-b"}}',
              '{"model":"m-a","input":"日本語"}'.encode()]
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}") as client:
        for body in bodies:
            recording_upstream.clear()
            reply = client.post("/v1/responses", content=body, headers={
                "authorization": f"Bearer {KEY_ALL}", "content-type": "application/json"})
            assert reply.status_code == 200
            received = recording_upstream.data()
            assert received.endswith(b"\r\n\r\n" + body), received
            assert b"authorization" not in received.lower()


def test_stream_usage_injection_changes_only_what_it_documents(
        recording_upstream: RecordingUpstream, start_mock: Callable[..., MockUpstream],
        start_gateway: Callable[..., Gateway]) -> None:
    config = _config(recording_upstream.origin, start_mock().origin).replace(
        "accept_x_api_key = true", "accept_x_api_key = true\ninject_stream_usage = true")
    gateway = start_gateway(config)
    cases = [
        ("/v1/chat/completions", b'{"model":"m-a", "stream": true,"messages":[]}\n',
         b'{"model":"m-a", "stream": true,"messages":[],'
         b'"stream_options":{"include_usage":true}}\n'),
        ("/v1/chat/completions", b'{"model":"m-a","messages":[]}',  # not a stream
         b'{"model":"m-a","messages":[]}'),
        ("/v1/chat/completions",  # the client chose
         b'{"model":"m-a","stream":true,"stream_options":{"include_usage":false}}',
         b'{"model":"m-a","stream":true,"stream_options":{"include_usage":false}}'),
        ("/v1/responses", b'{"model":"m-a","stream":true,"input":"x"}',  # not an OpenAI chat
         b'{"model":"m-a","stream":true,"input":"x"}'),
    ]
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}") as client:
        for path, body, expected in cases:
            recording_upstream.clear()
            reply = client.post(path, content=body, headers={
                "authorization": f"Bearer {KEY_ALL}", "content-type": "application/json"})
            assert reply.status_code == 200
            received = recording_upstream.data()
            assert received.endswith(b"\r\n\r\n" + expected), received
            assert b"content-length: %d\r\n" % len(expected) in received


@pytest.mark.parametrize("stream", [False, True])
def test_openai_completions_usage(pools: _Pools, stream: bool) -> None:
    request_id = f"completions-{stream}"
    client = pools.openai()
    if stream:
        chunks = list(client.completions.create(
            model="m-a", prompt="hello there model", stream=True, extra_query=KNOBS,
            stream_options={"include_usage": True},
            extra_headers={"x-request-id": request_id}))
        assert chunks
    else:
        client.completions.create(model="m-a", prompt="hello there model",
                                  extra_query=KNOBS, extra_headers={"x-request-id": request_id})
    _check_usage(pools.gateway.audit_record(request_id), input_tokens=3, output=5, cache_read=2,
                 cache_write=0)


@pytest.mark.parametrize(("body", "status", "error"), [
    # A BOM that the upstream's parser skips: the gateway reads the same model.
    (b'\xef\xbb\xbf{"model":"m-b","messages":[]}', 403, "model_not_allowed"),
    # An escaped key in a large body: parsed whole, not by raw bytes.
    (b'{"mod\\u0065l":"m-b","input":"' + b"x" * 70_000 + b'"}', 403, "model_not_allowed"),
    (b'{"model":"m-a","model":"m-b","messages":[]}', 403, "model_not_allowed"),
    # JSON the gateway cannot parse (NaN) but a lenient upstream might: refused.
    (b'{"model":"m-b","temperature":NaN,"messages":[]}', 400, "model_unreadable"),
    (b'not json at all', 400, "model_unreadable"),
])
def test_a_restricted_key_cannot_hide_its_model(pools: _Pools, body: bytes, status: int,
                                                error: str) -> None:
    before = _served(pools.b)
    with httpx.Client(base_url=pools.base) as raw:
        reply = raw.post("/v1/chat/completions", content=body, headers={
            "authorization": f"Bearer {KEY_A}", "content-type": "application/json"})
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["type"] == error
    assert _served(pools.b) - before == 1  # only the /stats read: nothing reached pool b
