"""Deny-path redaction of JSON bodies: whole documents and the streaming walker (tables).

Properties over random documents are in test_json_redact_props.py.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import orjson
import pytest
from li_httpd.workers.json_redact import (
    REDACTED,
    JsonRedactError,
    JsonStreamRedactor,
    compile_paths,
    redact_json_bytes,
    redact_value,
)


def stream(body: bytes, paths: list[str], size: int | None = None,
           **caps: int) -> tuple[bytes, list[str]]:
    """The walker's output for ``body`` fed in pieces of ``size`` bytes (whole if None)."""
    redactor = JsonStreamRedactor(compile_paths(paths), **caps)
    size = size or max(1, len(body))
    out = [redactor.feed(body[i:i + size]) for i in range(0, len(body), size)]
    out.append(redactor.finish())
    return b"".join(out), redactor.hits


VALUE_CASES: list[tuple[list[str], Any, Any, list[str]]] = [
    (["$.api_key"], {"api_key": "sk-1", "x": 1}, {"api_key": REDACTED, "x": 1},
     ["$.api_key"]),
    (["$.a"], {"a": {"b": [1, 2, {"c": None}]}}, {"a": REDACTED}, ["$.a"]),
    (["$.a"], {"a": None}, {"a": REDACTED}, ["$.a"]),
    (["$.a.b", "$.a"], {"a": {"b": 1}}, {"a": REDACTED}, ["$.a"]),
    (["$.users[*].password"],
     {"users": [{"password": "p1"}, {"name": "n"}, {"password": ["p2"]}]},
     {"users": [{"password": REDACTED}, {"name": "n"}, {"password": REDACTED}]},
     ["$.users[*].password", "$.users[*].password"]),
    (["$..secret"], {"secret": 1, "l": [{"secret": {"secret": 2}}], "s": "secret"},
     {"secret": REDACTED, "l": [{"secret": REDACTED}], "s": "secret"},
     ["$..secret", "$..secret"]),
    (["$.obj.*"], {"obj": {"a": 1, "b": [2]}, "other": {"a": 1}},
     {"obj": {"a": REDACTED, "b": REDACTED}, "other": {"a": 1}}, ["$.obj.*", "$.obj.*"]),
    (["$.list[*]"], {"list": [1, "x"]}, {"list": [REDACTED, REDACTED]},
     ["$.list[*]", "$.list[*]"]),
    (["$.nothing"], {"a": 1}, {"a": 1}, []),
    (["$.a"], [{"a": 1}], [{"a": 1}], []),
    (["$.a"], "a", "a", []),
]


@pytest.mark.parametrize(("paths", "value", "expected", "hits"), VALUE_CASES)
def test_redact_value(paths: list[str], value: Any, expected: Any, hits: list[str]) -> None:
    before = orjson.dumps(value)
    assert redact_value(value, compile_paths(paths)) == (expected, hits)
    assert orjson.dumps(value) == before  # the input is not modified


@pytest.mark.parametrize(("paths", "value", "expected", "hits"), VALUE_CASES)
def test_stream_agrees_with_redact_value(paths: list[str], value: Any, expected: Any,
                                        hits: list[str]) -> None:
    body = orjson.dumps(value, option=orjson.OPT_INDENT_2)
    for size in (1, 2, 7, None):
        out, found = stream(body, paths, size)
        assert orjson.loads(out) == expected
        assert found == hits


def test_redact_json_bytes() -> None:
    deny = compile_paths(["$.key"])
    body = b'{ "key" : "v",\n  "n": 1.50E+1 }'
    assert redact_json_bytes(body, deny) == (b'{"key":"[REDACTED]","n":15.0}', ["$.key"])
    untouched = b'{ "other" : "v",  "n": 1.50E+1 }'
    result = redact_json_bytes(untouched, deny)
    assert result is not None
    assert result[0] is untouched
    assert result[1] == []
    assert redact_json_bytes(b'{"key": ', deny) is None
    assert redact_json_bytes(b"", deny) is None
    assert redact_json_bytes(b'{"key":"\\ud800"}', deny) is None


def test_redact_value_depth_cap() -> None:
    deep: Any = {"secret": 1}
    for _ in range(10):
        deep = {"a": deep}
    deny = compile_paths(["$..secret"])
    assert redact_value(deep, deny, max_depth=11)[1] == ["$..secret"]
    with pytest.raises(JsonRedactError, match="too deep"):
        redact_value(deep, deny, max_depth=10)
    assert redact_value(deep, compile_paths(["$.b"]), max_depth=1) == (deep, [])


