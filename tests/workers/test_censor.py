"""The leak censor's pure core: every detector's secrets split at every byte position
across chunks and SSE events come out redacted exactly as a whole-text redaction would
redact them; ordinary text comes out byte-identical; holds are bounded.

The oracle is :func:`redacted`, the whole-string redaction with the same patterns (those
of log redaction, :mod:`li_httpd.ops.log.detectors`), so streaming must agree with it
for every split.
"""

from __future__ import annotations

import base64
import hashlib
import random
import uuid

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from li_httpd.config.checks import DETECTOR_IDS
from li_httpd.ops.log import detectors
from li_httpd.workers import censor as censor_mod
from li_httpd.workers.censor import MAX_HOLD, ByteCensor, Rules, SseCensor, scrub_json
from li_httpd.workers.json_redact import JsonRedactError

from tests.log.test_detectors import POSITIVES

REDACT = Rules(DETECTOR_IDS, "redact", (), 1 << 20)


def redacted(text: str, cuts: tuple[int, ...] = ()) -> str:
    """The whole-text redaction the streaming censor must agree with: each hit of the
    detectors replaced by its marker, from after the hit's last quote if it has one. A
    piece that ends one or two characters into a hit (``cuts``: where pieces end) has
    sent those characters already (a vendor prefix such as ``s`` of ``sk-`` is not held
    back); the marker follows them."""
    out, at = [], 0
    for start, end, kind in detectors.find(text):
        sent = [c for c in cuts if start < c < min(start + censor_mod.HELD_PREFIX, end)]
        quote = text.rfind('"', start, end) if kind == "aws_access_key" else -1
        start = max([start, quote + 1, *sent])
        out += [text[at:start], f"[REDACTED:{kind}]"]
        at = end
    return "".join(out) + text[at:]


def _cases() -> list[tuple[str, str]]:
    return [(kind, secret) for kind, secrets in POSITIVES.items() for secret in secrets]


CASES = _cases()


def _ids(case: tuple[str, str]) -> str:
    return f"{case[0]}-{len(case[1])}"


def _through_bytes(pieces: list[bytes], rules: Rules = REDACT,
                   same_length: bool = False) -> bytes:
    body = ByteCensor(rules, same_length)
    return b"".join(body.feed(piece) for piece in pieces) + body.finish()


def _splits3(size: int, stride: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(size + 1) for j in range(i, size + 1, stride)]


def test_every_detector_match_starts_with_one_of_its_triggers() -> None:
    for kind, secret in CASES:
        found = detectors.find(f"x {secret} y")
        assert found, (kind, secret)
        start = found[0][0]
        text = f"x {secret} y"[start:].lower().encode()
        assert any(text.startswith(t) for t in censor_mod.TRIGGERS[kind]), (kind, secret)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_a_secret_split_anywhere_in_two_or_three_chunks_is_redacted(
        case: tuple[str, str]) -> None:
    kind, secret = case
    text = f'{{"note": "key: {secret} end", "n": 1}}\n'.encode()
    expected = redacted(text.decode()).encode()
    assert f"[REDACTED:{kind}]".encode() in expected
    decoded = text.decode()
    for i in range(len(text) + 1):
        assert _through_bytes([text[:i], text[i:]]) == redacted(decoded, (i,)).encode(), i
    for i, j in _splits3(len(text), 5):
        assert _through_bytes([text[:i], text[i:j], text[j:]]) == \
            redacted(decoded, (i, j)).encode(), (i, j)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_same_length_marks_keep_the_body_length(case: tuple[str, str]) -> None:
    _, secret = case
    text = f"before {secret} after".encode()
    for i in range(0, len(text) + 1, 3):
        out = _through_bytes([text[:i], text[i:]], same_length=True)
        assert len(out) == len(text)
        assert secret.encode() not in out and b"[REDACTED" in out


def _chat_event(text: str, index: int = 0) -> bytes:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
             "model": "m", "choices": [{"index": index, "delta": {"content": text},
                                        "finish_reason": None}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _anthropic_event(text: str) -> bytes:
    body = {"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": text}}
    return b"event: content_block_delta\ndata: " + orjson.dumps(body) + b"\n\n"


