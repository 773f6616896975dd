"""JSON deny paths of the leak censor: values at configured paths replaced by
``"[REDACTED]"`` (pure: no I/O, no trio).

Theory of operation.

*Paths.* A deny path (``route.leak_censor.json_deny_paths``, syntax checked by
:data:`li_httpd.config.checks.JSON_PATH_RE`) is ``$`` then steps: ``.name`` (the member
``name`` of an object), ``.*`` or ``[*]`` (any member of an object or element of an
array, as in RFC 9535, where both spell the wildcard selector) and ``..name`` (the member
``name`` of this value or of any value below it). :func:`compile_paths` turns the paths
into one deterministic automaton over the *path stack* (object keys and array indices
from the root to a value): each state knows, for the next key or index, the next state,
whether some path now names that value (``hit``: the first such path in configured
order) and whether any path can still match below (``live``). Keys are compared decoded
(``"api\\u005fkey"`` is ``api_key``); the transitions only distinguish the names that
occur in the paths, "another key" and "an array element", so the automaton is small and
built once, when the paths are compiled (:func:`compile_paths` is cached).

*Redaction.* A value whose path is hit is replaced, whatever its type, by the string
``"[REDACTED]"`` and nothing below it is looked at (``$.a`` and ``$.a.b`` both
configured: ``$.a`` is replaced, ``$.a.b`` never hits). The hits are one deny path
string per replaced value (the first matching one in configured order), never the
value. The root value itself is never replaced (every path has a step).

:func:`redact_value` works on a parsed value, :func:`redact_json_bytes` on a whole body
(orjson in, orjson out; the original bytes when nothing matched).
:class:`JsonStreamRedactor` does the same to a body fed piece by piece, for bodies too
large to hold and for chunked JSON: it tokenizes with regular expressions (a string,
however long, or a run of bytes inside one, is matched in C), keeps a stack of open
containers with their automaton states, copies untouched bytes through exactly
(whitespace, escapes and number spelling kept) and, at a hit, writes ``"[REDACTED]"``
and drops the value's bytes as they arrive. It holds the path stack (at most
``max_depth`` containers), the key being read (at most ``max_token`` bytes, only where a
path could still match), a number or literal being read (at most ``max_token`` bytes)
and at most five bytes of a cut escape sequence: never the document. It validates as it
goes (RFC 8259 grammar, UTF-8, no control characters or lone surrogate escapes in
strings, one value then only whitespace) and raises :class:`JsonRedactError` on the
first fault; output already returned is then a prefix of a document the caller must not
complete (a relay aborts the response). It accepts what orjson accepts (nested up to
``max_depth``), except that it passes numbers beyond a double's range (``1e400``)
through unchanged. A key given twice in one object is redacted at each occurrence (a
parser keeps one of them; both are replaced), so its hits may outnumber those of
:func:`redact_value` on the parsed document.

Cost (CPU time, 2-core dev box, ``python -m li_httpd.ops.bench.json_redact_micro``): one
regex call per token, one per ``"key": scalar,`` member of an object where keys matter,
one per run of such members or of scalar elements elsewhere; about 27-30 MB/s on an
API-like 1 MiB body when keys are tracked throughout (with or without hits), about 40
MB/s with no paths or when the replaced value is most of the body. The worst case is
input made only of tiny tokens (``[{},{},...]``: about 1.7 MB/s) or fed a byte at a time
(about 0.6 MB/s): a caller bounds the CPU an upstream can cost by the body size it lets
through this path.
"""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import orjson
from li_httpd.config.checks import JSON_PATH_RE

REDACTED: Final = "[REDACTED]"
"""What a value at a deny path becomes."""
_REDACTED_JSON = b'"[REDACTED]"'
MAX_TOKEN = 64 * 1024
"""Default cap on a key, number or literal the stream redactor buffers."""
MAX_DEPTH = 128
"""Default cap on the nesting depth the stream redactor follows."""


class JsonRedactError(ValueError):
    """The JSON fed to the redactor is malformed, nested too deep or has a token over the
    cap. The message says what and at which byte offset of the stream."""