def test_stream_keeps_untouched_bytes() -> None:
    body = (b'\t{ "keep" : [ 1.0E+2 , -0 , "\\u00e9\\n\\"" , true ,null ] ,\r\n'
            b' "secret" :\n {"deep": ["\\\\", {"x": "}]"}]} , "after": "\xc3\xa9" }  \n')
    expected = body.replace(b'{"deep": ["\\\\", {"x": "}]"}]}', b'"[REDACTED]"')
    for size in range(1, 12):
        assert stream(body, ["$.secret"], size) == (expected, ["$.secret"])
    assert stream(body, [], 3) == (body, [])


ESCAPED_KEYS = [
    b'{"api\\u005fkey": "x"}',
    b'{"\\u0061pi_key": "x"}',
    b'{"api_k\\u0065y": "x"}',
]


@pytest.mark.parametrize("body", ESCAPED_KEYS)
def test_keys_are_compared_decoded(body: bytes) -> None:
    for size in (1, 2, 3, 5, None):
        out, hits = stream(body, ["$.api_key"], size)
        assert orjson.loads(out) == {"api_key": REDACTED}
        assert hits == ["$.api_key"]


def test_surrogate_pairs_pass_split_anywhere() -> None:
    body = b'{"k\\ud83d\\ude00": "\\ud83d\\ude00", "s": "\\uD834\\uDD1E"}'
    for size in range(1, 9):
        assert stream(body, ["$.s"], size)[0] == body.replace(b'"\\uD834\\uDD1E"',
                                                              b'"[REDACTED]"')
    assert stream(body, ["$.other"], 1)[0] == body


def test_redacted_scalars_and_top_level_scalars() -> None:
    body = b'{"n": -12.5e-3, "t": true, "z": 0, "s": ""}'
    out, hits = stream(body, ["$.n", "$.t", "$.z", "$.s"], 1)
    assert out == (b'{"n": "[REDACTED]", "t": "[REDACTED]", "z": "[REDACTED]", '
                   b'"s": "[REDACTED]"}')
    assert hits == ["$.n", "$.t", "$.z", "$.s"]
    for body in (b"12", b" -0.5e+7 ", b'"x"', b"null", b"[]", b"{}"):
        for size in (1, None):
            assert stream(body, ["$.a", "$..b"], size) == (body, [])


MALFORMED = [
    b"", b"   ", b"{", b"[", b"}", b"]", b'{"a"}', b'{"a":}', b'{"a":1,}', b"[1,]", b"[,1]",
    b'{"a" 1}', b'{"a"::1}', b'{1:2}', b"[1 2]", b'["a":1]', b"{]", b"[}", b"[1]]",
    b"{} {}", b"1 2", b"[1] x", b"01", b"-", b"1.", b".5", b"1e", b"+1", b"tru", b"truex",
    b"nul", b"True", b"NaN", b"Infinity", b'"abc', b'"\\x"', b'"\\u12"', b'"\\u12G4"',
    b'"a\x01b"', b'"a\nb"', b'"\\ud800"', b'"\\udc00"', b'"\\ud800\\u0041"',
    b'"\\ud800x"', b'"\xff"', b'"\xc3"', b'"\xed\xa0\x80"', b"\xef\xbb\xbf{}",
    b"[1,2", b'{"a":[1,{"b":"c"}', b"\x00", b"'a'", b"[1;2]",
    b'["x\\ud83d\\ud83d"]', b'["x\\ude00\\ud83d"]', b'["\\ud83d\\n"]', b'{"\\ud83dk": 1}',
    b'["\\ud83d\\ude0"]', b'["\\ud83d\\u"]',
]


LONE_SURROGATES = [b'["' + b"a" * 20 + tail + b'"]' for tail in
                   (b"\\ud83d", b"\\ud83d\\ud83d", b"\\ude00", b"\\ud83dx", b"\\ud83d\\u0041")]


@pytest.mark.parametrize("body", LONE_SURROGATES)
def test_lone_surrogates_raise_at_every_split(body: bytes) -> None:
    for cut in range(len(body) + 1):
        redactor = JsonStreamRedactor(compile_paths(["$..a"]))
        with pytest.raises(JsonRedactError, match="surrogate"):
            redactor.feed(body[:cut])
            redactor.feed(body[cut:])
            redactor.finish()


@pytest.mark.parametrize("body", MALFORMED)
@pytest.mark.parametrize("paths", [[], ["$.a", "$..b"]])
def test_malformed_input_raises(body: bytes, paths: list[str]) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    for size in (1, 2, None):
        with pytest.raises(JsonRedactError):
            stream(body, paths, size)


