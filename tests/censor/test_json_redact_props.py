"""Properties of JSON deny-path redaction (hypothesis), and a fuzz test of the walker.

For random JSON documents, spelt in several ways (compact, indented, ASCII-only with
``\\uXXXX`` escapes and surrogate pairs), and random deny paths drawn from the
document's own keys:

- the streaming walker's output parses and equals :func:`redact_value`'s result, with
  the same hits, and :func:`redact_json_bytes` agrees;
- the output is the same for every split of the input into 2 pieces and into 3 pieces
  (and for 1-byte pieces);
- without deny paths, or with paths that match nothing, the output is the input, byte
  for byte.

Malformed inputs (mutated documents, and sequences of JSON-ish fragments): the walker
raises :class:`JsonRedactError` exactly when orjson refuses the input (numbers beyond a
double's range aside, which the walker passes through), whatever the split; when it
does not raise, its output parses.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from li_httpd.workers.json_redact import (
    JsonRedactError,
    JsonStreamRedactor,
    compile_paths,
    redact_json_bytes,
    redact_value,
)

FAST = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
keys = st.one_of(st.sampled_from(["a", "b", "secret", "x_y", "pass-word", "é", "a b"]),
                 st.text(max_size=4))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(keys, inner, max_size=4)),
    max_leaves=25)


def spell(value: Any, style: int) -> bytes:
    if style == 0:
        return orjson.dumps(value)
    if style == 1:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2)
    return json.dumps(value, ensure_ascii=True, indent=" \t" if style == 3 else None,
                      separators=(" ,", ": ") if style == 2 else None).encode()


def concrete_paths(value: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """The path stacks of every value below ``value``."""
    out = []
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else ()
    for key, item in items:
        out.append((*prefix, key))
        out.extend(concrete_paths(item, (*prefix, key)))
    return out


@st.composite
def deny_path_for(draw: st.DrawFn, stack: tuple[str | int, ...]) -> str:
    """A deny path that matches ``stack``, generalized at random."""
    text, after_member = "$", False
    descend_ok = True
    for position, key in enumerate(stack):
        if isinstance(key, int) or not NAME.fullmatch(key):
            if after_member and draw(st.booleans()):
                text, after_member = text + "[*]", False
            else:
                text, after_member = text + ".*", True
            continue
        choice = draw(st.sampled_from(["name", "star", "descend"]))
        if choice == "descend" and descend_ok and draw(st.booleans()):
            text += f"..{key}"
        elif choice == "star":
            text += ".*"
        else:
            text += f".{key}"
        after_member = True
        descend_ok = position + 1 < len(stack)
    return text


@st.composite
def case(draw: st.DrawFn, max_leaves: int = 25) -> tuple[bytes, list[str]]:
    value = draw(documents)
    body = spell(value, draw(st.integers(0, 3)))
    stacks = [s for s in concrete_paths(value) if s]
    paths: list[str] = []
    if stacks:
        for stack in draw(st.lists(st.sampled_from(stacks), max_size=3)):
            paths.append(draw(deny_path_for(stack)))
        names = sorted({k for s in stacks for k in s if isinstance(k, str) and NAME.fullmatch(k)})
        if names and draw(st.booleans()):
            paths.append(f"$..{draw(st.sampled_from(names))}")
    return body, paths


def run(body: bytes, paths: list[str],
        pieces: list[bytes] | None = None) -> tuple[bytes, list[str]]:
    redactor = JsonStreamRedactor(compile_paths(paths))
    out = [redactor.feed(piece) for piece in (pieces if pieces is not None else [body])]
    out.append(redactor.finish())
    return b"".join(out), redactor.hits


@FAST
@given(case())
def test_stream_equals_redact_value(args: tuple[bytes, list[str]]) -> None:
    body, paths = args
    out, hits = run(body, paths)
    expected, expected_hits = redact_value(orjson.loads(body), compile_paths(paths))
    assert orjson.loads(out) == expected
    assert hits == expected_hits
    whole = redact_json_bytes(body, compile_paths(paths))
    assert whole is not None
    assert orjson.loads(whole[0]) == expected
    assert whole[1] == hits


@FAST
@given(case())
def test_every_split_in_two_and_one_byte_pieces(args: tuple[bytes, list[str]]) -> None:
    body, paths = args
    whole = run(body, paths)
    for cut in range(len(body) + 1):
        assert run(body, paths, [body[:cut], body[cut:]]) == whole
    assert run(body, paths, [body[i:i + 1] for i in range(len(body))]) == whole


@FAST
@given(case().filter(lambda args: len(args[0]) <= 120))
def test_every_split_in_three(args: tuple[bytes, list[str]]) -> None:
    body, paths = args
    whole = run(body, paths)
    for first in range(len(body) + 1):
        for second in range(first, len(body) + 1):
            pieces = [body[:first], body[first:second], body[second:]]
            assert run(body, paths, pieces) == whole


@FAST
@given(documents, st.integers(0, 3), st.lists(st.sampled_from(
    ["$.zz", "$..zz", "$.a.zz", "$.*.zz", "$..a[*].zz"]), max_size=3), st.integers(1, 9))
def test_no_match_is_byte_identical(value: Any, style: int, paths: list[str],
                                    size: int) -> None:
    body = spell(value, style)
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    assert run(body, paths, pieces) == (body, [])


# -- malformed input ----------------------------------------------------------------------

_FRAGMENTS = [b"{", b"}", b"[", b"]", b",", b":", b" ", b"\n", b'"a"', b'"', b"\\", b"u",
              b'"\\ud83d\\ude00"', b'"\\ud800"', b"\\udc00", b"1", b"-", b"0", b".5", b"e3",
              b"true", b"tru", b"null", b"\x00", b"\xff", b"\xc3\xa9", b"\xc3", b"\\n",
              b'"a":', b'"secret"', b"x"]
fragments = st.lists(st.sampled_from(_FRAGMENTS), max_size=24).map(b"".join)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    body = spell(draw(documents), draw(st.integers(0, 3)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(["delete", "insert", "replace"]))
        byte = draw(st.sampled_from(_FRAGMENTS))
        if action == "delete":
            body = body[:at] + body[at + 1:]
        elif action == "insert":
            body = body[:at] + byte + body[at:]
        else:
            body = body[:at] + byte + body[at + 1:]
    return body


def orjson_accepts(body: bytes) -> bool | None:
    """Whether orjson reads ``body``; None for a number beyond a double's range (valid
    JSON the walker passes through)."""
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return None if "infinity" in str(exc) else False
    return True


def outcome(body: bytes, paths: list[str], pieces: list[bytes]) -> bytes | None:
    try:
        return run(body, paths, pieces)[0]
    except JsonRedactError:
        return None


@FAST
@given(st.one_of(mutated(), fragments), st.sampled_from([[], ["$..secret", "$.a"]]),
       st.data())
def test_malformed_input_raises_whatever_the_split(body: bytes, paths: list[str],
                                                   data: st.DataObject) -> None:
    accepted = orjson_accepts(body)
    whole = outcome(body, paths, [body])
    if accepted is not None:
        assert (whole is not None) == accepted
    if whole is not None:  # the output parses (a number beyond a double: Python's parser)
        if accepted:
            orjson.loads(whole)
        else:
            json.loads(whole)
    cut = data.draw(st.integers(0, len(body)))
    assert outcome(body, paths, [body[:cut], body[cut:]]) == whole
    assert outcome(body, paths, [body[i:i + 1] for i in range(len(body))]) == whole