# -- paths ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a deny path."""

    name: str | None
    """The member name; None for the wildcard (any member or element)."""
    descendant: bool = False
    """``..name``: at this level or any deeper one."""


_STEP = re.compile(r"(\.\.|\.)([^.\[]+)|\[\*\]")


def parse_path(path: str) -> tuple[Step, ...]:
    """The steps of one deny path; ValueError if it is not in the supported syntax."""
    if not JSON_PATH_RE.fullmatch(path):
        raise ValueError(f"{path!r} is not a supported JSON path")
    steps = []
    for match in _STEP.finditer(path, 1):
        dots, name = match.groups()
        if dots is None or name == "*":
            steps.append(Step(None))
        else:
            steps.append(Step(name, descendant=dots == ".."))
    return tuple(steps)


@dataclass(frozen=True, slots=True)
class DenyPaths:
    """Compiled deny paths: an automaton over path stacks (see the module docstring).
    State 0 is the root value's; :attr:`dead` is the state under which nothing can hit.
    Compares and hashes by :attr:`paths`."""

    paths: tuple[str, ...]
    names: tuple[Mapping[bytes, int], ...] = field(compare=False, repr=False)
    """Per state: the next state for a key named by some path (UTF-8 bytes)."""
    other: tuple[int, ...] = field(compare=False, repr=False)
    """Per state: the next state for any other key."""
    element: tuple[int, ...] = field(compare=False, repr=False)
    """Per state: the next state for an array element."""
    hit: tuple[int, ...] = field(compare=False, repr=False)
    """Per state: index in :attr:`paths` of the path that names this value, or -1."""
    live: tuple[bool, ...] = field(compare=False, repr=False)
    """Per state: whether some path can still hit at or below this value."""
    dead: int = field(compare=False, repr=False)

    def child(self, state: int, key: str | int) -> int:
        """The state of member ``key`` (a str) or element ``key`` (an int)."""
        if isinstance(key, int):
            return self.element[state]
        return self.names[state].get(key.encode(), self.other[state])


_Nfa = frozenset[tuple[int, int]]
"""A set of (path index, steps matched)."""


def _step(steps: tuple[tuple[Step, ...], ...], states: _Nfa,
          key: str | None, is_key: bool) -> _Nfa:
    out = set()
    for path, done in states:
        if done == len(steps[path]):
            continue
        step = steps[path][done]
        if step.descendant:
            out.add((path, done))
        if step.name is None or (is_key and step.name == key):
            out.add((path, done + 1))
    return frozenset(out)


@functools.lru_cache(maxsize=256)
def _compile(paths: tuple[str, ...]) -> DenyPaths:
    steps = tuple(parse_path(path) for path in paths)
    known = sorted({s.name for path in steps for s in path if s.name is not None})
    ids: dict[_Nfa, int] = {}
    order: list[_Nfa] = []

    def state_of(nfa: _Nfa) -> int:
        if nfa not in ids:
            ids[nfa] = len(order)
            order.append(nfa)
        return ids[nfa]

    state_of(frozenset((path, 0) for path in range(len(steps))))
    dead = state_of(frozenset())
    names: list[Mapping[bytes, int]] = []
    other: list[int] = []
    element: list[int] = []
    hit: list[int] = []
    live: list[bool] = []
    index = 0
    while index < len(order):
        nfa = order[index]
        index += 1
        accepted = [path for path, done in nfa if done == len(steps[path])]
        hit.append(min(accepted) if accepted else -1)
        pending = frozenset(item for item in nfa if item[0] not in accepted)
        live.append(bool(pending) and not accepted)
        if accepted or not pending:  # replaced whole, or nothing below can hit
            names.append({})
            other.append(dead)
            element.append(dead)
            continue
        names.append({name.encode(): state_of(_step(steps, pending, name, True))
                      for name in known})
        other.append(state_of(_step(steps, pending, None, True)))
        element.append(state_of(_step(steps, pending, None, False)))
    return DenyPaths(paths, tuple(names), tuple(other), tuple(element), tuple(hit),
                     tuple(live), dead)


