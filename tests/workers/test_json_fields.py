"""The top-level JSON field reader: tables and properties against a full JSON parse."""

from __future__ import annotations

import json

import orjson
from hypothesis import given
from hypothesis import strategies as st
from li_httpd.workers.json_fields import top_level, with_stream_usage

NAMES = (b"model", b"stream")


def test_reads_top_level_fields_after_nested_ones() -> None:
    body = (b'{"messages":[{"role":"user","content":"x","model":"inner"}],'
            b'"tools":[{"stream":false}],"model":"gpt-4o","stream":true}')
    assert top_level(body, NAMES) == {b"model": "gpt-4o", b"stream": True}


def test_whitespace_escapes_and_key_order() -> None:
    body = b'{ "stream" :\n true , "model" : "m\\u00e9\\"x" }'
    assert top_level(body, NAMES) == {b"model": 'm\u00e9"x', b"stream": True}


def test_a_key_in_a_string_value_is_not_a_key() -> None:
    body = b'{"prompt":"{\\"model\\": \\"evil\\", \\"stream\\": true}","model":"ok"}'
    assert top_level(body, NAMES) == {b"model": "ok"}


def test_truncated_body_stops_at_the_cut() -> None:
    body = b'{"model":"a","messages":[{"content":"say {\\"stream\\": true}'
    for cut in range(len(body) + 1):
        found = top_level(body[:cut], NAMES)
        assert b"stream" not in found
        assert found.get(b"model", "a") == "a"


def test_a_key_given_twice_takes_its_last_value() -> None:
    body = b'{"model":"cheap","messages":[],"model":"expensive"}'
    assert top_level(body, NAMES) == {b"model": "expensive"}
    assert top_level(body, NAMES, complete=True) == {b"model": "expensive"}


def test_a_number_at_the_end_of_a_prefix_is_not_trusted() -> None:
    assert top_level(b'{"max_tokens":12', (b"max_tokens",)) == {}
    assert top_level(b'{"max_tokens":12}', (b"max_tokens",)) == {b"max_tokens": 12}
    assert top_level(b'{"max_tokens":12 ', (b"max_tokens",)) == {b"max_tokens": 12}


def test_not_an_object_and_non_scalar_values() -> None:
    assert top_level(b'["model","x"]', NAMES) == {}
    assert top_level(b'', NAMES) == {}
    assert top_level(b'garbage', NAMES) == {}
    assert top_level(b'{"model":{"name":"x"},"stream":[true]}', NAMES) == {}
    assert top_level(b'{"model":nope}', NAMES) == {}
    assert top_level(b'{"model":"x",}', NAMES, complete=True) == {}  # not JSON


_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.sampled_from(["model", "stream", "a", "b"]),
                                         inner, max_size=3), max_leaves=12)


@given(st.dictionaries(st.sampled_from(["model", "stream", "messages", "x"]), _values,
                       max_size=4), st.booleans())
def test_agrees_with_a_full_parse(doc: dict[str, object], pretty: bool) -> None:
    data = json.dumps(doc, indent=1 if pretty else None).encode()
    expected = {k.encode(): v for k, v in orjson.loads(data).items()
                if k in ("model", "stream") and not isinstance(v, dict | list)}
    assert top_level(data, NAMES) == expected
    assert top_level(data, NAMES, complete=True) == expected
    for cut in range(0, len(data), 7):  # a prefix never invents a field or a value
        partial = top_level(data[:cut], NAMES)
        for key, value in partial.items():
            assert key in expected
            assert value == expected[key]


def test_with_stream_usage_inserts_and_keeps_every_other_byte() -> None:
    body = b'{ "model" : "m",\n "stream": true }\n'
    out = with_stream_usage(body)
    assert out == b'{ "model" : "m",\n "stream": true ,"stream_options":{"include_usage":true}}\n'
    assert orjson.loads(out)["stream_options"] == {"include_usage": True}
    assert with_stream_usage(b"{}") == b'{"stream_options":{"include_usage":true}}'
    chosen = b'{"stream":true,"stream_options":{"include_usage":false}}'
    assert with_stream_usage(chosen) == chosen
    assert with_stream_usage(b"[1]") == b"[1]"
    assert with_stream_usage(b"{nope") == b"{nope"