def test_after_an_error_every_call_raises() -> None:
    redactor = JsonStreamRedactor(compile_paths([]))
    with pytest.raises(JsonRedactError, match="byte 3") as first:
        redactor.feed(b"[1,]")
    with pytest.raises(JsonRedactError) as again:
        redactor.feed(b"1")
    assert again.value is first.value
    with pytest.raises(JsonRedactError):
        redactor.finish()


def test_depth_cap() -> None:
    assert stream(b"[" * 128 + b"]" * 128, [])[0] == b"[" * 128 + b"]" * 128
    with pytest.raises(JsonRedactError, match="nested deeper than 128"):
        stream(b"[" * 129 + b"]" * 129, [])
    with pytest.raises(JsonRedactError, match="nested deeper than 4"):
        stream(b'{"a":[{"b":[[]]}]}', [], 3, max_depth=4)


def test_token_caps() -> None:
    key = b'{"' + b"k" * 17 + b'": 1}'
    with pytest.raises(JsonRedactError, match="key longer than 16"):
        stream(key, ["$.a"], 5, max_token=16)
    # A key where no path can match any more is not buffered, so not capped.
    assert stream(b'{"a": ' + key + b"}", ["$.b"], 5, max_token=16)[0] == b'{"a": ' + key + b"}"
    with pytest.raises(JsonRedactError, match="number or literal longer than 16"):
        stream(b"[" + b"1" * 17 + b"]", [], 5, max_token=16)
    long_string = b'["' + b"s" * 1000 + b'"]'
    assert stream(long_string, [], 5, max_token=16)[0] == long_string


CAP_CASES = [
    (b'{"a": 1, "' + b"k" * 16 + b'": 2}', True),
    (b'{"a": 1, "' + b"k" * 17 + b'": 2}', False),
    (b'{"a": 1, "' + b"k" * 14 + b'\\\\": 2}', True),
    (b'{"a": 1, "' + b"k" * 15 + b'\\\\": 2}', False),   # counted escaped
    (b'{"' + b"k" * 17 + b'": {"a": 1}, "b": 2}', False),
    (b'[1, ' + b"1" * 16 + b", 2]", True),
    (b'[1, ' + b"1" * 17 + b", 2]", False),
    (b'{"a": -1.' + b"5" * 13 + b', "b": 2}', True),
    (b'{"a": -1.' + b"5" * 14 + b', "b": 2}', False),
    (b'{"b": {"c": ' + b"1" * 17 + b"}}", False),       # also inside a replaced value
    (b"1" * 16, True),
    (b"1" * 17, False),
]


@pytest.mark.parametrize(("body", "accepted"), CAP_CASES)
def test_caps_do_not_depend_on_the_split(body: bytes, accepted: bool) -> None:
    """A key (where keys are read) or number over the cap is refused whether it arrives
    whole in one piece or cut across pieces."""
    for cut in range(len(body) + 1):
        redactor = JsonStreamRedactor(compile_paths(["$.a", "$.b"]), max_token=16)
        try:
            redactor.feed(body[:cut])
            redactor.feed(body[cut:])
            redactor.finish()
        except JsonRedactError as exc:
            assert not accepted, (cut, exc)
            assert "longer than 16" in str(exc)
        else:
            assert accepted, cut


def test_output_is_emitted_as_input_arrives() -> None:
    redactor = JsonStreamRedactor(compile_paths(["$.secret"]))
    assert redactor.feed(b'{"keep": "abc') == b'{"keep": "abc'
    assert redactor.feed(b'def\\') == b"def"   # a cut escape is held back
    assert redactor.feed(b'n", "secret": {"x') == b'\\n", "secret": "[REDACTED]"'
    assert redactor.feed(b'": [1, 2]}, "n": 1') == b', "n": 1'
    assert redactor.feed(b"2}") == b"2}"
    assert redactor.finish() == b""
    assert redactor.hits == ["$.secret"]


def test_memory_is_bounded_by_the_chunk_not_the_document() -> None:
    chunk = 64 * 1024
    big = b"x" * (8 * 1024 * 1024)
    body = b'{"image": "' + big + b'", "keep": "' + big + b'", "n": [' + b"1," * 1000 + b"1]}"
    redactor = JsonStreamRedactor(compile_paths(["$.image"]))
    total = 0
    tracemalloc.start()
    try:
        for i in range(0, len(body), chunk):
            total += len(redactor.feed(body[i:i + chunk]))
        redactor.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == len(body) - len(big) - 2 + len(b'"[REDACTED]"')
    assert peak < 8 * chunk