def compile_paths(paths: Iterable[str]) -> DenyPaths:
    """Compile deny paths (cached per tuple of paths). ValueError on a path outside the
    supported syntax (config validation refuses those first)."""
    return _compile(tuple(paths))


# -- whole documents ----------------------------------------------------------------------


def redact_value(value: Any, deny: DenyPaths, *,
                 max_depth: int = MAX_DEPTH) -> tuple[Any, list[str]]:
    """``value`` (as parsed from JSON: dict, list, str, int, float, bool, None) with the
    values at deny paths replaced by :data:`REDACTED`, and the hits (one deny path per
    replaced value). ``value`` is not modified; the result shares the parts of it no path
    can reach. Raises :class:`JsonRedactError` when it has to follow a path deeper than
    ``max_depth`` containers."""
    hits: list[str] = []
    if not deny.live[0]:
        return value, hits
    return _redact(value, deny, 0, hits, max_depth), hits


def _redact(value: Any, deny: DenyPaths, state: int, hits: list[str], depth: int) -> Any:
    if isinstance(value, dict):
        if depth <= 0:
            raise JsonRedactError("JSON nested too deep")
        names, other = deny.names[state], deny.other[state]
        out = {}
        for key, item in value.items():
            child = names.get(key.encode(), other)
            out[key] = _child(item, deny, child, hits, depth)
        return out
    if isinstance(value, list):
        if depth <= 0:
            raise JsonRedactError("JSON nested too deep")
        child = deny.element[state]
        return [_child(item, deny, child, hits, depth) for item in value]
    return value


def _child(item: Any, deny: DenyPaths, state: int, hits: list[str], depth: int) -> Any:
    found = deny.hit[state]
    if found >= 0:
        hits.append(deny.paths[found])
        return REDACTED
    if deny.live[state]:
        return _redact(item, deny, state, hits, depth - 1)
    return item


def redact_json_bytes(body: bytes, deny: DenyPaths) -> tuple[bytes, list[str]] | None:
    """A whole JSON body redacted: None when ``body`` is not JSON (orjson's reading);
    else the new body and the hits. Nothing matched: ``body`` itself, byte for byte.
    Something matched: ``orjson.dumps`` of the redacted document (compact; numbers
    re-spelt as orjson reads them, e.g. an integer beyond 64 bits becomes a float).
    Raises :class:`JsonRedactError` as :func:`redact_value` does (a path followed
    deeper than :data:`MAX_DEPTH`)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    redacted, hits = redact_value(document, deny)
    if not hits:
        return body, hits
    return orjson.dumps(redacted), hits


# -- streaming ------------------------------------------------------------------------------

_WS = rb"[ \t\n\r]*+"
_CHARS = (rb'(?:[^"\\\x00-\x1f]++|\\["\\/bfnrt]|\\u(?![dD][89a-fA-F])[0-9a-fA-F]{4}'
          rb"|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2})*+")
"""Characters of a string: any but quote, backslash and controls; escapes, surrogate
escapes only as a high-low pair (others, and an escape cut by the end of the data, take
the checked slow path)."""
_STR = rb'"' + _CHARS + rb'"'
"""A whole string."""


class _Patterns(NamedTuple):
    next: re.Pattern[bytes]
    """Whitespace then, when it is whole in the data, one token (groups 1 to 6)."""
    member: re.Pattern[bytes]
    """One ``"key": scalar,`` member (the key and the value as groups 1 and 2)."""
    members: re.Pattern[bytes]
    """A run of ``"key": scalar,`` members, for objects where no key matters."""
    elements: re.Pattern[bytes]
    """A run of ``scalar,`` elements, for arrays whose elements are not replaced."""


@functools.lru_cache(maxsize=8)
def _patterns(max_token: int) -> _Patterns:
    """The token patterns for numbers up to ``max_token`` bytes (a longer one takes the
    slow path, which refuses it: the same outcome wherever the pieces are cut)."""
    scalar = (rb"(?=[-+.0-9eE]{1,%d}+(?![-+.0-9eE]))" % max_token
              + rb"-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?(?:[eE][+-]?[0-9]++)?|true|false|null")
    value = rb"(?:" + _STR + rb"|" + scalar + rb")"
    return _Patterns(
        next=re.compile(_WS + rb"(?:([{\[])|([}\]])|(,)|(:)|(" + _STR + rb")"
                        # a number or literal, seen to end before the data does
                        + rb"|(" + scalar + rb")(?=[ \t\n\r,\]}])" + rb")?"),
        member=re.compile(_WS + rb"(" + _STR + rb")" + _WS + rb":" + _WS + rb"(" + value
                          + rb")" + _WS + rb","),
        members=re.compile(rb"(?:" + _WS + _STR + _WS + rb":" + _WS + value + _WS
                           + rb",)*+"),
        elements=re.compile(rb"(?:" + _WS + value + _WS + rb",)*+"))


_OPEN, _CLOSE, _COMMA, _COLON, _STRING, _SCALAR = 1, 2, 3, 4, 5, 6
_STRING_START, _SCALAR_START = 7, 8
_STRING_RUN = re.compile(_CHARS)
_SCALAR_RUN = re.compile(rb'[-+.0-9A-Za-z]*+')


def _run(pattern: re.Pattern[bytes], data: bytes, pos: int) -> int:
    """The end of ``pattern``'s match (a run that may be empty) at ``pos``."""
    match = pattern.match(data, pos)
    assert match is not None
    return match.end()