def _events(out: bytes) -> list[dict[str, object]]:
    docs = []
    for block in out.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: {"):
                docs.append(orjson.loads(line[6:]))
    return docs


def _chat_text(out: bytes, index: int = 0) -> str:
    parts = []
    for doc in _events(out):
        for choice in doc["choices"]:  # type: ignore[attr-defined]
            if choice["index"] == index:
                parts.append(choice["delta"]["content"])
    return "".join(parts)


def _through_sse(events: list[bytes], rules: Rules = REDACT) -> bytes:
    stream = SseCensor(rules)
    return b"".join(stream.feed(event) for event in events) + \
        stream.feed(b"data: [DONE]\n\n") + stream.finish()


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_a_secret_streamed_across_sse_events_is_redacted(case: tuple[str, str]) -> None:
    _, secret = case
    text = f"Here it is: {secret} - keep it safe."
    for i in range(1, len(text)):
        out = _through_sse([_chat_event(text[:i]), _chat_event(text[i:])])
        assert _chat_text(out) == redacted(text, (i,)), i
        assert out.endswith(b"data: [DONE]\n\n")
    for i, j in _splits3(len(text), 9):
        pieces = [text[:i], text[i:j], text[j:]]
        out = _through_sse([_anthropic_event(p) for p in pieces])
        texts = [doc["delta"]["text"] for doc in _events(out)]  # type: ignore[index]
        assert "".join(texts) == redacted(text, (i, j)), (i, j)


def test_token_by_token_stream_of_every_secret() -> None:
    for _, secret in CASES:
        text = f"k={secret}\n"
        events = [_chat_event(text[i:i + 3]) for i in range(0, len(text), 3)]
        out = _through_sse(events)
        assert _chat_text(out) == redacted(text, tuple(range(3, len(text), 3)))
        assert secret.encode() not in out


def test_choices_are_separate_texts() -> None:
    _, secret = CASES[0]
    half = len(secret) // 2
    events = [_chat_event("a " + secret[:half], 0), _chat_event("plain", 1),
              _chat_event(secret[half:] + " b", 0), _chat_event(" text", 1)]
    out = _through_sse(events)
    assert _chat_text(out, 0) == redacted("a " + secret + " b")
    assert _chat_text(out, 1) == "plain text"


def test_secrets_elsewhere_in_a_payload_are_redacted_and_json_stays_valid() -> None:
    _, secret = CASES[0]
    doc = {"type": "tool_result", "data": {"rows": [{"cfg": f"token {secret}"}]},
           "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
    out = _through_sse([b"data: " + orjson.dumps(doc) + b"\n\n"])
    [parsed, ] = [d for d in _events(out) if d.get("type") == "tool_result"]
    assert parsed["data"] == {"rows": [{"cfg": "token [REDACTED:openai_sk]"}]}
    assert parsed["aws_secret_access_key"] == "[REDACTED:aws_access_key]"
    assert secret.encode() not in out


def test_escaped_text_is_scanned_decoded() -> None:
    _, secret = CASES[0]
    out = _through_sse([_chat_event("line one\n" + secret[:10]), _chat_event(secret[10:])])
    assert _chat_text(out) == "line one\n[REDACTED:openai_sk]"


def test_non_json_data_is_one_text_channel() -> None:
    _, secret = CASES[0]
    out = _through_sse([b"data: plain " + secret[:7].encode() + b"\n\n",
                        b"data: " + secret[7:].encode() + b" end\n\n"])
    assert secret.encode() not in out
    assert b"[REDACTED:openai_sk]" in out


FALSE_POSITIVES = [
    # source code
    "def task_runner(ask_for_key: str) -> None:\n    risk_level = 'sk-ip'\n"
    "    return {'asia_region': True, 'eyes': 'bearer of news'}\n",
    "const AKIAH = 3; // not a key; ghp is a word, xoxo hugs, aizawa-san\n",
    # hex digests and ids
    hashlib.sha256(b"x").hexdigest() + " " + hashlib.sha1(b"y").hexdigest(),
    " ".join(str(uuid.UUID(int=random.Random(7).getrandbits(128))) for _ in range(3)),
    # base64 image
    "data:image/png;base64," + base64.b64encode(random.Random(3).randbytes(3000)).decode(),
    # prose
    "The bearer bond was sold in Asia; ask-me-anything threads ended with -----.\n"
    "She said: sk-ipping school is fine, eyJ-like strings aside.",
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
]


@pytest.mark.parametrize("text", FALSE_POSITIVES)
def test_ordinary_text_passes_byte_identical(text: str) -> None:
    data = text.encode()
    for i in range(0, len(data) + 1, max(1, len(data) // 50)):
        assert _through_bytes([data[:i], data[i:]]) == data
    words = text.split(" ")
    events = [_chat_event(w + " ") for w in words]
    out = _through_sse(events)
    assert out == b"".join(events) + b"data: [DONE]\n\n"


def test_an_event_without_a_partial_match_is_released_at_once() -> None:
    stream = SseCensor(REDACT)
    for word in ["Hello", " world", ",", " how", " are", " you", "?"]:
        event = _chat_event(word)
        assert stream.feed(event) == event
    held = _chat_event(" sk-pro")
    assert stream.feed(held) == b""  # may be the start of a key
    after = _chat_event("blem solved")
    assert stream.feed(after) == held + after


def test_holds_are_bounded_and_a_long_secret_is_swallowed() -> None:
    long_key = "sk-proj-" + "Ab1_" * 3000  # far beyond MAX_HOLD
    body = ByteCensor(REDACT)
    out = b""
    for i in range(0, len(long_key), 100):
        out += body.feed(long_key[i:i + 100].encode())
        assert len(body._stream.buf) <= MAX_HOLD + 200
    out += body.feed(b" done") + body.finish()
    assert out == b"[REDACTED:openai_sk] done"

    pem = "-----BEGIN PRIVATE KEY-----\n" + "MIIE\n" * 2000 + "-----END PRIVATE KEY-----\nok"
    body = ByteCensor(REDACT)
    out = b"".join(body.feed(pem[i:i + 64].encode()) for i in range(0, len(pem), 64))
    out += body.finish()
    assert out == b"[REDACTED:pem_private]\nok"


def test_sse_holds_are_bounded() -> None:
    stream = SseCensor(REDACT)
    out = stream.feed(_chat_event("sk-proj-"))
    for _ in range(2000):
        out += stream.feed(_chat_event("Ab1_"))
    assert len(stream._pending) < 2000
    out += stream.finish()
    assert _chat_text(out) == "[REDACTED:openai_sk]"


@pytest.mark.parametrize("mode", ["block_502", "abort_stream"])
def test_other_modes_trip_and_release_nothing_after(mode: str) -> None:
    rules = Rules(DETECTOR_IDS, mode, (), 1 << 20)  # type: ignore[arg-type]
    _, secret = CASES[0]
    body = ByteCensor(rules)
    out = body.feed(b"safe part. ") + body.feed(secret.encode() + b" more")
    assert body.tripped and out == b"safe part. "
    assert body.feed(b"anything") == b"" and body.finish() == b""
    stream = SseCensor(rules)
    first = _chat_event("hi ")
    assert stream.feed(first) == first
    assert stream.feed(_chat_event(secret + " more")) == b""
    assert stream.tripped and stream.finish() == b""
    assert stream.hits.detectors == {"openai_sk": 1}


def test_generic_high_entropy_is_opt_in() -> None:
    token = "q8ZrT2mW9xKpL4vN7bYc3HsD6fGjA1eU"
    assert _through_bytes([f"token {token} end".encode()]) == f"token {token} end".encode()
    rules = Rules(("generic_high_entropy",), "redact", (), 1 << 20)
    out = _through_bytes([f"token {token[:9]}".encode(), f"{token[9:]} end".encode()], rules)
    assert out == b"token [REDACTED:generic_high_entropy] end"
    for text in FALSE_POSITIVES:
        assert _through_bytes([text.encode()], rules) == text.encode()


def test_scrub_json_redacts_nested_values_and_keeps_untouched_bodies() -> None:
    _, secret = CASES[0]
    body = orjson.dumps({"a": [{"b": {"c": f"x {secret}"}}], "n": 1.5})
    result = scrub_json(REDACT, body)
    assert result is not None
    out, hits = result
    assert orjson.loads(out) == {"a": [{"b": {"c": "x [REDACTED:openai_sk]"}}], "n": 1.5}
    assert hits.detectors == {"openai_sk": 1}
    plain = b'{ "a" : "hello",\n "b": [1, 2.50] }'
    kept = scrub_json(REDACT, plain)
    assert kept is not None and kept[0] is plain
    assert scrub_json(REDACT, b"not json, sk-") is None  # a trigger: parsed, and fails
    unparsed = b"not json, no trigger"
    assert scrub_json(REDACT, unparsed) == (unparsed, censor_mod.Hits()) or \
        scrub_json(REDACT, unparsed)[0] is unparsed  # type: ignore[index]


@given(st.text(max_size=200), st.lists(st.integers(0, 200), max_size=4))
def test_streaming_agrees_with_whole_text_redaction(text: str, cuts: list[int]) -> None:
    _, secret = CASES[len(text) % len(CASES)]
    full = (text[: len(text) // 2] + " " + secret + " " + text[len(text) // 2:]).encode()
    points = sorted({min(c, len(full)) for c in cuts})
    pieces = [full[a:b] for a, b in zip([0, *points], [*points, len(full)], strict=True)]
    # Byte positions: latin-1 gives one character per byte (the patterns are ASCII, and
    # the secret stands between spaces, so word boundaries agree).
    expected = redacted(full.decode("latin-1"), tuple(points)).encode("latin-1")
    assert _through_bytes(pieces) == expected


DENY = Rules(DETECTOR_IDS, "redact", ("$.api_key", "$..password", "$.users[*].token"),
             1 << 20)


def test_deny_paths_in_whole_bodies_and_sse_payloads() -> None:
    doc = {"api_key": "k1", "users": [{"token": "t", "name": "a", "password": "p"}],
           "deep": {"x": {"password": 5}}, "keep": "v"}
    result = scrub_json(DENY, orjson.dumps(doc))
    assert result is not None
    out, hits = result
    assert orjson.loads(out) == {
        "api_key": "[REDACTED]",
        "users": [{"token": "[REDACTED]", "name": "a", "password": "[REDACTED]"}],
        "deep": {"x": {"password": "[REDACTED]"}}, "keep": "v"}
    assert hits.paths == {"$.api_key": 1, "$..password": 2, "$.users[*].token": 1}
    event = b"event: result\ndata: " + orjson.dumps(doc) + b"\n\n"
    stream = SseCensor(DENY)
    sent = stream.feed(event) + stream.finish()
    assert sent.startswith(b"event: result\ndata: ")
    assert orjson.loads(sent.split(b"data: ", 1)[1]) == orjson.loads(out)


def test_json_body_censor_streams_deny_paths_and_detectors() -> None:
    _, secret = CASES[0]
    doc = {"items": [{"password": "p" * 100, "note": f"see {secret}"}] * 50, "n": 1}
    body = orjson.dumps(doc)
    for size in (1, 7, 4096):
        censor = censor_mod.JsonBodyCensor(DENY)
        out = b"".join(censor.feed(body[i:i + size]) for i in range(0, len(body), size))
        out += censor.finish()
        parsed = orjson.loads(out)
        # Fed byte by byte, "s" and "sk" went out before the rest arrived.
        sent = {1: "sk", 7: "", 4096: ""}[size]
        assert parsed["items"][0] == {"password": "[REDACTED]",
                                      "note": f"see {sent}[REDACTED:openai_sk]"}
        assert censor.hits.paths == {"$..password": 50}
        assert censor.hits.detectors == {"openai_sk": 50}


# -- regressions found by review -------------------------------------------------------


def test_json_keys_and_the_aws_member_label_are_scanned() -> None:
    _, key = CASES[0]
    body = orjson.dumps({"aws_access_key_id": "AKIA" + "IOSFODNN7EXAMPLE",
                         "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                         "keys": {key: {"owner": "a"}}})
    result = scrub_json(REDACT, body)
    assert result is not None
    out = orjson.loads(result[0])
    assert out["aws_access_key_id"] == "[REDACTED:aws_access_key]"
    assert out["aws_secret_access_key"] == "[REDACTED:aws_access_key]"
    assert out["keys"] == {"[REDACTED:openai_sk]": {"owner": "a"}}


def test_a_forced_decision_swallows_the_rest_of_a_secret() -> None:
    _, key = CASES[0]
    stream = SseCensor(REDACT)
    out = stream.feed(_chat_event("key " + key[:4], 0))
    for _ in range(400):  # > 64 KiB of another choice's events while choice 0 holds
        out += stream.feed(_chat_event("x" * 200 + " ", 1))
    out += stream.feed(_chat_event(key[4:] + " end", 0)) + stream.finish()
    assert key[4:].encode() not in out and key.encode() not in out


def test_events_arriving_in_arbitrary_pieces_and_over_64_kib() -> None:
    _, key = CASES[0]
    big = {"type": "response.completed", "output": [{"password": "p" * 10, "note": "x" * 70000,
                                                     "secret": f"use {key}"}]}
    data = b"data: " + orjson.dumps(big) + b"\n\n"
    rules = Rules(DETECTOR_IDS, "redact", ("$..password",), 1 << 20)
    for size in (1000, 65536, 70001):
        stream = SseCensor(rules)
        out = b"".join(stream.feed(data[i:i + size]) for i in range(0, len(data), size))
        out += stream.finish()
        doc = orjson.loads(out[6:-2])
        assert doc["output"][0]["password"] == "[REDACTED]"
        assert doc["output"][0]["secret"] == "use [REDACTED:openai_sk]"
    small = Rules(DETECTOR_IDS, "redact", (), 4096)
    stream = SseCensor(small)
    assert stream.feed(data[:8000]) == b"" and stream.tripped  # too long to read whole


def test_json_that_orjson_refuses_still_gets_its_deny_paths() -> None:
    result = scrub_json(DENY, b'\xef\xbb\xbf{"password": "hunter2", "ok": 1}')
    assert result is not None and b"hunter2" not in result[0]
    assert result[0].startswith(b"\xef\xbb\xbf")
    # A lone surrogate: neither parser reads it, so the body is refused (the gateway
    # answers 502), never passed with its deny paths unapplied.
    with pytest.raises(JsonRedactError):
        scrub_json(DENY, b'{"password": "hunter2", "s": "\\ud83d"}')
    deep = b'{"a":' * 300 + b'"sk-x"' + b"}" * 300
    assert scrub_json(REDACT, deep) is not None  # deeper than orjson writes: no exception


def test_data_with_leading_whitespace_and_escaped_triggers() -> None:
    _, key = CASES[0]
    events = [b"data:  " + _chat_event(key[:6])[6:], b"data:\t" + _chat_event(key[6:])[6:]]
    out = _through_sse(events)
    assert key.encode() not in out
    hook = "https://hooks.slack.com/services/T01234567/B01234567/a1B2c3D4e5F6g7H8i9J0"
    body = orjson.dumps({"url": hook}).replace(b"/", b"\\/")
    result = scrub_json(REDACT, body)
    assert result is not None and b"hooks" not in result[0]


def test_tool_calls_of_two_choices_are_separate_texts() -> None:
    _, key = CASES[0]
    half = len(key) // 2

    def call(choice: int, text: str) -> bytes:
        chunk = {"choices": [{"index": choice, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": text}}]}}]}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"
    out = _through_sse([call(0, '{"k": "' + key[:half]), call(1, '{"q": "x'),
                        call(0, key[half:] + '"}'), call(1, '"}')])
    assert key[half:].encode() not in out and b"[REDACTED:openai_sk]" in out


def test_long_runs_of_triggers_scan_in_linear_time() -> None:
    hostile = b"sk-aaaaaaaa-" * 5000  # 60 KB: one trigger every 12 bytes in one token
    body = ByteCensor(REDACT)
    out = body.feed(hostile) + body.finish()
    assert len(out) <= len(hostile)
