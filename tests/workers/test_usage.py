"""Tests of the token usage scanner (workers/usage.py): tables of real-looking bodies
and streams per API shape, split invariance, cut streams, garbage, large bodies."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from li_httpd.workers.usage import (
    EVENT_LIMIT,
    WINDOW,
    ApiShape,
    Price,
    Usage,
    UsageScanner,
    shape_of,
)


def _scan(shape: ApiShape, sse: bool, pieces: list[bytes]) -> Usage:
    scanner = UsageScanner(shape, sse)
    for piece in pieces:
        scanner.feed(piece)
    return scanner.finish()


def _sse(*events: object, named: bool = False, done: bool = False, eol: bytes = b"\n") -> bytes:
    out = []
    for event in events:
        data = orjson.dumps(event)
        lines = b""
        if named and isinstance(event, dict):
            lines += b"event: " + str(event["type"]).encode() + eol
        lines += b"data: " + data + eol + eol
        out.append(lines)
    if done:
        out.append(b"data: [DONE]" + eol + eol)
    return b"".join(out)


def _u(i: int = 0, o: int = 0, r: int = 0, w: int = 0, found: bool = True) -> Usage:
    return Usage(i, o, r, w, found)


# ------------------------------------------------------------------ real-looking bodies

CHAT_JSON = orjson.dumps({
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "object": "chat.completion",
    "created": 1741569952, "model": "gpt-4.1-2025-04-14",
    "choices": [{"index": 0, "message": {"role": "assistant",
                                         "content": "Hello! How can I assist you today?",
                                         "refusal": None, "annotations": []},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1019, "completion_tokens": 10, "total_tokens": 1029,
              "prompt_tokens_details": {"cached_tokens": 1000, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0,
                                            "rejected_prediction_tokens": 0}},
    "service_tier": "default"})


def _chat_chunk(content: str | None, usage: object = None, finish: str | None = None) -> dict[
        str, object]:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content},
                                           "logprobs": None, "finish_reason": finish}]
    return {"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1694268190,
            "model": "gpt-4o-mini", "system_fingerprint": "fp_44709d6fcb",
            "choices": choices, "usage": usage}


CHAT_STREAM = _sse(
    _chat_chunk(""), _chat_chunk("Hello"), _chat_chunk(" usage"), _chat_chunk("", finish="stop"),
    _chat_chunk(None, {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21,
                       "prompt_tokens_details": {"cached_tokens": 4}}),
    done=True)

COMPLETIONS_JSON = orjson.dumps({
    "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7", "object": "text_completion", "created": 1589478378,
    "model": "gpt-3.5-turbo-instruct",
    "choices": [{"text": "\n\nThis is indeed a test", "index": 0, "logprobs": None,
                 "finish_reason": "length"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}})

COMPLETIONS_STREAM = _sse(
    {"id": "cmpl-1", "object": "text_completion", "choices": [{"text": "a", "index": 0}]},
    {"id": "cmpl-1", "object": "text_completion", "choices": [],
     "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}, done=True)

EMBEDDINGS_JSON = orjson.dumps({
    "object": "list", "data": [{"object": "embedding", "embedding": [0.0023064255, -0.009327292],
                                "index": 0}],
    "model": "text-embedding-ada-002", "usage": {"prompt_tokens": 8, "total_tokens": 8}})

_RESPONSE = {
    "id": "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41", "object": "response",
    "created_at": 1741476777, "status": "completed", "model": "gpt-4o-2024-08-06",
    "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": "Hi there", "annotations": []}]}],
    "usage": {"input_tokens": 328, "input_tokens_details": {"cached_tokens": 128},
              "output_tokens": 52, "output_tokens_details": {"reasoning_tokens": 0},
              "total_tokens": 380}}
RESPONSES_JSON = orjson.dumps(_RESPONSE)
_RESPONSE_START = {**_RESPONSE, "status": "in_progress", "output": [], "usage": None}
RESPONSES_STREAM = _sse(
    {"type": "response.created", "sequence_number": 0, "response": _RESPONSE_START},
    {"type": "response.in_progress", "sequence_number": 1, "response": _RESPONSE_START},
    {"type": "response.output_text.delta", "sequence_number": 2, "item_id": "msg_1",
     "output_index": 0, "content_index": 0, "delta": "Hi"},
    {"type": "response.output_text.delta", "sequence_number": 3, "item_id": "msg_1",
     "output_index": 0, "content_index": 0, "delta": " there"},
    {"type": "response.completed", "sequence_number": 4, "response": _RESPONSE},
    named=True)

MESSAGES_JSON = orjson.dumps({
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF", "type": "message", "role": "assistant",
    "model": "claude-sonnet-4-20250514",
    "content": [{"type": "text", "text": "Hi! My name is Claude."}],
    "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 2095, "output_tokens": 503, "cache_creation_input_tokens": 2051,
              "cache_read_input_tokens": 2051}})

MESSAGES_STREAM = _sse(
    {"type": "message_start", "message": {
        "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant",
        "content": [], "model": "claude-sonnet-4-20250514", "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": 25, "output_tokens": 1,
                                         "cache_creation_input_tokens": 7,
                                         "cache_read_input_tokens": 30}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
     "usage": {"output_tokens": 10}},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
     "usage": {"output_tokens": 15}},
    {"type": "message_stop"},
    named=True)

TABLE: list[tuple[str, ApiShape, bool, bytes, Usage]] = [
    ("chat json", "chat", False, CHAT_JSON, _u(19, 10, 1000)),
    ("chat stream", "chat", True, CHAT_STREAM, _u(5, 12, 4)),
    ("chat stream crlf", "chat", True, CHAT_STREAM.replace(b"\n", b"\r\n"), _u(5, 12, 4)),
    ("chat stream cr", "chat", True, CHAT_STREAM.replace(b"\n", b"\r"), _u(5, 12, 4)),
    ("chat stream without usage", "chat", True,
     _sse(_chat_chunk("a"), _chat_chunk("b"), done=True), _u(found=False)),
    ("completions json", "completions", False, COMPLETIONS_JSON, _u(5, 7)),
    ("completions stream", "completions", True, COMPLETIONS_STREAM, _u(3, 1)),
    ("embeddings json", "embeddings", False, EMBEDDINGS_JSON, _u(8)),
    ("responses json", "responses", False, RESPONSES_JSON, _u(200, 52, 128)),
    ("responses stream", "responses", True, RESPONSES_STREAM, _u(200, 52, 128)),
    ("responses incomplete", "responses", True,
     _sse({"type": "response.incomplete", "response": {**_RESPONSE, "status": "incomplete"}}),
     _u(200, 52, 128)),
    ("messages json", "messages", False, MESSAGES_JSON, _u(2095, 503, 2051, 2051)),
    ("messages stream", "messages", True, MESSAGES_STREAM, _u(25, 15, 30, 7)),
    ("messages delta replaces input", "messages", True,
     MESSAGES_STREAM.replace(b'"usage":{"output_tokens":15}',
                             b'"usage":{"output_tokens":15,"input_tokens":40,'
                             b'"cache_read_input_tokens":0}'),
     _u(40, 15, 0, 7)),
    ("usage first (vllm-like)", "chat", False,
     b'{"usage":{"prompt_tokens":2,"completion_tokens":3},"choices":[]}', _u(2, 3)),
    ("multi-line data", "chat", True,
     b'data: {"choices":[],\ndata: "usage":{"prompt_tokens":2,"completion_tokens":3}}\n\n',
     _u(2, 3)),
    ("no blank line at the end", "chat", True,
     b'data: {"usage":{"prompt_tokens":2,"completion_tokens":3}}', _u(2, 3)),
]


@pytest.mark.parametrize(("name", "shape", "sse", "body", "expected"), TABLE,
                         ids=[row[0] for row in TABLE])
def test_table(name: str, shape: ApiShape, sse: bool, body: bytes, expected: Usage) -> None:
    assert _scan(shape, sse, [body]) == expected


@pytest.mark.parametrize(("name", "shape", "sse", "body", "expected"), TABLE,
                         ids=[row[0] for row in TABLE])
def test_every_split_position(name: str, shape: ApiShape, sse: bool, body: bytes,
                              expected: Usage) -> None:
    for at in range(len(body) + 1):
        assert _scan(shape, sse, [body[:at], body[at:]]) == expected, at


@pytest.mark.parametrize(("name", "shape", "sse", "body", "expected"), TABLE,
                         ids=[row[0] for row in TABLE])
def test_byte_by_byte(name: str, shape: ApiShape, sse: bool, body: bytes,
                      expected: Usage) -> None:
    assert _scan(shape, sse, [body[i:i + 1] for i in range(len(body))]) == expected


@given(st.sampled_from(TABLE), st.lists(st.integers(min_value=0, max_value=5000), max_size=12))
def test_random_splits(row: tuple[str, ApiShape, bool, bytes, Usage], cuts: list[int]) -> None:
    _, shape, sse, body, expected = row
    points = sorted({min(cut, len(body)) for cut in cuts})
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    assert _scan(shape, sse, pieces) == expected


def test_shape_of() -> None:
    assert shape_of("/v1/chat/completions") == "chat"
    assert shape_of("/v1/completions") == "completions"
    assert shape_of("/v1/embeddings") == "embeddings"
    assert shape_of("/v1/responses") == "responses"
    assert shape_of("/v1/messages") == "messages"
    for other in ("/v1/models", "/openai/v1/chat/completions", "/v1/chat/completions/",
                  "/v1/messages/count_tokens", ""):
        assert shape_of(other) is None


# ----------------------------------------------------------------------------- cut bodies


def test_cut_stream_keeps_what_was_seen() -> None:
    cut = MESSAGES_STREAM[:MESSAGES_STREAM.index(b"event: message_delta")]
    assert _scan("messages", True, [cut]) == _u(25, 1, 30, 7)
    half = MESSAGES_STREAM.index(b'"output_tokens":15')
    assert _scan("messages", True, [MESSAGES_STREAM[:half]]) == _u(25, 10, 30, 7)


def test_cut_stream_before_usage_finds_nothing() -> None:
    cut = CHAT_STREAM[:CHAT_STREAM.index(b'"usage":{')]
    assert _scan("chat", True, [cut]) == _u(found=False)


@pytest.mark.parametrize("at", [0, 1, 10, len(CHAT_JSON) // 2, len(CHAT_JSON) - 30])
def test_cut_json_never_raises(at: int) -> None:
    usage = _scan("chat", False, [CHAT_JSON[:at]])
    assert usage == _u(found=False)


def test_cut_json_after_the_usage_object() -> None:
    assert _scan("chat", False, [CHAT_JSON[:-5]]) == _u(19, 10, 1000)


# ------------------------------------------------------------------------ bad values


@pytest.mark.parametrize("usage", [
    b'{"prompt_tokens":-1,"completion_tokens":"3"}',
    b'{"prompt_tokens":1000000000001,"completion_tokens":true}',
    b'{"prompt_tokens":1.5,"completion_tokens":null}',
    b'[1,2]', b'"usage"', b'{}',
])
def test_bad_values_are_ignored(usage: bytes) -> None:
    body = b'{"id":"x","usage":' + usage + b'}'
    assert _scan("chat", False, [body]) == _u(found=False)
    stream = b'data: {"choices":[],"usage":' + usage + b'}\n\n'
    assert _scan("chat", True, [stream]) == _u(found=False)


def test_cached_above_prompt_is_clamped() -> None:
    body = b'{"usage":{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":9}}}'
    assert _scan("chat", False, [body]) == _u(0, 0, 5)


def test_one_bad_field_keeps_the_others() -> None:
    body = b'{"usage":{"input_tokens":"x","output_tokens":4,"cache_read_input_tokens":-2}}'
    assert _scan("messages", False, [body]) == _u(0, 4)


@pytest.mark.parametrize("shape", ["chat", "completions", "embeddings", "responses", "messages"])
@given(pieces=st.lists(st.binary(max_size=200), max_size=10), sse=st.booleans())
def test_garbage_never_raises(shape: ApiShape, pieces: list[bytes], sse: bool) -> None:
    usage = _scan(shape, sse, pieces)
    for value in (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens,
                  usage.cache_write_tokens):
        assert 0 <= value <= 10**12


_JSONISH = st.lists(st.sampled_from([
    b"data: ", b"event: message_delta\n", b'"usage"', b":", b"{", b"}", b"[", b"]", b",",
    b'"prompt_tokens"', b'"input_tokens"', b'"output_tokens"', b"12", b"null", b"\n", b"\r",
    b"\r\n", b'"', b"\\", b'"type":"message_start"', b'"message":', b'"response":',
    b'"type":"response.completed"']), max_size=60).map(b"".join)


@pytest.mark.parametrize("shape", ["chat", "responses", "messages"])
@given(body=_JSONISH, sse=st.booleans(), at=st.integers(min_value=0))
def test_jsonish_garbage_never_raises_and_splits_agree(shape: ApiShape, body: bytes, sse: bool,
                                                       at: int) -> None:
    at %= len(body) + 1
    whole = _scan(shape, sse, [body])
    assert _scan(shape, sse, [body[:at], body[at:]]) == whole


# ------------------------------------------------------------------------- large bodies


def test_huge_json_with_usage_at_the_end() -> None:
    filler = "word " * 200_000  # 1 MB of content
    body = orjson.dumps({"id": "x", "choices": [{"message": {"content": filler}}],
                         "usage": {"prompt_tokens": 7, "completion_tokens": 200_000}})
    pieces = [body[i:i + 4096] for i in range(0, len(body), 4096)]
    assert _scan("chat", False, pieces) == _u(7, 200_000)
    assert _scan("chat", False, [body]) == _u(7, 200_000)


def test_huge_json_with_usage_at_the_start() -> None:
    body = orjson.dumps({"usage": {"prompt_tokens": 7, "completion_tokens": 3},
                         "choices": [{"message": {"content": "x" * 500_000}}]})
    assert _scan("chat", False, [body[:1000], body[1000:]]) == _u(7, 3)


def test_usage_in_the_middle_of_a_huge_body_is_missed() -> None:
    body = orjson.dumps({"a": "x" * 100_000, "usage": {"prompt_tokens": 7},
                         "b": "y" * 100_000})
    assert _scan("chat", False, [body]) == _u(found=False)


def test_usage_in_head_only_counts_at_top_level() -> None:
    body = orjson.dumps({"choices": [{"usage": {"prompt_tokens": 1}}],
                         "pad": "z" * (2 * WINDOW + 70_000)})
    assert _scan("chat", False, [body]) == _u(found=False)


def test_usage_string_in_content_is_not_usage() -> None:
    body = orjson.dumps({"choices": [{"message": {"content": '"usage": {"prompt_tokens": 9}'}}],
                         "pad": "z" * 70_000})
    assert _scan("chat", False, [body]) == _u(found=False)


def test_oversized_event_is_skipped_and_the_next_one_read() -> None:
    big = b"data: " + b"x" * (EVENT_LIMIT + 10) + b"\n\n"
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3}}\n\n'
    stream = big + usage
    pieces = [stream[i:i + 65536] for i in range(0, len(stream), 65536)]
    assert _scan("chat", True, pieces) == _u(2, 3)
    # The big event ends in the same piece as the usage event.
    assert _scan("chat", True, [big[:-100], big[-100:] + usage]) == _u(2, 3)
    assert _scan("chat", True, [big[:-1], big[-1:] + usage]) == _u(2, 3)


def test_many_small_events_in_one_large_piece_are_all_read() -> None:
    small = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n' * (EVENT_LIMIT // 40)
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3}}\n\n'
    first = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n'
    for at in (0, 10, len(first) - 1):
        assert _scan("chat", True, [first[:at], first[at:] + small]) == _u(1, 1), at
        assert _scan("chat", True, [first[:at], first[at:] + small + usage]) == _u(2, 3), at


def test_oversized_event_with_usage_is_skipped() -> None:
    big = (b'data: {"choices":[],"pad":"' + b"x" * EVENT_LIMIT
           + b'","usage":{"prompt_tokens":2}}\n\n')
    pieces = [big[i:i + 65536] for i in range(0, len(big), 65536)]
    assert _scan("chat", True, pieces) == _u(found=False)


# ------------------------------------------------------------------------------- cost


def test_cost() -> None:
    usage = _u(1_000_000, 500_000, 2_000_000, 100_000)
    price = Price(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75)
    assert usage.cost(price) == pytest.approx(3.0 + 7.5 + 0.6 + 0.375)
    assert usage.cost(Price()) == 0.0
    assert _u(19, 10, 1000).cost(Price(input=2.0, output=8.0, cache_read=0.5)) == pytest.approx(
        (19 * 2.0 + 10 * 8.0 + 1000 * 0.5) / 1e6)