_SCALAR_WHOLE = re.compile(
    rb'-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?(?:[eE][+-]?[0-9]++)?|true|false|null')
_SIMPLE_ESCAPES = frozenset(b'"\\/bfnrt')
_HEX = re.compile(rb"[0-9a-fA-F]{4}")

# What the grammar expects next.
_TOP, _OBJ_VALUE, _ARR_VALUE, _ARR_FIRST, _KEY, _KEY_FIRST, _COLON_NEXT, _AFTER, _DONE = \
    range(9)
_KEY_POSITIONS = (_KEY, _KEY_FIRST)
_ARRAY_POSITIONS = (_ARR_VALUE, _ARR_FIRST)
_EXPECTED = {_TOP: "a value", _OBJ_VALUE: "a value", _ARR_VALUE: "a value",
             _ARR_FIRST: "a value or ']'", _KEY: "a key", _KEY_FIRST: "a key or '}'",
             _COLON_NEXT: "':'", _AFTER: "',' or the container's end",
             _DONE: "the end of the data"}
# Lexical modes between feeds.
_LEX_NONE, _LEX_STRING, _LEX_SCALAR = 0, 1, 2


class JsonStreamRedactor:
    """Deny-path redaction of one JSON document fed piece by piece; see the module
    docstring. :meth:`feed` returns the output for what it was given, :meth:`finish`
    checks the document is complete; both raise :class:`JsonRedactError` on malformed
    JSON, and every call after that raises it again. :attr:`hits` lists one deny path
    per replaced value."""

    __slots__ = ("_child_state", "_collect", "_deny", "_error", "_expect", "_high", "_is_key",
                 "_key", "_lex", "_max_depth", "_max_token", "_offset", "_patterns",
                 "_pending", "_scalar", "_skip_base", "_stack", "_utf8", "hits")

    def __init__(self, deny: DenyPaths, *, max_depth: int = MAX_DEPTH,
                 max_token: int = MAX_TOKEN) -> None:
        self._deny = deny
        self._max_depth = max_depth
        self._max_token = max_token
        self._patterns = _patterns(max_token)
        self.hits: list[str] = []
        self._stack: list[int] = []
        """Open containers: automaton state << 1 | 1 for an object, 0 for an array."""
        self._expect = _TOP
        self._child_state = 0
        """The state of the object value whose key was read last."""
        self._skip_base = -1
        """While dropping a replaced value: the stack depth it started at; else -1."""
        self._lex = _LEX_NONE
        self._is_key = False
        self._collect = False
        self._key = bytearray()
        self._scalar = bytearray()
        self._high = False
        """A high surrogate escape was read; the next thing must be a low one."""
        self._pending = b""
        """The start of an escape sequence cut by the end of the last piece (not yet
        returned)."""
        self._offset = 0
        """Stream offset of the current piece's first byte (for messages)."""
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._error: JsonRedactError | None = None

    def feed(self, data: bytes) -> bytes:
        """The redacted output for ``data``, the next bytes of the document: every byte
        up to the end of ``data`` except a cut escape sequence (at most five bytes, held
        for the next piece)."""
        if self._error is not None:
            raise self._error
        try:
            return self._feed(data)
        except JsonRedactError as exc:
            self._error = exc
            raise

    def finish(self) -> bytes:
        """Check the document ended; returns the last output (always empty: every byte
        was returned by :meth:`feed`)."""
        if self._error is not None:
            raise self._error
        try:
            self._finish()
        except JsonRedactError as exc:
            self._error = exc
            raise
        return b""

    def _fail(self, message: str, at: int) -> JsonRedactError:
        return JsonRedactError(f"{message} at byte {self._offset + at}")

    def _finish(self) -> None:
        end = len(self._pending)
        try:
            self._utf8.decode(b"", True)
        except UnicodeDecodeError as exc:
            raise self._fail("truncated UTF-8 sequence", 0) from exc
        if self._lex == _LEX_STRING or self._pending:
            raise self._fail("unterminated string", end)
        if self._lex == _LEX_SCALAR:
            if not _SCALAR_WHOLE.fullmatch(self._scalar):
                raise self._fail(f"invalid number or literal {bytes(self._scalar[:40])!r}",
                                 end)
            self._lex = _LEX_NONE
            if not self._stack:
                self._expect = _DONE
        if self._expect != _DONE:
            raise self._fail(f"unexpected end of data, expected {_EXPECTED[self._expect]}",
                             end)

    def _feed(self, data: bytes) -> bytes:
        try:
            self._utf8.decode(data)
        except UnicodeDecodeError as exc:
            raise self._fail(f"invalid UTF-8 ({exc.reason})", exc.start) from exc
        if self._pending:
            self._offset -= len(self._pending)
            data = self._pending + data
            self._pending = b""
        deny = self._deny
        hit_of, live_of, element_of = deny.hit, deny.live, deny.element
        dead = deny.dead
        patterns = self._patterns
        next_token, member_at = patterns.next.match, patterns.member.match
        members_at, elements_at = patterns.members, patterns.elements
        max_token = self._max_token
        stack = self._stack
        expect = self._expect
        skip_base = self._skip_base
        out: list[bytes] = []
        copy_from = 0
        end = len(data)
        pos = 0
        while True:
            lex = self._lex
            start = pos
            if lex == _LEX_NONE:
                # Runs of scalar members and elements first, in one regex call where no
                # key matters, one call per member where keys do.
                if expect in _KEY_POSITIONS:
                    state = stack[-1] >> 1
                    if skip_base >= 0 or not live_of[state]:
                        run = _run(members_at, data, pos)
                        if run > pos:
                            pos = run
                            expect = _KEY
                    else:
                        names, other = deny.names[state], deny.other[state]
                        member = member_at(data, pos)
                        while member is not None:
                            raw = member.group(1)[1:-1]
                            if len(raw) > max_token:
                                raise self._fail(f"key longer than {max_token} bytes",
                                                 member.start(1))
                            if b"\\" in raw:
                                raw = orjson.loads(member.group(1)).encode()
                            child = names.get(raw, other)
                            if hit_of[child] >= 0:
                                out.append(data[copy_from:member.start(2)])
                                out.append(_REDACTED_JSON)
                                self.hits.append(deny.paths[hit_of[child]])
                                copy_from = member.end(2)
                            pos = member.end()
                            expect = _KEY
                            member = member_at(data, pos)
                elif expect in _ARRAY_POSITIONS and (
                        skip_base >= 0 or hit_of[element_of[stack[-1] >> 1]] < 0):
                    run = _run(elements_at, data, pos)
                    if run > pos:
                        pos = run
                        expect = _ARR_VALUE
                match = next_token(data, pos)
                assert match is not None  # every part of the pattern is optional
                kind = match.lastindex
                if kind is None:
                    pos = match.end()
                    if pos == end:
                        break
                    start = pos
                    byte = data[pos]
                    if byte == 0x22:
                        kind = _STRING_START
                    elif _run(_SCALAR_RUN, data, pos) > pos:
                        kind = _SCALAR_START
                    else:
                        raise self._fail(f"unexpected byte {bytes([byte])!r}, expected "
                                         f"{_EXPECTED[expect]}", pos)
                else:
                    start = match.start(kind)
                    pos = match.end()
            elif lex == _LEX_STRING:
                pos = self._string(data, pos)
                if pos < 0:
                    break
                self._lex = _LEX_NONE
                if not self._is_key:
                    kind = 0  # a value ended
                else:
                    if self._collect:
                        expect = self._key_read(bytes(self._key), stack, start)
                    else:
                        self._child_state = dead
                    expect = _COLON_NEXT
                    continue
            else:
                pos = self._scalar_more(data, pos)
                if pos < 0:
                    break
                self._lex = _LEX_NONE
                kind = 0

            if kind == _COMMA:
                if expect != _AFTER or not stack:
                    raise self._fail(f"unexpected ',', expected {_EXPECTED[expect]}", start)
                expect = _KEY if stack[-1] & 1 else _ARR_VALUE
                continue
            if kind == _COLON:
                if expect != _COLON_NEXT:
                    raise self._fail(f"unexpected ':', expected {_EXPECTED[expect]}", start)
                expect = _OBJ_VALUE
                continue
            if kind == _CLOSE:
                is_object = data[start] == 0x7D
                if not stack or (stack[-1] & 1) != is_object \
                        or expect not in (_AFTER, _KEY_FIRST if is_object else _ARR_FIRST):
                    raise self._fail(f"unexpected {data[start:start + 1]!r}, expected "
                                     f"{_EXPECTED[expect]}", start)
                stack.pop()
            elif kind and expect in _KEY_POSITIONS:
                if kind == _STRING:
                    if live_of[stack[-1] >> 1] and skip_base < 0:
                        self._key_read(data[start + 1:pos - 1], stack, start)
                    else:
                        self._child_state = dead
                    expect = _COLON_NEXT
                    continue
                if kind == _STRING_START:
                    self._is_key = True
                    self._collect = live_of[stack[-1] >> 1] and skip_base < 0
                    self._key.clear()
                    self._lex = _LEX_STRING
                    pos = start + 1
                    continue
                raise self._fail(f"unexpected token, expected {_EXPECTED[expect]}", start)
            elif kind:
                # A value starts at ``start``.
                if expect == _OBJ_VALUE:
                    child = self._child_state
                elif expect in _ARRAY_POSITIONS:
                    child = element_of[stack[-1] >> 1]
                elif expect == _TOP:
                    child = 0
                else:
                    raise self._fail(f"unexpected token, expected {_EXPECTED[expect]}",
                                     start)
                if skip_base < 0 and hit_of[child] >= 0:
                    out.append(data[copy_from:start])
                    out.append(_REDACTED_JSON)
                    self.hits.append(deny.paths[hit_of[child]])
                    skip_base = len(stack)
                    child = dead
                if kind == _OPEN:
                    if len(stack) >= self._max_depth:
                        raise self._fail(f"JSON nested deeper than {self._max_depth}", start)
                    if data[start] == 0x7B:
                        stack.append(child << 1 | 1)
                        expect = _KEY_FIRST
                    else:
                        stack.append(child << 1)
                        expect = _ARR_FIRST
                    continue
                if kind == _STRING_START:
                    self._is_key = False
                    self._collect = False
                    self._lex = _LEX_STRING
                    pos = start + 1
                    continue
                if kind == _SCALAR_START:
                    self._scalar.clear()
                    self._lex = _LEX_SCALAR
                    pos = start
                    continue
            # A value ended at ``pos``.
            if len(stack) == skip_base:
                skip_base = -1
                copy_from = pos
            expect = _AFTER if stack else _DONE
        self._expect = expect
        self._skip_base = skip_base
        hold = len(self._pending)
        if skip_base < 0:
            out.append(data[copy_from:end - hold])
        self._offset += end
        return b"".join(out)

    def _key_read(self, raw: bytes, stack: list[int], start: int) -> int:
        """Sets the state of the value whose key ``raw`` (between the quotes) was read."""
        if len(raw) > self._max_token:
            raise self._fail(f"key longer than {self._max_token} bytes", start)
        if b"\\" in raw:
            try:
                raw = orjson.loads(b'"' + raw + b'"').encode()
            except (orjson.JSONDecodeError, UnicodeEncodeError) as exc:
                raise self._fail("invalid key", start) from exc
        state = stack[-1] >> 1
        self._child_state = self._deny.names[state].get(raw, self._deny.other[state])
        return _COLON_NEXT

    def _string(self, data: bytes, pos: int) -> int:
        """Continue a string from ``pos``: the offset after its closing quote, or -1 when
        ``data`` ends first (a cut escape sequence is kept in ``_pending``)."""
        end = len(data)
        collect = self._collect
        while True:
            if not self._high:
                run = _run(_STRING_RUN, data, pos)
            elif pos < end and data[pos] != 0x5C:
                raise self._fail("lone high surrogate escape in string", pos)
            else:
                run = pos  # the low surrogate escape must come first
            if collect and run > pos:
                self._key += data[pos:run]
                if len(self._key) > self._max_token:
                    raise self._fail(f"key longer than {self._max_token} bytes", pos)
            pos = run
            if pos == end:
                return -1
            byte = data[pos]
            if byte == 0x22:
                return pos + 1
            if byte != 0x5C:
                raise self._fail(f"control character {bytes([byte])!r} in string", pos)
            if pos + 1 >= end:
                self._pending = data[pos:]
                return -1
            escape = data[pos + 1]
            if escape == 0x75:  # u
                if pos + 6 > end:
                    if not _HEX.match(data[pos + 2:] + b"0000"):
                        raise self._fail("invalid \\u escape", pos)
                    self._pending = data[pos:]
                    return -1
                digits = data[pos + 2:pos + 6]
                if not _HEX.fullmatch(digits):
                    raise self._fail("invalid \\u escape", pos)
                code = int(digits, 16)
                if self._high:
                    if not 0xDC00 <= code <= 0xDFFF:
                        raise self._fail("lone high surrogate escape in string", pos)
                    self._high = False
                elif 0xD800 <= code <= 0xDBFF:
                    self._high = True
                elif 0xDC00 <= code <= 0xDFFF:
                    raise self._fail("lone low surrogate escape in string", pos)
                size = 6
            elif escape in _SIMPLE_ESCAPES and not self._high:
                size = 2
            elif self._high:
                raise self._fail("lone high surrogate escape in string", pos)
            else:
                raise self._fail(f"invalid escape {data[pos:pos + 2]!r}", pos)
            if collect:
                self._key += data[pos:pos + size]
            pos += size

    def _scalar_more(self, data: bytes, pos: int) -> int:
        """Continue a number or literal: the offset after it, or -1 when ``data`` ends
        first."""
        run = _run(_SCALAR_RUN, data, pos)
        self._scalar += data[pos:run]
        if len(self._scalar) > self._max_token:
            raise self._fail(f"number or literal longer than {self._max_token} bytes", pos)
        if run == len(data):
            return -1
        if not _SCALAR_WHOLE.fullmatch(self._scalar):
            raise self._fail(f"invalid number or literal {bytes(self._scalar[:40])!r}", run)
        return run


__all__ = ["MAX_DEPTH", "MAX_TOKEN", "REDACTED", "DenyPaths", "JsonRedactError",
           "JsonStreamRedactor", "Step", "compile_paths", "parse_path", "redact_json_bytes",
           "redact_value"]
