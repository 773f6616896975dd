"""Top-level fields of a JSON request body, read without parsing the whole document (pure).

A gateway reads a few fields of the request body (``model``, ``stream``) and must forward
the body's exact bytes, so it does not decode and re-encode it. :func:`top_level` tokenizes
the body with one regular expression (a string, however long, is one token matched in C),
tracks the nesting depth and returns the raw values of the wanted keys of the outermost
object only: a ``"model"`` inside ``messages`` or a tool schema is not the request's
model. It works on a body's first bytes too (what arrived so far): a field not yet seen
is simply absent.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Collection

import orjson

_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[{}\[\]:,]|[^"{}\[\]:,\s]++')
"""A string (escapes included), a structural character, or a bare scalar
(number, true, false, null)."""

_OPEN = frozenset(b"{[")
_CLOSE = frozenset(b"}]")
JsonScalar = str | int | float | bool | None
PARSE_WHOLE = 64 * 1024
"""How much of a body the usage scanner keeps to parse whole. (A complete request body is
always parsed whole here: orjson reads a MiB in about 3 ms, the tokenizer's Python loop
would take about half a second on hostile input.)"""
_BOM = b"\xef\xbb\xbf"


def top_level(data: bytes, names: Collection[bytes], *,
              complete: bool = False) -> dict[bytes, JsonScalar]:
    """The scalar values of the keys ``names`` (raw key bytes, without quotes) in the
    top-level JSON object that ``data`` starts with. A key whose value is an object or
    array, or whose scalar is not valid JSON, is left out. The scan stops at the first
    byte that starts no token (e.g. a string cut off by the end of ``data``): what
    follows it would be read out of context. Data that is not a JSON object gives
    ``{}``. A key given twice takes its last value, as JSON parsers do (the upstream's
    included), so the gateway never routes or prices by a value the upstream does not
    use. ``complete``: ``data`` is the whole body, parsed whole (a leading UTF-8 BOM is
    skipped, as Python's parser does); it gives ``{}`` when it is not valid JSON (callers
    that must know the model refuse such a body). Without ``complete`` the tokenizer
    reads raw key bytes (a key spelt with escapes, ``"mod\\u0065l"``, is not seen) in the
    first :data:`PARSE_WHOLE` bytes only."""
    if complete:
        return _parsed(data, names)
    # The tokenizer runs in Python (~0.5 s per MiB of hostile input): bounded to what a
    # streamed body's first read holds, so no body can stall the worker for long.
    data = data[:PARSE_WHOLE]
    found: dict[bytes, JsonScalar] = {}
    depth = 0
    key: bytes | None = None   # the top-level key whose value comes next
    expect_key = False         # at depth 1, the next string is a key
    after_key = False          # at depth 1, a key was read; ':' then its value follow
    end = 0
    for match in _TOKEN.finditer(data):
        if match.start() != end and data[end:match.start()].strip():
            return found
        end = match.end()
        token = match.group()
        first = token[0]
        if depth == 0:
            if first != 0x7B:  # '{'
                return found
            depth = 1
            expect_key = True
            continue
        if first in _OPEN:
            depth += 1
            key = None
            continue
        if first in _CLOSE:
            depth -= 1
            if depth == 0:
                return found
            continue
        if depth != 1:
            continue
        if first == 0x2C:  # ','
            expect_key = True
            continue
        if first == 0x3A:  # ':'
            after_key = False
            continue
        if expect_key:
            expect_key = False
            after_key = True
            name = token[1:-1] if first == 0x22 else b""
            key = name if name in names else None
            continue
        if after_key or key is None:
            continue
        if first != 0x22 and end == len(data):
            return found  # a number or literal the end of ``data`` may have cut short
        with contextlib.suppress(orjson.JSONDecodeError):
            found[key] = orjson.loads(token)
        key = None
    return found


def _parsed(data: bytes, names: Collection[bytes]) -> dict[bytes, JsonScalar]:
    try:
        doc = orjson.loads(data[3:] if data.startswith(_BOM) else data)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(doc, dict):
        return {}
    found: dict[bytes, JsonScalar] = {}
    for name in names:
        value = doc.get(name.decode("latin-1"), found)  # ``found``: absent
        if value is not found and not isinstance(value, dict | list):
            found[name] = value
    return found


_INCLUDE_USAGE = b'"stream_options":{"include_usage":true}'


def with_stream_usage(body: bytes) -> bytes:
    """``body`` (a complete JSON object) asking for a usage chunk at the end of its
    stream: ``"stream_options": {"include_usage": true}`` inserted before the closing
    brace, every other byte kept. Unchanged when the body is not a JSON object or already
    has ``stream_options`` (the client chose)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(doc, dict) or "stream_options" in doc:
        return body
    end = body.rstrip().rfind(b"}")
    if end < 0:
        return body
    return body[:end] + (b"," if doc else b"") + _INCLUDE_USAGE + body[end:]


__all__ = ["PARSE_WHOLE", "JsonScalar", "top_level", "with_stream_usage"]
