"""The mock upstream (``li-httpd mock-upstream``): endpoints, knobs, framing, disconnects.

Servers run in-process on an ephemeral loopback port (fixture ``upstream``) and are
driven with httpx and with raw sockets whose responses h11 parses strictly (including
chunk boundaries, so "one SSE event per chunk" is checked, not assumed). Tests about
delays run on trio's virtual clock over a ``socket.socketpair()`` connection handed to
``MockUpstream.serve_connection``; tests with real TCP keep delays in the tens of
milliseconds and bounds generous. One test runs the module as a subprocess.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import select
import signal
import socket
import subprocess
import sys
import time
from array import array
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import h11
import httpx
import orjson
import pytest
import trio
import trio.testing
from li_httpd.ops import mock_upstream
from li_httpd.ops.mock_upstream import (
    BYTES_PATTERN,
    KnobError,
    Knobs,
    MockUpstream,
    bytes_content,
    parse_knobs,
)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


# ------------------------------------------------------------------------------ helpers


@pytest.fixture
async def upstream() -> AsyncIterator[MockUpstream]:
    """A MockUpstream serving on 127.0.0.1:<free port> for the duration of the test."""
    with mock_upstream.bind("127.0.0.1", 0) as sock:
        async with trio.open_nursery() as nursery:
            server = MockUpstream()
            await nursery.start(server.serve, sock)
            yield server
            nursery.cancel_scope.cancel()


def port_of(server: MockUpstream) -> int:
    assert server.address is not None
    return server.address[1]


@pytest.fixture
async def client(upstream: MockUpstream) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=upstream.url, timeout=10) as http:
        yield http


def chat_body(*, stream: bool = False, model: str = "m-test", **extra: Any) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "say hello world"}],
            "stream": stream, **extra}
    return orjson.dumps(body)


def request_bytes(method: str, target: str, body: bytes = b"", *, version: str = "1.1",
                  headers: list[tuple[str, str]] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: mock"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    chunks: list[bytes] = field(default_factory=list)  # one entry per chunk (or Data run)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def json(self) -> Any:
        return orjson.loads(self.body)


class Raw:
    """A raw client connection whose responses h11 parses (strictly).

    ``head(method, target)`` tells h11 which request the next response answers (the
    bytes themselves are sent with ``send``, so tests can pipeline or malform them).
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        self.expected = 0

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.h11.receive_data(await self.stream.receive_some(65536))

    async def head(self, method: str, target: str) -> Reply:
        """Read the head of the response to ``method target`` (sent already, raw)."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        # h11 only needs the method (HEAD has no body) for its bookkeeping; it always
        # records HTTP/1.1, and the response's own headers decide the framing.
        self.h11.send(h11.Request(method=method, target=target, headers=[("Host", "mock")]))
        self.h11.send(h11.EndOfMessage())
        event = await self._event()
        while isinstance(event, h11.InformationalResponse):
            event = await self._event()
        assert isinstance(event, h11.Response), event
        names = {name.decode(): value.decode() for name, value in event.headers}
        return Reply(event.status_code, names)

    async def next_chunk(self) -> bytes | None:
        """The next whole chunk of the body (h11 chunk boundaries); None at the end."""
        parts: list[bytes] = []
        in_chunk = False
        while True:
            event = await self._event()
            if isinstance(event, h11.EndOfMessage):
                assert not parts
                return None
            assert isinstance(event, h11.Data), event
            parts.append(bytes(event.data))
            in_chunk = in_chunk or event.chunk_start
            if event.chunk_end or not in_chunk:  # not chunked: Data runs as they come
                return b"".join(parts)

    async def reply(self, method: str, target: str) -> Reply:
        reply = await self.head(method, target)
        while (chunk := await self.next_chunk()) is not None:
            reply.chunks.append(chunk)
        return reply

    async def request(self, method: str, target: str, body: bytes = b"",
                      headers: list[tuple[str, str]] | None = None) -> Reply:
        await self.send(request_bytes(method, target, body, headers=headers))
        return await self.reply(method, target)

    async def at_eof(self) -> bool:
        return await self.stream.receive_some(65536) == b""

    async def aclose(self) -> None:
        await self.stream.aclose()


async def connect(server: MockUpstream) -> Raw:
    return Raw(await trio.open_tcp_stream("127.0.0.1", port_of(server)))


def socketpair_client(server: MockUpstream, nursery: trio.Nursery) -> Raw:
    """A connection to ``server`` over a socketpair (no TCP; fine with a virtual clock)."""
    ours, theirs = socket.socketpair()
    nursery.start_soon(server.serve_connection, theirs)
    return Raw(trio.SocketStream(trio.socket.from_stdlib_socket(ours)))


def sse_payload(chunk: bytes) -> Any:
    """The JSON of one SSE event that must fill exactly one chunk."""
    assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n"), chunk
    assert chunk.count(b"\n\n") == 1, chunk
    data = chunk[len(b"data: "):-2]
    return "[DONE]" if data == b"[DONE]" else orjson.loads(data)


async def wait_for_stats(server: MockUpstream, seconds: float = 2.0, **expected: int) -> None:
    with trio.fail_after(seconds):
        while any(getattr(server.stats, name) != value for name, value in expected.items()):
            await trio.sleep(0.01)


# ------------------------------------------------------------------------- pure parts


def test_parse_knobs_defaults_and_ranges() -> None:
    assert parse_knobs({}) == Knobs()
    knobs = parse_knobs({"tokens": "3", "delay_ms": "2.5", "fail": "503", "secret_split": "1",
                         "body_secret": "s3cr3t", "unknown": "x"})
    assert (knobs.tokens, knobs.delay_ms, knobs.fail, knobs.secret_split, knobs.body_secret) == (
        3, 2.5, 503, True, "s3cr3t")
    for name, value in [("tokens", "100001"), ("tokens", "-1"), ("tokens", "many"),
                        ("fail", "99"), ("fail", "600"), ("delay_ms", "nan"),
                        ("ttfb_ms", "-1"), ("n", str(64 * 1024 * 1024 + 1)),
                        ("dimensions", "0")]:
        with pytest.raises(KnobError, match=name):
            parse_knobs({name: value})
    assert Knobs(close_after=3, stall_after=5).cut() == (3, True)
    assert Knobs(close_after=5, stall_after=3).cut() == (3, False)
    assert Knobs().cut() == (None, False)


def test_bytes_content_is_position_dependent() -> None:
    body = bytes_content(300_000)
    assert len(body) == 300_000
    assert all(body[i] == BYTES_PATTERN[i % 64] for i in range(0, 300_000, 997))
    with_secret = bytes_content(1000, "SECRET")
    assert with_secret[497:503] == b"SECRET" and len(with_secret) == 1000


# ------------------------------------------------------------------- simple endpoints


async def test_models_health_small_and_common_headers(upstream: MockUpstream,
                                                      client: httpx.AsyncClient) -> None:
    models = await client.get("/v1/models")
    assert models.status_code == 200
    assert models.headers["content-type"] == "application/json"
    listing = models.json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == list(mock_upstream.DEFAULT_MODELS)
    assert all(m["object"] == "model" for m in listing["data"])
    assert models.headers["x-mock-peer"] == f"127.0.0.1:{port_of(upstream)}"
    assert upstream.url == f"http://127.0.0.1:{port_of(upstream)}"

    health = await client.get("/health")
    assert health.status_code == 200
    small = await client.get("/small")
    assert small.status_code == 200 and small.content == b"Hello, world!\n"
    assert small.headers["content-length"] == "14"
    counts = [int(r.headers["x-mock-request-count"]) for r in (models, health, small)]
    assert counts == [1, 2, 3]
    assert "date" in small.headers


async def test_unknown_path_and_wrong_method(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    wrong = await client.get(CHAT)
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert (await client.post("/small")).status_code == 405


async def test_stats_endpoint(upstream: MockUpstream, client: httpx.AsyncClient) -> None:
    stats = (await client.get("/stats")).json()
    assert stats["requests"] == 1
    assert stats["open_connections"] == 1  # the asking connection itself
    for name in ("streams_started", "streams_completed", "streams_aborted_by_client",
                 "connections_closed_by_peer"):
        assert stats[name] == 0
    # Knobs never apply to /stats.
    assert (await client.get("/stats?fail=500&ttfb_ms=100000")).status_code == 200


# --------------------------------------------------------------------- JSON completions


async def test_chat_completion_json(client: httpx.AsyncClient) -> None:
    reply = await client.post(CHAT, content=chat_body(), headers={"x-mock-tokens": "5"})
    assert reply.status_code == 200
    body = reply.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "m-test"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "Hello from the li-httpd mock"
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}

    default = (await client.post(CHAT, content=chat_body())).json()
    assert default["usage"]["completion_tokens"] == 8

    limited = (await client.post(CHAT, content=chat_body(max_tokens=2))).json()
    assert limited["choices"][0]["finish_reason"] == "length"
    assert limited["usage"]["completion_tokens"] == 2

    bad = await client.post(CHAT, content=b"{not json")
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"


async def test_legacy_completion_json(client: httpx.AsyncClient) -> None:
    body = orjson.dumps({"model": "m-legacy", "prompt": "one two three four"})
    reply = (await client.post(COMPLETIONS + "?tokens=3", content=body)).json()
    assert reply["object"] == "text_completion"
    assert reply["model"] == "m-legacy"
    assert reply["choices"][0]["text"] == "Hello from the"
    assert reply["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


async def test_query_knob_beats_header_and_dashed_header_names(
        client: httpx.AsyncClient) -> None:
    reply = await client.post(CHAT + "?tokens=3", content=chat_body(),
                              headers={"X-Mock-Tokens": "6"})
    assert reply.json()["usage"]["completion_tokens"] == 3
    dashed = await client.post(CHAT, content=chat_body(), headers={"x-mock-secret-split": "x"})
    assert dashed.status_code == 400
    assert "secret_split" in dashed.json()["error"]["message"]
    bad = await client.post(CHAT + "?tokens=lots", content=chat_body())
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_mock_knob"


async def test_fail_knob(client: httpx.AsyncClient) -> None:
    reply = await client.post(CHAT + "?fail=503&body_secret=sk-leak123",
                              content=chat_body(stream=True))
    assert reply.status_code == 503
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["retry-after"] == "1"
    error = reply.json()["error"]
    assert error["type"] == "server_error"
    assert "sk-leak123" in error["message"]
    assert set(error) >= {"message", "type", "code"}
    limited = await client.get("/health", headers={"x-mock-fail": "429"})
    assert limited.status_code == 429
    assert limited.json()["error"]["type"] == "rate_limit_error"
    empty = await client.get("/small?fail=204")
    assert empty.status_code == 204 and empty.content == b""
    assert (await client.get("/small")).status_code == 200  # the connection still works


async def test_body_secret_in_json_completion(client: httpx.AsyncClient) -> None:
    reply = await client.post(CHAT + "?tokens=4&body_secret=sk-abc123", content=chat_body())
    assert reply.json()["choices"][0]["message"]["content"] == "Hello from sk-abc123 the li-httpd"
    assert reply.json()["usage"]["completion_tokens"] == 5


# ------------------------------------------------------------------------- embeddings


async def test_embeddings(client: httpx.AsyncClient) -> None:
    request = {"model": "m-embed", "input": ["alpha beta", "gamma"]}
    first = (await client.post("/v1/embeddings", content=orjson.dumps(request))).json()
    assert first["object"] == "list" and first["model"] == "m-embed"
    assert first["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert [item["index"] for item in first["data"]] == [0, 1]
    vector = first["data"][0]["embedding"]
    assert len(vector) == mock_upstream.DEFAULT_DIMENSIONS
    assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-5)
    assert first["data"][0]["embedding"] != first["data"][1]["embedding"]
    again = (await client.post("/v1/embeddings", content=orjson.dumps(request))).json()
    assert again["data"] == first["data"]  # deterministic

    small = orjson.dumps({"input": "alpha beta", "dimensions": 8})
    sized = (await client.post("/v1/embeddings", content=small)).json()
    assert len(sized["data"][0]["embedding"]) == 8
    knob = (await client.post("/v1/embeddings?dimensions=4&body_secret=pw", content=small)).json()
    assert len(knob["data"][0]["embedding"]) == 4
    assert knob["x_mock_secret"] == "pw"

    encoded = orjson.dumps({"input": "alpha beta", "dimensions": 8, "encoding_format": "base64"})
    as_b64 = (await client.post("/v1/embeddings", content=encoded)).json()
    floats = array("f", base64.b64decode(as_b64["data"][0]["embedding"]))
    if sys.byteorder == "big":
        floats.byteswap()
    assert floats.tolist() == sized["data"][0]["embedding"]

    tokens = orjson.dumps({"input": [1, 2, 3], "dimensions": 2})
    assert (await client.post("/v1/embeddings", content=tokens)).json()["usage"][
        "prompt_tokens"] == 3
    missing = await client.post("/v1/embeddings", content=b"{}")
    assert missing.status_code == 400


# ------------------------------------------------------------------------- streaming


async def test_chat_stream_one_event_per_chunk(upstream: MockUpstream) -> None:
    raw = await connect(upstream)
    await raw.send(request_bytes("POST", CHAT + "?tokens=3", chat_body(stream=True)))
    reply = await raw.reply("POST", CHAT)
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert reply.headers["transfer-encoding"] == "chunked"
    events = [sse_payload(chunk) for chunk in reply.chunks]
    assert events[-1] == "[DONE]"
    role, *tokens, finish, usage = events[:-1]
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [t["choices"][0]["delta"]["content"] for t in tokens] == ["Hello", " from", " the"]
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    for event in events[:-1]:
        assert event["object"] == "chat.completion.chunk"
        assert event["model"] == "m-test"
        assert event["id"] == role["id"]
        assert isinstance(event["x_mock_sent_at"], float)
    stamps = [event["x_mock_sent_at"] for event in events[:-1]]
    assert stamps == sorted(stamps)
    # Keep-alive after a complete stream: the same connection answers again.
    again = await raw.request("GET", "/small")
    assert again.body == b"Hello, world!\n"
    assert upstream.stats.streams_started == upstream.stats.streams_completed == 1
    await raw.aclose()


async def test_legacy_stream_with_split_secret(upstream: MockUpstream) -> None:
    raw = await connect(upstream)
    body = orjson.dumps({"model": "m-legacy", "prompt": "hi", "stream": True})
    target = COMPLETIONS + "?tokens=2&body_secret=sk-SPLITME&secret_split=1"
    await raw.send(request_bytes("POST", target, body))
    reply = await raw.reply("POST", target)
    events = [sse_payload(chunk) for chunk in reply.chunks]
    texts = [e["choices"][0]["text"] for e in events[:-3]]
    assert texts == ["Hello", " sk-SP", "LITME", " from"]
    assert not any("sk-SPLITME" in chunk.decode() for chunk in reply.chunks)
    assert "sk-SPLITME" in "".join(texts)
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert events[-2]["usage"]["completion_tokens"] == 4
    assert events[-1] == "[DONE]"
    assert all(e["object"] == "text_completion" for e in events[:-1])
    await raw.aclose()


async def test_stream_with_httpx_and_secret(client: httpx.AsyncClient) -> None:
    lines: list[str] = []
    async with client.stream("POST", CHAT, content=chat_body(stream=True),
                             headers={"x-mock-tokens": "2",
                                      "x-mock-body-secret": "ghp_secret"}) as reply:
        assert reply.status_code == 200
        lines = [line async for line in reply.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    contents = [orjson.loads(line[6:])["choices"][0]["delta"].get("content", "")
                for line in lines[:-2]]
    assert "".join(contents) == "Hello ghp_secret from"


async def test_stream_really_streams(upstream: MockUpstream) -> None:
    """The first event reaches the client before the last one is even produced."""
    raw = await connect(upstream)
    target = CHAT + "?tokens=4&delay_ms=30"
    await raw.send(request_bytes("POST", target, chat_body(stream=True)))
    await raw.head("POST", target)
    first = await raw.next_chunk()
    assert first is not None
    first_seen = time.time()
    rest: list[bytes] = []
    while (chunk := await raw.next_chunk()) is not None:
        rest.append(chunk)
    last = sse_payload(rest[-2])  # the usage event; rest[-1] is [DONE]
    assert last["x_mock_sent_at"] > first_seen
    await raw.aclose()


async def test_stream_delays_on_virtual_clock(autojump_clock: trio.testing.MockClock) -> None:
    server = MockUpstream()
    async with trio.open_nursery() as nursery:
        raw = socketpair_client(server, nursery)
        start = trio.current_time()
        target = CHAT + "?tokens=3&delay_ms=1000&ttfb_ms=5000"
        await raw.send(request_bytes("POST", target, chat_body(stream=True)))
        await raw.head("POST", target)
        assert trio.current_time() - start == pytest.approx(5.0)
        arrivals = []
        while await raw.next_chunk() is not None:
            arrivals.append(trio.current_time() - start)
        # role, 3 tokens, finish, usage, [DONE]: 7 events, one second apart.
        assert arrivals == pytest.approx([5.0 + i for i in range(7)])
        assert server.stats.streams_completed == 1
        nursery.cancel_scope.cancel()


async def test_json_delay_is_tokens_times_delay(autojump_clock: trio.testing.MockClock) -> None:
    server = MockUpstream()
    async with trio.open_nursery() as nursery:
        raw = socketpair_client(server, nursery)
        start = trio.current_time()
        reply = await raw.request("POST", CHAT, chat_body(),
                                  headers=[("x-mock-tokens", "4"), ("x-mock-delay-ms", "500"),
                                           ("x-mock-ttfb-ms", "250")])
        assert trio.current_time() - start == pytest.approx(2.25)
        assert reply.json()["usage"]["completion_tokens"] == 4
        nursery.cancel_scope.cancel()


async def test_stall_after_keeps_connection_until_client_leaves(
        autojump_clock: trio.testing.MockClock) -> None:
    server = MockUpstream()
    async with trio.open_nursery() as nursery:
        raw = socketpair_client(server, nursery)
        target = CHAT + "?stall_after=2&tokens=5"
        await raw.send(request_bytes("POST", target, chat_body(stream=True)))
        await raw.head("POST", target)
        assert await raw.next_chunk() is not None
        assert await raw.next_chunk() is not None
        with trio.move_on_after(3600) as waited:
            await raw.next_chunk()
        assert waited.cancelled_caught  # an hour (virtual) without a byte
        assert server.stats.open_connections == 1
        assert server.stats.responses_stalled == 1
        before = trio.current_time()
        await raw.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == before  # noticed at once, not after a timeout
        assert server.stats.streams_aborted_by_client == 1
        assert server.stats.connections_closed_by_peer == 1
        assert server.stats.open_connections == 0
        assert server.stats.streams_completed == 0
        assert server.stats.requests_aborted_by_client == 0  # counted as a stream abort


async def test_disconnect_during_delay_is_noticed_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    server = MockUpstream()
    async with trio.open_nursery() as nursery:
        raw = socketpair_client(server, nursery)
        target = CHAT + "?delay_ms=10000&tokens=50"
        await raw.send(request_bytes("POST", target, chat_body(stream=True)))
        await raw.head("POST", target)
        await raw.next_chunk()
        before = trio.current_time()
        await raw.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == before
        assert server.stats.streams_aborted_by_client == 1
        assert server.stats.open_connections == 0


async def test_ttfb_disconnect_counts_request_abort(
        autojump_clock: trio.testing.MockClock) -> None:
    server = MockUpstream()
    async with trio.open_nursery() as nursery:
        raw = socketpair_client(server, nursery)
        await raw.send(request_bytes("GET", "/small?ttfb_ms=60000"))
        await trio.sleep(1)
        await raw.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert server.stats.requests_aborted_by_client == 1
        assert server.stats.connections_closed_by_peer == 1


async def test_close_after_cuts_stream_without_last_chunk(upstream: MockUpstream) -> None:
    raw = await connect(upstream)
    target = CHAT + "?close_after=3&tokens=5"
    await raw.send(request_bytes("POST", target, chat_body(stream=True)))
    reply = await raw.head("POST", target)
    assert reply.headers.get("connection") == "close"
    chunks = [await raw.next_chunk() for _ in range(3)]
    assert all(chunk is not None for chunk in chunks)
    with pytest.raises(h11.RemoteProtocolError):  # EOF inside the chunked body
        await raw.next_chunk()
    assert upstream.stats.responses_cut == 1
    assert upstream.stats.streams_completed == 0
    await raw.aclose()

    # close_after beyond the last event: all events, still no terminating chunk.
    raw = await connect(upstream)
    target = CHAT + "?close_after=1000&tokens=1"
    await raw.send(request_bytes("POST", target, chat_body(stream=True)))
    await raw.head("POST", target)
    events = []
    with pytest.raises(h11.RemoteProtocolError):
        while (chunk := await raw.next_chunk()) is not None:
            events.append(sse_payload(chunk))
    assert events[-1] == "[DONE]" and len(events) == 5
    await raw.aclose()


async def test_close_and_stall_on_content_length_bodies(upstream: MockUpstream) -> None:
    raw = await connect(upstream)
    await raw.send(request_bytes("GET", "/bytes?n=1000&close_after=100"))
    reply = await raw.head("GET", "/bytes")
    assert reply.headers["content-length"] == "1000"
    received = b""
    with pytest.raises(h11.RemoteProtocolError):
        while (chunk := await raw.next_chunk()) is not None:
            received += chunk
    assert received == bytes_content(100)
    await raw.aclose()

    raw = await connect(upstream)
    await raw.send(request_bytes("GET", "/small?stall_after=5"))
    await raw.head("GET", "/small")
    assert await raw.next_chunk() == b"Hello"
    with trio.move_on_after(0.05) as waited:
        await raw.next_chunk()
    assert waited.cancelled_caught
    await raw.aclose()
    await wait_for_stats(upstream, responses_stalled=1, open_connections=0)


async def test_client_disconnect_mid_stream_counted_in_stats(
        upstream: MockUpstream, client: httpx.AsyncClient) -> None:
    raw = await connect(upstream)
    target = CHAT + "?tokens=100000&delay_ms=20"
    await raw.send(request_bytes("POST", target, chat_body(stream=True)))
    await raw.head("POST", target)
    await raw.next_chunk()
    await raw.aclose()
    with trio.fail_after(2):
        while True:
            stats = (await client.get("/stats")).json()
            if stats["streams_aborted_by_client"] == 1:
                break
            await trio.sleep(0.01)
    assert stats["connections_closed_by_peer"] == 1
    assert stats["open_connections"] == 1  # only httpx's connection remains
    assert stats["streams_completed"] == 0


async def test_client_disconnect_without_delay(upstream: MockUpstream) -> None:
    """With delay 0 the server notices the departure through send errors or polling."""
    raw = await connect(upstream)
    target = CHAT + "?tokens=100000"
    await raw.send(request_bytes("POST", target, chat_body(stream=True)))
    await raw.head("POST", target)
    await raw.next_chunk()
    await raw.aclose()
    await wait_for_stats(upstream, 5.0, streams_aborted_by_client=1, open_connections=0)
    assert upstream.stats.streams_completed == 0


# ----------------------------------------------------------------- /echo and /bytes


async def test_echo_reports_what_arrived(upstream: MockUpstream) -> None:
    raw = await connect(upstream)
    chunked = (b"PUT /echo/x?a=1&b=%20 HTTP/1.1\r\nHost: mock\r\nX-Weird-CASE: One\r\n"
               b"x-dup: 1\r\nX-Dup: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    await raw.send(chunked.replace(b"/echo/x", b"/echo"))
    reply = (await raw.reply("PUT", "/echo")).json()
    assert reply["method"] == "PUT"
    assert reply["target"] == "/echo?a=1&b=%20"
    assert reply["version"] == "1.1"
    assert reply["headers"] == [["Host", "mock"], ["X-Weird-CASE", "One"], ["x-dup", "1"],
                                ["X-Dup", "2"], ["Transfer-Encoding", "chunked"]]
    assert reply["body_bytes"] == 11
    assert reply["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()

    await raw.send(b"HEAD /echo HTTP/1.1\r\nHost: mock\r\n\r\n")
    head = await raw.reply("HEAD", "/echo")
    assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) > 0
    after = await raw.request("DELETE", "/echo", b"xyz")
    assert after.json()["method"] == "DELETE" and after.json()["body_bytes"] == 3
    await raw.aclose()


async def test_chunked_request_body_to_chat(upstream: MockUpstream) -> None:
    raw = await connect(upstream)
    body = chat_body()
    await raw.send(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: mock\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n"
                   + b"%x\r\n%s\r\n" % (10, body[:10])
                   + b"%x\r\n%s\r\n" % (len(body) - 10, body[10:]) + b"0\r\n\r\n")
    reply = await raw.reply("POST", CHAT)
    assert reply.status == 200 and reply.json()["model"] == "m-test"
    await raw.aclose()


async def test_bytes_endpoint(client: httpx.AsyncClient) -> None:
    reply = await client.get("/bytes?n=300000")
    assert reply.headers["content-length"] == "300000"
    assert reply.content == bytes_content(300_000)
    assert (await client.get("/bytes")).content == bytes_content(1024)
    assert (await client.get("/bytes?n=0")).content == b""
    secret = await client.get("/bytes?n=100&body_secret=AKIAABCDEFGHIJKLMNOP")
    assert secret.content == bytes_content(100, "AKIAABCDEFGHIJKLMNOP")
    assert b"AKIAABCDEFGHIJKLMNOP" in secret.content
    over = await client.get(f"/bytes?n={64 * 1024 * 1024 + 1}")
    assert over.status_code == 400
    head = await client.head("/bytes?n=5000")
    assert head.headers["content-length"] == "5000" and head.content == b""
    assert (await client.get("/small")).status_code == 200


# ------------------------------------------------------------ connection management


async def test_keep_alive_reuses_one_connection(upstream: MockUpstream,
                                               client: httpx.AsyncClient) -> None:
    for _ in range(5):
        assert (await client.get("/small")).status_code == 200
    assert upstream.stats.connections_accepted == 1
    assert upstream.stats.requests == 5


async def test_pipelined_requests_answered_in_order(upstream: MockUpstream) -> None:
    raw = await connect(upstream)
    await raw.send(request_bytes("GET", "/small") + request_bytes("GET", "/health"))
    first = await raw.reply("GET", "/small")
    second = await raw.reply("GET", "/health")
    assert first.body == b"Hello, world!\n"
    assert second.json() == {"status": "ok"}
    assert int(second.headers["x-mock-request-count"]) == int(
        first.headers["x-mock-request-count"]) + 1

    many = 200
    await raw.send(b"".join(request_bytes("GET", f"/bytes?n={i}") for i in range(many)))
    for i in range(many):
        reply = await raw.reply("GET", f"/bytes?n={i}")
        assert reply.body == bytes_content(i)
    # A pipelined request behind a stream is answered after the stream ends.
    await raw.send(request_bytes("POST", CHAT + "?tokens=2", chat_body(stream=True))
                   + request_bytes("GET", "/small"))
    assert (await raw.reply("POST", CHAT)).chunks[-1].endswith(b"[DONE]\n\n")
    assert (await raw.reply("GET", "/small")).body == b"Hello, world!\n"
    await raw.aclose()


async def test_http10_clients(upstream: MockUpstream) -> None:
    raw = await connect(upstream)
    await raw.send(b"GET /small HTTP/1.0\r\n\r\n")
    reply = await raw.reply("GET", "/small")
    assert reply.body == b"Hello, world!\n"
    assert reply.headers["connection"] == "close"
    assert await raw.at_eof()
    await raw.aclose()

    raw = await connect(upstream)
    await raw.send(b"GET /small HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    reply = await raw.reply("GET", "/small")
    assert reply.headers["connection"] == "keep-alive"
    await raw.send(b"GET /health HTTP/1.0\r\n\r\n")
    assert (await raw.reply("GET", "/health")).status == 200
    await raw.aclose()

    # A stream to an HTTP/1.0 client is delimited by closing the connection.
    stream = await trio.open_tcp_stream("127.0.0.1", port_of(upstream))
    body = chat_body(stream=True)
    await stream.send_all(b"POST /v1/chat/completions?tokens=2 HTTP/1.0\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    received = b""
    while data := await stream.receive_some(65536):
        received += data
    head, _, payload = received.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert payload.endswith(b"data: [DONE]\n\n")
    assert [sse_payload(e + b"\n\n") for e in payload.split(b"\n\n")[:-1]][-1] == "[DONE]"
    await stream.aclose()


async def test_connection_close_and_head(upstream: MockUpstream) -> None:
    raw = await connect(upstream)
    await raw.send(request_bytes("HEAD", "/small") +
                   request_bytes("GET", "/small", headers=[("Connection", "close")]))
    head = await raw.reply("HEAD", "/small")
    assert head.headers["content-length"] == "14" and head.body == b""
    last = await raw.reply("GET", "/small")
    assert last.headers["connection"] == "close" and last.body == b"Hello, world!\n"
    assert await raw.at_eof()
    await raw.aclose()


async def test_expect_continue(upstream: MockUpstream) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port_of(upstream))
    body = b"0123456789"
    await stream.send_all(b"POST /echo HTTP/1.1\r\nHost: mock\r\nContent-Length: 10\r\n"
                          b"Expect: 100-continue\r\n\r\n")
    interim = await stream.receive_some(65536)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    await stream.send_all(body)
    raw = Raw(stream)
    reply = await raw.reply("POST", "/echo")
    assert reply.json()["body_bytes"] == 10
    await raw.aclose()


async def test_malformed_request_gets_400_and_close(upstream: MockUpstream) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port_of(upstream))
    await stream.send_all(b"GET /small HTTP/1.1\r\nHost: mock\r\nContent-Length: 1\r\n"
                          b"Content-Length: 2\r\n\r\nab")
    received = b""
    with trio.fail_after(5):
        while data := await stream.receive_some(65536):
            received += data
    assert received.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in received
    await stream.aclose()


async def test_serve_accepts_trio_listener() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    server = MockUpstream(peer="peer-a")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners[0])
        port = listeners[0].socket.getsockname()[1]
        async with httpx.AsyncClient() as http:
            reply = await http.get(f"http://127.0.0.1:{port}/small")
        assert reply.headers["x-mock-peer"] == "peer-a"
        nursery.cancel_scope.cancel()
    await listeners[0].aclose()


async def test_module_serve_returns_server() -> None:
    with mock_upstream.bind("127.0.0.1", 0) as sock:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(mock_upstream.serve, sock)
            assert isinstance(server, MockUpstream)
            async with httpx.AsyncClient() as http:
                assert (await http.get(server.url + "/health")).status_code == 200
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- the CLI


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "mock-upstream printed nothing"
    return proc.stdout.readline().strip()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_subprocess_serves_and_stops_on_signal(signum: signal.Signals) -> None:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "li_httpd.ops.mock_upstream", "--port", "0",
                             "--models", "alpha,beta"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = _read_line(proc, 20)
        prefix = "mock-upstream listening on "
        assert line.startswith(prefix + "http://127.0.0.1:")
        url = line[len(prefix):]
        models = httpx.get(url + "/v1/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["alpha", "beta"]
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        stderr = proc.stderr.read()
        proc.stdout and proc.stdout.close()
        proc.stderr.close()
    assert "Traceback" not in stderr


def test_main_reports_busy_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert mock_upstream.main(["--port", str(port)]) == 1


async def test_upgrade_request_is_answered_then_closed(upstream: MockUpstream) -> None:
    raw = await connect(upstream)
    await raw.send(b"GET /small HTTP/1.1\r\nHost: mock\r\nConnection: Upgrade\r\n"
                   b"Upgrade: websocket\r\n\r\n")
    stream = raw.stream
    received = b""
    with trio.fail_after(5):
        while data := await stream.receive_some(65536):
            received += data
    assert received.startswith(b"HTTP/1.1 200 ") and received.endswith(b"Hello, world!\n")
    assert b"\r\nconnection: close\r\n" in received
    await raw.aclose()


# ------------------------------------------- Responses and Messages shapes, real SDKs

RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"


def named_event(chunk: bytes) -> tuple[str, Any]:
    """(event name, JSON data) of one named SSE event that must fill exactly one chunk."""
    assert chunk.startswith(b"event: ") and chunk.endswith(b"\n\n"), chunk
    assert chunk.count(b"\n\n") == 1, chunk
    name, data = chunk[:-2].split(b"\n")
    assert data.startswith(b"data: ")
    return name[len(b"event: "):].decode(), orjson.loads(data[len(b"data: "):])


async def test_cache_knobs_in_chat_usage(client: httpx.AsyncClient) -> None:
    reply = await client.post(CHAT + "?tokens=2&cached_tokens=5", content=chat_body())
    assert reply.json()["usage"] == {"prompt_tokens": 8, "completion_tokens": 2,
                                     "total_tokens": 10,
                                     "prompt_tokens_details": {"cached_tokens": 5}}
    with pytest.raises(KnobError):
        parse_knobs({"cached_tokens": "-1"})


async def test_responses_stream_events(upstream: MockUpstream) -> None:
    raw = await connect(upstream)
    target = RESPONSES + "?tokens=2&cached_tokens=3&cache_write_tokens=1"
    body = orjson.dumps({"model": "m-test", "input": "say hello world", "stream": True})
    await raw.send(request_bytes("POST", target, body))
    reply = await raw.reply("POST", RESPONSES)
    assert reply.status == 200
    events = [named_event(chunk) for chunk in reply.chunks]
    names = [name for name, _ in events]
    assert names == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", "response.output_text.delta",
                     "response.output_text.delta", "response.output_text.done",
                     "response.content_part.done", "response.output_item.done",
                     "response.completed"]
    assert [data["type"] for _, data in events] == names
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    usage = events[-1][1]["response"]["usage"]
    assert usage == {"input_tokens": 6,
                     "input_tokens_details": {"cached_tokens": 3, "cache_write_tokens": 1},
                     "output_tokens": 2, "output_tokens_details": {"reasoning_tokens": 0},
                     "total_tokens": 8}
    again = await raw.request("GET", "/small")  # keep-alive after the stream
    assert again.body == b"Hello, world!\n"
    await raw.aclose()


async def test_messages_stream_events_and_close_after(upstream: MockUpstream) -> None:
    raw = await connect(upstream)
    body = orjson.dumps({"model": "m-test", "max_tokens": 16, "stream": True,
                         "messages": [{"role": "user", "content": "say hello world"}]})
    await raw.send(request_bytes("POST", MESSAGES + "?tokens=3", body))
    reply = await raw.reply("POST", MESSAGES)
    names = [named_event(chunk)[0] for chunk in reply.chunks]
    assert names == ["message_start", "content_block_start", "ping", "content_block_delta",
                     "content_block_delta", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]
    await raw.aclose()

    raw = await connect(upstream)
    target = MESSAGES + "?close_after=1000&tokens=1"
    await raw.send(request_bytes("POST", target, body))
    await raw.head("POST", target)
    events = []
    with pytest.raises(h11.RemoteProtocolError):  # all events, no terminating chunk
        while (chunk := await raw.next_chunk()) is not None:
            events.append(named_event(chunk)[0])
    assert len(events) == 1 + 6 and events[-1] == "message_stop"
    await raw.aclose()


async def test_messages_fail_uses_anthropic_error_shape(client: httpx.AsyncClient) -> None:
    reply = await client.post(MESSAGES + "?fail=529", content=b"{}")
    assert reply.status_code == 529
    assert reply.json() == {"type": "error", "error": {
        "type": "overloaded_error", "message": "mock-upstream failure (status 529)"}}
    reply = await client.post(MESSAGES + "?fail=429", content=b"{}")
    assert reply.json()["error"]["type"] == "rate_limit_error"
    bad = await client.post(MESSAGES, content=b"[")
    assert bad.status_code == 400
    assert bad.json()["type"] == "error"
    assert bad.json()["error"]["type"] == "invalid_request_error"


async def test_responses_with_the_openai_sdk(upstream: MockUpstream) -> None:
    import openai

    def run() -> None:
        sdk = openai.OpenAI(base_url=upstream.url + "/v1", api_key="x", max_retries=0,
                            default_query={"tokens": "4", "cached_tokens": "2"})
        response = sdk.responses.create(model="m-test", input="hi there")
        assert response.output_text == "Hello from the li-httpd"
        assert response.status == "completed"
        assert response.usage is not None
        assert (response.usage.input_tokens, response.usage.output_tokens,
                response.usage.input_tokens_details.cached_tokens,
                response.usage.total_tokens) == (4, 4, 2, 8)
        deltas = []
        completed = None
        for event in sdk.responses.create(model="m-test", input="hi there", stream=True):
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.completed":
                completed = event.response
        assert "".join(deltas) == "Hello from the li-httpd"
        assert completed is not None and completed.usage is not None
        assert completed.output_text == "Hello from the li-httpd"
        assert (completed.usage.input_tokens, completed.usage.output_tokens,
                completed.usage.input_tokens_details.cached_tokens) == (4, 4, 2)
        with sdk.responses.stream(model="m-test", input="hi there") as stream:
            final = stream.get_final_response()
        assert final.usage is not None and final.usage.output_tokens == 4
        with pytest.raises(openai.RateLimitError):
            sdk.responses.create(model="m-test", input="hi", extra_query={"fail": "429"})

    await trio.to_thread.run_sync(run)


async def test_messages_with_the_anthropic_sdk(upstream: MockUpstream) -> None:
    import anthropic

    def run() -> None:
        sdk = anthropic.Anthropic(base_url=upstream.url, api_key="x", max_retries=0,
                                  default_query={"tokens": "3", "cached_tokens": "7",
                                                 "cache_write_tokens": "5"})
        messages: Any = [{"role": "user", "content": "say hello world"}]
        message = sdk.messages.create(model="m-test", max_tokens=16, messages=messages,
                                      system="be brief")
        assert [block.type for block in message.content] == ["text"]
        assert message.content[0].text == "Hello from the"  # type: ignore[union-attr]
        assert message.stop_reason == "end_turn"
        usage = message.usage
        assert (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens,
                usage.cache_creation_input_tokens) == (5, 3, 7, 5)
        with sdk.messages.stream(model="m-test", max_tokens=16, messages=messages) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text == "Hello from the"
        assert (final.usage.input_tokens, final.usage.output_tokens,
                final.usage.cache_read_input_tokens,
                final.usage.cache_creation_input_tokens) == (3, 3, 7, 5)
        raw_events = list(sdk.messages.create(model="m-test", max_tokens=2, messages=messages,
                                              stream=True))
        assert [event.type for event in raw_events][-2:] == ["message_delta", "message_stop"]
        delta = raw_events[-2]
        assert delta.type == "message_delta"
        assert delta.usage.output_tokens == 2 and delta.delta.stop_reason == "max_tokens"
        with pytest.raises(anthropic.APIStatusError) as failed:
            sdk.messages.create(model="m-test", max_tokens=16, messages=messages,
                                extra_query={"fail": "529"})
        assert failed.value.status_code == 529

    await trio.to_thread.run_sync(run)


@pytest.mark.parametrize(("path", "body", "expected"), [
    (CHAT, {"messages": [{"role": "user", "content": "say hello world"}]}, (3, 4, 2, 0)),
    (COMPLETIONS, {"prompt": "say hello world"}, (3, 4, 2, 0)),
    (RESPONSES, {"input": "say hello world"}, (3, 4, 2, 0)),
    (MESSAGES, {"max_tokens": 16, "messages": [{"role": "user", "content": "say hello world"}]},
     (3, 4, 2, 1)),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_usage_scanner_reads_the_mock(client: httpx.AsyncClient, path: str,
                                            body: dict[str, Any], stream: bool,
                                            expected: tuple[int, int, int, int]) -> None:
    """The gateway's usage scanner (workers/usage.py) reads what the mock reports, fed
    the de-chunked body as it arrives."""
    from li_httpd.workers.usage import UsageScanner, shape_of

    shape = shape_of(path)
    assert shape is not None
    scanner = UsageScanner(shape, sse=stream)
    target = path + "?tokens=4&cached_tokens=2&cache_write_tokens=1"
    async with client.stream("POST", target, content=orjson.dumps(
            {"model": "m-test", "stream": stream, **body})) as reply:
        assert reply.status_code == 200
        async for piece in reply.aiter_bytes():
            scanner.feed(piece)
    usage = scanner.finish()
    assert usage.found
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens,
            usage.cache_write_tokens) == expected


@pytest.mark.parametrize(("path", "events"), [(RESPONSES, 3 + 8), (MESSAGES, 3 + 6)])
async def test_new_shapes_keep_the_timing_and_cut_knobs(
        autojump_clock: trio.testing.MockClock, path: str, events: int) -> None:
    body = orjson.dumps({"model": "m", "max_tokens": 16, "input": "hi", "stream": True,
                         "messages": [{"role": "user", "content": "hi"}]})
    server = MockUpstream()
    async with trio.open_nursery() as nursery:
        raw = socketpair_client(server, nursery)
        start = trio.current_time()
        target = path + "?tokens=3&delay_ms=1000&ttfb_ms=5000&body_secret=sk-x1"
        await raw.send(request_bytes("POST", target, body))
        await raw.head("POST", target)
        arrivals, chunks = [], []
        while (chunk := await raw.next_chunk()) is not None:
            arrivals.append(trio.current_time() - start)
            chunks.append(chunk)
        assert arrivals == pytest.approx([5.0 + i for i in range(events + 1)])  # + the secret
        assert b"sk-x1" in b"".join(chunks)

        json_body = orjson.loads(body.replace(b'"stream":true', b'"stream":false'))
        start = trio.current_time()
        reply = await raw.request("POST", path + "?tokens=4&delay_ms=500",
                                  orjson.dumps(json_body))
        assert trio.current_time() - start == pytest.approx(2.0)
        assert reply.json()["usage"]["output_tokens"] == 4

        target = path + "?stall_after=2&tokens=5"
        await raw.send(request_bytes("POST", target, body))
        await raw.head("POST", target)
        assert await raw.next_chunk() is not None
        assert await raw.next_chunk() is not None
        with trio.move_on_after(3600) as waited:
            await raw.next_chunk()
        assert waited.cancelled_caught
        assert server.stats.responses_stalled == 1
        await raw.aclose()
        nursery.cancel_scope.cancel()
