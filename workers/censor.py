"""Response leak censor: secrets in response bytes and in the text of SSE events (pure).

The detectors are the built-in ones of :mod:`li_httpd.ops.log.detectors` (the same ids
log redaction uses, plus the opt-in ``generic_high_entropy``). Every built-in match
starts with a short literal *trigger* (``sk-``, ``AKIA``, ``eyJ``, ``-----BEGIN `` …), so
a scan first looks for triggers with one case-insensitive literal search and runs a
detector only where one starts, anchored there. What the gateway holds back is only
what could still become a secret: a match that reaches the end of the bytes seen so far
(it may go on), a detector that matches the bytes so far as a prefix (``partial``
matching of the ``regex`` package), or a proper prefix of a trigger at the very end
(``…sk``). Everything before the first such position goes out at once, so a piece with
no partial match adds no delay. The hold is bounded by :data:`MAX_HOLD`: past it the
held text is decided as if the stream ended, and a secret still running (a PEM key with
no END line yet, a very long token) is swallowed as it continues.

:class:`ByteCensor` follows a body as bytes (plain, chunked, JSON): a secret is replaced
by ``[REDACTED:<id>]``, or by a mark of exactly its length when the body's length is
already fixed (``Content-Length``), so framing stays valid either way.

:class:`SseCensor` follows an event stream as whole events. Models stream text a few
characters per event, so a secret is nearly always split across events and is not
visible in any one of them: the censor reads the JSON ``data:`` payload of each event
and joins the string values under delta-text keys (``content``, ``text``,
``partial_json``, ``arguments``, ``delta`` …) into one text *channel* per JSON path (so
``choices[0]`` and ``choices[1]`` are separate texts), and scans each channel as a
stream. An event is held only while one of its channel pieces lies in a channel's
undecided tail; when a secret completes, the pieces that carry it are rewritten (the
first gets the marker, the rest lose their share) and those events are re-serialised;
untouched events go out byte-identical. Other strings in a payload are scanned on their
own, and JSON deny paths (a function from :mod:`.json_redact`) apply to each payload.
Non-JSON payloads form one text channel of their own.

With ``on_detect`` other than ``redact`` the first hit *trips* the censor: nothing more
is released and the caller ends the response (a 502 before the head, else the stream's
error event or an abort).
"""

from __future__ import annotations

import functools
import math
import re
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

import orjson
import regex
from li_httpd.ops.log.detectors import CENSOR_ONLY_PATTERNS, ORDER, PATTERNS

from .json_redact import JsonStreamRedactor, compile_paths, redact_value

OnDetect = Literal["redact", "block_502", "abort_stream"]
OversizeJson = Literal["stream", "block", "pass"]

DenyFn = Callable[[Any], tuple[Any, list[str]]]
"""Applies a route's JSON deny paths to a parsed document: (new value, matched paths)."""

MAX_HOLD = 4096
"""The most undecided bytes held per body or per SSE text channel."""

MAX_CHANNELS = 256
"""Texts followed per stream at once; idle ones are dropped beyond it."""

MAX_PENDING_EVENTS = 64 * 1024
"""The most bytes of whole SSE events held back at once (then everything is decided)."""

ENTROPY_MIN = 4.3
"""Bits per character a ``generic_high_entropy`` candidate needs (random base62 of 32+
characters measures about 4.6-5.0; identifiers and hex digests stay below 4.0)."""

TRIGGERS: dict[str, tuple[bytes, ...]] = {
    "pem_private": (b"-----begin ",),
    "anthropic_key": (b"sk-",),
    "openai_sk": (b"sk-",),
    "aws_access_key": (b"akia", b"asia", b"abia", b"acca", b"aws"),
    "github_token": (b"ghp_", b"gho_", b"ghu_", b"ghs_", b"ghr_", b"github_pat_"),
    "jwt_bearer": (b"eyj", b"bearer"),
    "slack_token": (b"xox", b"xapp-", b"https://hooks.slack"),
    "google_api_key": (b"aiza",),
    "stripe_key": (b"sk_", b"rk_", b"whsec_"),
}
"""Lower-case literals every match of a detector starts with (tests check each sample)."""

MATCH_WINDOW = 2048
"""The most bytes one non-PEM match may span (the longest token formats are far shorter;
a JWT with many claims stays under it)."""

MATCH_WINDOW_PEM = 16384
"""The most bytes a PEM private key match may span (a 4096-bit RSA key is ~3.3 KB)."""

TRIGGER_MAX = max(len(t) for ts in TRIGGERS.values() for t in ts)

HELD_PREFIX = 3
"""The shortest trigger prefix held at the end of the text: ``" a"``, ``" s"`` or
``" be"`` end countless ordinary model tokens, so shorter ones go out at once (a vendor
prefix carries nothing secret) and a secret that completes them is still redacted from
where the unsent text begins."""

CONTEXT = TRIGGER_MAX + 1
"""Bytes of already-sent text kept before the undecided ones: a trigger that began in
them, and the word boundary before it."""

_UNBOUNDED_TRIGGERS = (b"-----begin ",)
"""Triggers whose detector does not start at a word boundary."""

_PEM_END = re.compile(rb"-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_PEM_END_MAX = 70
_TOKEN_RUN = re.compile(rb"[A-Za-z0-9._~+/=-]*")
_RUN_TAIL = re.compile(rb"[A-Za-z0-9+/_=-]{1,202}\Z")

Hit = tuple[int, int, str]
"""``(start, end, detector)`` in the scanned bytes."""

CHANNEL_KEYS = frozenset({"content", "text", "partial_json", "arguments", "thinking",
                          "reasoning_content", "reasoning", "refusal", "delta"})
"""Keys whose string values are streamed text: joined across events per JSON path."""

_SHORTEST = 12
"""No built-in secret is shorter (a short Slack token is about 15 characters)."""


def _marker(kind: str, length: int | None) -> bytes:
    mark = b"[REDACTED:" + kind.encode() + b"]"
    if length is None:
        return mark
    if len(mark) > length:
        mark = b"[REDACTED]"[:length]
    return mark + b"*" * (length - len(mark))


def entropy(data: bytes) -> float:
    """Shannon entropy of ``data`` in bits per byte."""
    counts: dict[int, int] = {}
    for byte in data:
        counts[byte] = counts.get(byte, 0) + 1
    total = len(data)
    return -sum(n / total * math.log2(n / total) for n in counts.values())


RulesSpec = tuple[tuple[str, ...], OnDetect, tuple[str, ...], int, OversizeJson]
"""``(detectors, on_detect, json_deny_paths, max_scrub_bytes, oversize_json)``."""


def _deny_for(paths: tuple[str, ...]) -> DenyFn:
    return functools.partial(redact_value, deny=compile_paths(paths))


@functools.lru_cache(maxsize=64)
def rules_for(spec: RulesSpec) -> Rules:
    """The compiled rules for ``spec`` (one object per distinct spec and process)."""
    return Rules(*spec)


class Rules:
    """A route's censor, compiled: which detectors, what a hit does, its deny paths."""

    __slots__ = ("_full", "_generic", "_tail", "_triggers", "deny", "deny_paths", "detectors",
                 "max_scrub_bytes", "on_detect", "oversize_json", "spec")

    def __init__(self, detectors: tuple[str, ...], on_detect: OnDetect,
                 deny_paths: tuple[str, ...] = (), max_scrub_bytes: int = 1 << 20,
                 oversize_json: OversizeJson = "stream") -> None:
        self.spec: RulesSpec = (detectors, on_detect, deny_paths, max_scrub_bytes,
                                oversize_json)
        """What the rules were built from (picklable: rebuilt in a scrubbing process)."""
        self.detectors = detectors
        self.on_detect = on_detect
        self.deny_paths = compile_paths(deny_paths) if deny_paths else None
        self.deny = _deny_for(deny_paths) if deny_paths else None
        self.max_scrub_bytes = max_scrub_bytes
        self.oversize_json = oversize_json
        self._triggers, self._tail, self._full, self._generic = _compile(
            tuple(d for d in ORDER if d in detectors), "generic_high_entropy" in detectors)

    @property
    def redacts(self) -> bool:
        return self.on_detect == "redact"

    @property
    def triggers_only(self) -> bool:
        """Every detector starts at a trigger (``generic_high_entropy`` does not)."""
        return self._generic is None

    def scan(self, buf: bytes, start: int, final: bool) -> tuple[list[Hit], int]:
        """The secrets in ``buf[start:hold]`` and ``hold``, where the undecided tail
        begins (``len(buf)`` when nothing is). ``final``: no more bytes follow, so
        nothing is undecided. ``buf[:start]`` is context only (word boundaries)."""
        size = len(buf)
        hold = size
        hits: list[Hit] = []
        generic = self._generic
        if generic is not None:
            if not final:
                run = _RUN_TAIL.search(buf, max(start, size - 202))
                if run is not None:
                    hold = run.start()
            for match in generic.finditer(buf, start, hold):
                if entropy(match.group()) >= ENTROPY_MIN:
                    hits.append((match.start(), match.end(), "generic_high_entropy"))
        triggers = self._triggers
        if triggers is not None:
            low = buf.lower()
            tail = None if final else self._tail_at(low, start)
            if generic is None and tail is None \
                    and triggers.search(low, max(0, start - TRIGGER_MAX + 1)) is None:
                return hits, hold  # the common case: no trigger, no prefix of one at the end
            if tail is not None and tail < hold:
                hold = tail
            full = self._full
            assert full is not None
            found: list[Hit] = []
            after = start
            # A trigger may begin in the context (a short prefix of it went out already):
            # its match is reported from where it begins, and the caller redacts the part
            # not yet sent.
            # Triggers may overlap ("sk-----BEGIN "): after one, search again from the
            # next byte, not from its end.
            search = max(0, start - TRIGGER_MAX + 1)
            while (trigger := triggers.search(low, search, hold)) is not None:
                at = trigger.start()
                search = at + 1
                if at < after and (at >= start or trigger.end() <= start):
                    continue
                # One match reads at most a window past its trigger (a PEM key's END line
                # may come 4 KiB later; nothing else is that long): a run of triggers in
                # one long token costs linear time, not quadratic.
                limit = min(size, at + (MATCH_WINDOW_PEM if low.startswith(b"-----begin ", at)
                                        else MATCH_WINDOW))
                secret = full.match(buf, at, limit, partial=not final and limit == size)
                if secret is None:
                    continue
                end = secret.end()
                if end == limit < size and not secret.partial:
                    # Cut by the window: the secret may run on. Follow it as a running
                    # secret does (its token, or a PEM key to its END line).
                    end, running = _continuation(secret.lastgroup or "", buf, end, final)
                    if running:
                        end = size
                if secret.partial or (end >= hold and not final):
                    hold = max(at, start)
                    break
                found.append((at, end, secret.lastgroup or ""))
                after = search = end
            hits = _merge(hits, found) if hits else found
        if hits and hits[-1][1] > hold:
            hits = [hit for hit in hits if hit[1] <= hold]
        return hits, hold


    def kind_at(self, buf: bytes, at: int) -> str:
        """The detector that (partly) matches at ``at``, for a forced decision."""
        if self._full is not None:
            found = self._full.match(buf, at, partial=True)
            if found is not None and found.lastgroup:
                return found.lastgroup
        return self.detectors[0] if self.detectors else "generic_high_entropy"

    def clean(self, data: bytes) -> bool:
        """Whether no detector can match anywhere in ``data``: no trigger occurs in it
        (escaped JSON included, as a trigger is plain letters and punctuation)."""
        if self._generic is not None or b"\\u" in data or b"\\/" in data:
            return False  # an escape may spell a trigger (\u0073k-, https:\/\/hooks...)
        return self._triggers is None or self._triggers.search(data.lower()) is None

    def _tail_at(self, low: bytes, start: int) -> int | None:
        """Where a trigger prefix long enough to hold begins when one runs to the end of
        ``low`` (not before ``start``: it may have begun in the context, "g" went out and
        "ithub" follows). Matched on the reversed tail, anchored, so the cost does not
        grow with the number of prefixes."""
        assert self._tail is not None
        size = len(low)
        reverse = low[max(0, start - TRIGGER_MAX, size - TRIGGER_MAX - 1):][::-1]
        found = self._tail.match(reverse)
        if found is None:
            return None
        return max(start, size - found.end())


@functools.lru_cache(maxsize=32)
def _compile(ids: tuple[str, ...], generic: bool) -> tuple[
        re.Pattern[bytes] | None, re.Pattern[bytes] | None, regex.Pattern[bytes] | None,
        re.Pattern[bytes] | None]:
    generic_re = (re.compile(CENSOR_ONLY_PATTERNS["generic_high_entropy"].encode())
                  if generic else None)
    if not ids:
        return None, None, None, generic_re
    words = sorted({t for d in ids for t in TRIGGERS[d]}, key=len, reverse=True)
    triggers = re.compile(b"|".join(re.escape(w) for w in words))
    bounded = sorted({w[:n] for w in words if w not in _UNBOUNDED_TRIGGERS
                      for n in range(min(HELD_PREFIX, len(w)), len(w) + 1)},
                     key=len, reverse=True)
    unbounded = sorted({w[:n] for w in words if w in _UNBOUNDED_TRIGGERS
                        for n in range(min(HELD_PREFIX, len(w)), len(w) + 1)},
                       key=len, reverse=True)
    # Reversed: a prefix ending the text is matched from the text's end backwards; a
    # word character before a bounded one (after it, reversed) means no word boundary.
    parts = sorted([(p, True) for p in bounded] + [(p, False) for p in unbounded],
                   key=lambda item: len(item[0]), reverse=True)
    tail = re.compile(b"|".join(re.escape(p[::-1]) + (rb"(?![a-z0-9_])" if word else b"")
                                for p, word in parts))
    full = regex.compile("|".join(f"(?P<{d}>{PATTERNS[d]})" for d in ids).encode())
    return triggers, tail, full, generic_re


def _merge(first: list[Hit], second: list[Hit]) -> list[Hit]:
    merged: list[Hit] = []
    end = -1
    for hit in sorted(first + second):
        if hit[0] >= end:
            merged.append(hit)
            end = hit[1]
    return merged


def _after_label(buf: bytes, start: int, end: int, kind: str) -> int:
    """Where to begin redacting a hit: an AWS secret key is matched with its label
    (``"aws_secret_access_key": "…"``), and a hit that spans a quote is redacted after
    its last quote, so JSON stays JSON and the key still goes. No other detector's match
    holds a label (a quote inside a PEM key is key material)."""
    if kind != "aws_access_key":
        return start
    quote = buf.rfind(b'"', start, end)
    return quote + 1 if quote >= 0 else start


def _continuation(kind: str, buf: bytes, start: int, final: bool) -> tuple[int, bool]:
    """Where a secret that was still running when it was cut off ends in ``buf[start:]``:
    ``(end, still_open)``. A PEM key runs to its END line (the last bytes that could be
    the start of one stay undecided), any other secret to the end of its token."""
    if kind == "pem_private":
        end = _PEM_END.search(buf, start)
        if end is not None:
            return end.end(), False
        if final:
            return len(buf), False
        return max(start, len(buf) - _PEM_END_MAX), True
    run = _TOKEN_RUN.match(buf, start)
    stop = run.end() if run is not None else start
    return stop, stop == len(buf) and not final


class Hits:
    """What one response's censor found: counts per detector and per deny path."""

    __slots__ = ("detectors", "paths")

    def __init__(self) -> None:
        self.detectors: dict[str, int] = {}
        self.paths: dict[str, int] = {}

    def detector(self, kind: str) -> None:
        self.detectors[kind] = self.detectors.get(kind, 0) + 1

    def path(self, path: str) -> None:
        self.paths[path] = self.paths.get(path, 0) + 1

    def __bool__(self) -> bool:
        return bool(self.detectors or self.paths)

    def merge(self, other: Hits) -> None:
        for kind, count in other.detectors.items():
            self.detectors[kind] = self.detectors.get(kind, 0) + count
        for path, count in other.paths.items():
            self.paths[path] = self.paths.get(path, 0) + count

    def first(self) -> str:
        """A name for the first thing found, for the error log."""
        for kind in self.detectors:
            return kind
        for path in self.paths:
            return path
        return ""


class _Stream:
    """One byte stream under scan: the undecided tail, the running secret (if one was
    cut off), absolute offsets. Shared by bodies and SSE text channels."""

    __slots__ = ("base", "buf", "open_kind", "start")

    def __init__(self) -> None:
        self.buf = b""
        self.base = 0
        """Absolute offset of ``buf[0]``."""
        self.start = 0
        """Index in ``buf`` of the first undecided byte (before it: :data:`CONTEXT` bytes
        of text already decided)."""
        self.open_kind: str | None = None

    @property
    def resolved(self) -> int:
        return self.base + self.start

    def push(self, rules: Rules, data: bytes, final: bool,
             forced: bool = False) -> list[tuple[int, int, str, bool]]:
        """Add ``data`` and decide what can be: ``(abs_start, abs_end, kind, marked)``
        for each secret (``marked`` False: the rest of a running secret, swallowed
        without a second marker). ``forced``: decide everything now although more bytes
        may follow (a secret still running at the end is then swallowed as it goes on)."""
        buf = self.buf + data if self.buf else data
        start = self.start
        out: list[tuple[int, int, str, bool]] = []
        base = self.base
        if self.open_kind is not None:
            end, still_open = _continuation(self.open_kind, buf, start, final)
            if end > start:
                out.append((base + start, base + end, self.open_kind, False))
            start = end
            if still_open:
                self._keep(buf, start)
                return out
            self.open_kind = None
        hits, hold = rules.scan(buf, start, final)
        if not final and len(buf) - hold > MAX_HOLD:
            forced = True
            hits, hold = rules.scan(buf, start, True)
        if forced:
            # Decided early, more may follow: what could still become a secret (a match
            # so far, "sk-pr") is taken as one, and its continuation swallowed.
            _, undecided = rules.scan(buf, start, False)
            if undecided < len(buf) and not (hits and hits[-1][1] > undecided):
                hits = [*hits, (undecided, len(buf), rules.kind_at(buf, undecided))]
            if hits and hits[-1][1] == len(buf):
                self.open_kind = hits[-1][2]
        for hit_start, hit_end, kind in hits:
            hit_start = max(hit_start, start)  # the part in the context went out already
            hit_start = _after_label(buf, hit_start, hit_end, kind)
            out.append((base + hit_start, base + hit_end, kind, True))
        self._keep(buf, hold)
        return out

    def _keep(self, buf: bytes, hold: int) -> None:
        cut = max(0, hold - CONTEXT)
        self.buf = buf[cut:]
        self.base += cut
        self.start = hold - cut


class ByteCensor:
    """A response body as bytes; see the module docstring. ``same_length``: marks keep
    each secret's length (the body's length is already on the wire)."""

    __slots__ = ("_emitted", "_rules", "_same_length", "_stream", "hits", "tripped")

    def __init__(self, rules: Rules, same_length: bool = False) -> None:
        self._rules = rules
        self._stream = _Stream()
        self._same_length = same_length
        self._emitted = 0
        self.hits = Hits()
        self.tripped = False

    def feed(self, data: bytes, final: bool = False) -> bytes:
        """The bytes of the body that may go out now, given ``data`` next."""
        if self.tripped:
            return b""
        stream = self._stream
        base = stream.base
        buf = stream.buf + data
        found = stream.push(self._rules, data, final)
        resolved = stream.resolved
        out: list[bytes] = []
        at = self._emitted
        for start, end, kind, marked in found:
            if marked:
                self.hits.detector(kind)
                if not self._rules.redacts:
                    self.tripped = True
                    out.append(buf[at - base:start - base])
                    return b"".join(out)
            out.append(buf[at - base:start - base])
            if marked:
                out.append(_marker(kind, end - start if self._same_length else None))
            elif self._same_length:
                out.append(b"*" * (end - start))
            at = end
        out.append(buf[at - base:resolved - base])
        self._emitted = resolved
        return b"".join(out)

    def finish(self) -> bytes:
        """The rest of the body at its end."""
        return self.feed(b"", True)


class JsonBodyCensor:
    """A JSON body too large to rewrite whole: the route's deny paths applied by the
    streaming walker (bounded memory), then the detectors as for any body. The output's
    length differs from the input's, so the body is re-framed (chunked)."""

    __slots__ = ("_bytes", "_rules", "_walker", "hits", "tripped")

    def __init__(self, rules: Rules) -> None:
        assert rules.deny_paths is not None
        self._rules = rules
        self._walker = JsonStreamRedactor(rules.deny_paths)
        self._bytes = ByteCensor(rules)
        self.hits = self._bytes.hits
        self.tripped = False

    def feed(self, data: bytes, final: bool = False) -> bytes:
        """Raises :class:`JsonRedactError` when the body is not well-formed JSON."""
        if self.tripped:
            return b""
        walker = self._walker
        seen = len(walker.hits)
        out = walker.feed(data)
        if final:
            out += walker.finish()
        for path in walker.hits[seen:]:
            self.hits.path(path)
        if len(walker.hits) > seen and not self._rules.redacts:
            self.tripped = True
            return b""
        out = self._bytes.feed(out, final)
        self.tripped = self._bytes.tripped
        return out

    def finish(self) -> bytes:
        return self.feed(b"", True)


BodyCensor = ByteCensor | JsonBodyCensor


class _Segment:
    """One channel string of one event: where it sits in the event's payload (the JSON
    string's content, between its quotes) and in its channel's text (decoded)."""

    __slots__ = ("edits", "end", "escaped", "event", "span", "start", "text")

    def __init__(self, event: _Event, span: tuple[int, int], text: bytes, escaped: bool,
                 start: int) -> None:
        self.event = event
        self.span = span
        self.text = text
        self.escaped = escaped
        self.start = start
        self.end = start + len(text)
        self.edits: list[tuple[int, int, bytes]] | None = None

    def rendered(self) -> bytes:
        """The new content of the JSON string (escaped as JSON needs)."""
        text = _apply(self.text, self.edits or [])
        if not self.escaped and b"\\" not in text and b'"' not in text:
            return text
        return orjson.dumps(text.decode("utf-8", "replace"))[1:-1]


class _Channel:
    __slots__ = ("segments", "stream")

    def __init__(self) -> None:
        self.stream = _Stream()
        self.segments: deque[_Segment] = deque()


class _Event:
    __slots__ = ("edits", "lines", "payload", "raw", "segments")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.payload = b""
        self.segments: list[tuple[_Channel, _Segment]] = []
        self.edits: list[tuple[int, int, bytes]] | None = None
        """Payload edits outside channel strings; ``[]`` when the payload was replaced."""
        self.lines: dict[int, bytes] | None = None
        """Other fields rewritten, by line number."""

    def edit(self, start: int, end: int, replacement: bytes) -> None:
        if self.edits is None:
            self.edits = []
        self.edits.append((start, end, replacement))

    @property
    def dirty(self) -> bool:
        return self.edits is not None or self.lines is not None or any(
            segment.edits is not None for _, segment in self.segments)


_CHANNEL_NAMES = tuple(b'"' + key.encode() + b'"' for key in sorted(CHANNEL_KEYS))
_STRING_VALUE = re.compile(rb'[ \t\r\n]*:[ \t\r\n]*"((?:[^"\\]|\\.)*)"')
"""After a quoted key: a string value (its content, still escaped, as group 1)."""


def _channel_strings(payload: bytes) -> list[tuple[bytes, re.Match[bytes]]]:
    """The delta-text keys of a raw JSON payload that hold strings, in document order:
    ``(quoted key, match of the value)``. A quoted key name inside a string is escaped
    (``\\"content\\"``), so a plain search for ``"content"`` finds only keys, or values
    such as ``"type": "text"``, which no string value follows."""
    found: list[tuple[int, bytes, re.Match[bytes]]] = []
    for name in _CHANNEL_NAMES:
        at = payload.find(name)
        while at >= 0:
            value = _STRING_VALUE.match(payload, at + len(name))
            if value is not None:
                found.append((at, name, value))
            at = payload.find(name, at + len(name))
    if len(found) > 1:
        found.sort(key=lambda item: item[0])
    return [(name, value) for _, name, value in found]

_STRING_REST = re.compile(rb'(?:[^"\\]|\\.)*')
"""The rest of a JSON string's content from a position inside it (to its closing quote)."""

_INDEX = re.compile(rb'"index"[ \t\r\n]*:[ \t\r\n]*([0-9]+)')


class SseCensor:
    """An event stream, fed whole events; see the module docstring."""

    __slots__ = ("_channels", "_clean_skeleton", "_partial", "_pending", "_pending_bytes",
                 "_rules", "hits", "tripped")

    def __init__(self, rules: Rules) -> None:
        self._rules = rules
        self._partial = b""
        self._clean_skeleton: bytes | None = None
        """The fields (digits zeroed) of the last payload found free of triggers."""
        self._channels: dict[tuple[bytes, bytes], _Channel] = {}
        self._pending: deque[_Event] = deque()
        self._pending_bytes = 0
        self.hits = Hits()
        self.tripped = False

    def feed(self, events: bytes) -> bytes:
        """Event-stream bytes in (normally whole events; an unfinished last one is kept
        until its blank line, up to ``max_scrub_bytes``, else the censor trips); the
        events that may go out now (possibly rewritten)."""
        if self.tripped or not events:
            return b""
        if self._partial or not events.endswith(b"\n\n"):
            events = self._partial + events
            cut = 0
            for boundary in _EVENT_SPLIT.finditer(events):
                cut = boundary.end()
            events, self._partial = events[:cut], events[cut:]
            if len(self._partial) > self._rules.max_scrub_bytes:
                self.tripped = True  # an event too long to read whole: withheld
                return b""
            if not events:
                return b""
        for raw in _split_events(events):
            event = _Event(raw)
            self._pending.append(event)
            self._pending_bytes += len(raw)
            for channel in self._read(event):
                self._decide(channel, False)
            if self.tripped:
                return b""
        if self._pending_bytes > MAX_PENDING_EVENTS:
            for channel in self._channels.values():
                self._decide(channel, True, forced=True)
        return b"" if self.tripped else self._release(False)

    def finish(self) -> bytes:
        """The held events at the stream's end, decided as they stand."""
        if self.tripped:
            return b""
        if self._partial:
            rest, self._partial = self._partial, b""
            out = self.feed(rest + b"\n\n")
            if self.tripped:
                return b""
            return out + self.finish()
        for channel in self._channels.values():
            self._decide(channel, True)
        return b"" if self.tripped else self._release(True)

    def _read(self, event: _Event) -> list[_Channel]:
        """Parse one event's payload into channel segments; scan the rest of it."""
        data: list[bytes] = []
        for number, line in enumerate(event.raw.splitlines()):
            if line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value[:1] == b" " else value)
            elif line:
                self._scan_line(event, number, line)
        if not data:
            return []
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        rules = self._rules
        if payload.lstrip()[:1] not in (b"{", b"["):
            event.payload = payload
            return [self._add(event, (b"<data>", b""), (0, len(payload)), payload, False)]
        if rules.deny is not None:
            try:
                doc = orjson.loads(payload)
            except orjson.JSONDecodeError:
                doc = None
            if doc is not None:
                doc, paths = rules.deny(doc)
                if paths:
                    for path in paths:
                        self.hits.path(path)
                    if not rules.redacts:
                        self.tripped = True
                        return []
                    payload = orjson.dumps(doc)
                    event.edits = []
        event.payload = payload
        touched: list[_Channel] = []
        spans: list[tuple[int, int]] = []
        index = b""
        has_index = b'"index"' in payload
        for key, match in _channel_strings(payload):
            start, end = match.span(1)
            raw = match.group(1)
            escaped = b"\\" in raw
            text = raw
            if escaped:
                try:
                    text = orjson.loads(b'"' + raw + b'"').encode()
                except orjson.JSONDecodeError:
                    continue
            if has_index:
                # choices[1].delta.tool_calls[0]: "1,0", apart from choice 0's "0,0".
                index = b",".join(_INDEX.findall(payload, 0, start)[-4:])
            channel = self._add(event, (key, index), (start, end), text, escaped)
            if channel not in touched:
                touched.append(channel)
            spans.append((start, end))
        self._scan_rest(event, payload, spans)
        return touched

    def _add(self, event: _Event, where: tuple[bytes, bytes], span: tuple[int, int],
             text: bytes, escaped: bool) -> _Channel:
        channel = self._channels.get(where)
        if channel is None:
            if len(self._channels) >= MAX_CHANNELS:
                self._forget_idle()
            channel = self._channels[where] = _Channel()
        stream = channel.stream
        segments = channel.segments
        if segments and segments[-1].event is event:
            # Two strings of one text in one payload are two strings to a reader of the
            # raw bytes: a separator keeps a word boundary between them.
            stream.buf += b"\x00"
        segment = _Segment(event, span, text, escaped, stream.base + len(stream.buf))
        stream.buf += text
        segments.append(segment)
        event.segments.append((channel, segment))
        return channel

    def _forget_idle(self) -> None:
        """Drop the texts with nothing held (an upstream that numbers every event would
        otherwise open one text per event)."""
        for where, channel in list(self._channels.items()):
            if not channel.segments and channel.stream.open_kind is None:
                del self._channels[where]

    def _scan_line(self, event: _Event, number: int, line: bytes) -> None:
        """A field other than ``data`` (``event``, ``id``, a comment, an unknown one) is
        scanned on its own: nothing in it is text a secret continues across events."""
        rules = self._rules
        hits, _ = rules.scan(line, 0, True)
        if not hits:
            return
        for _, _, kind in hits:
            self.hits.detector(kind)
        if not rules.redacts:
            self.tripped = True
            return
        if event.lines is None:
            event.lines = {}
        event.lines[number] = _apply(line, [(s, e, _marker(k, None)) for s, e, k in hits])

    def _scan_rest(self, event: _Event, payload: bytes, spans: list[tuple[int, int]]) -> None:
        """Secrets anywhere in the payload outside the channel strings (ids, tool results,
        custom fields), each redacted in place; a hit that begins before a quote (a JSON
        key and its value) is cut to the part after the quote, so the JSON stays valid."""
        rules = self._rules
        if rules.triggers_only:
            # Stream chunks repeat their fields (id, model, fingerprint) and change only
            # numbers (timestamps, counters) besides the text: a payload whose fields equal
            # those of the last one without a trigger, digits aside, has none either, as
            # no trigger holds a digit.
            skeleton = _skeleton(payload, spans)
            if skeleton == self._clean_skeleton:
                return
        hits, _ = rules.scan(payload, 0, True)
        if rules.triggers_only and not hits and rules.clean(skeleton):
            self._clean_skeleton = skeleton
        while hits:
            cut_at = None
            for start, matched_end, kind in hits:
                inside = next((span_end for span_start, span_end in spans
                               if span_start <= start < span_end), None)
                if inside is not None:  # a channel's text: decided with the text around it
                    if matched_end > inside:
                        cut_at = inside  # what it ran over past the text: scan again
                        break
                    continue
                # A match that runs on past the string it starts in (a PEM key with no
                # END line runs to the end) is cut at that string's closing quote; what
                # it ran over is scanned again.
                start = _after_label(payload, start, matched_end, kind)
                rest = _STRING_REST.match(payload, start)
                end = min(matched_end, rest.end()) if rest is not None else matched_end
                for span_start, _ in spans:
                    if start < span_start < end:
                        end = span_start
                self.hits.detector(kind)
                if not rules.redacts:
                    self.tripped = True
                    return
                event.edit(start, end, _marker(kind, None))
                if end < matched_end:
                    cut_at = end
                    break
            if cut_at is None:
                return
            hits, _ = rules.scan(payload, cut_at, True)

    def _decide(self, channel: _Channel, final: bool, forced: bool = False) -> None:
        stream = channel.stream
        if final:
            found = stream.push(self._rules, b"", True, forced)
        else:
            # The new text is already at the end of the stream's buffer (see _add).
            buf, stream.buf = stream.buf, b""
            found = stream.push(self._rules, buf, False)
        segments = channel.segments
        for start, end, kind, marked in found:
            if marked:
                self.hits.detector(kind)
                if not self._rules.redacts:
                    self.tripped = True
                    return
            first = marked
            for segment in segments:
                if segment.end <= start:
                    continue
                if segment.start >= end:
                    break
                edit = (max(start, segment.start) - segment.start,
                        min(end, segment.end) - segment.start,
                        _marker(kind, None) if first else b"")
                first = False
                if segment.edits is None:
                    segment.edits = [edit]
                else:
                    segment.edits.append(edit)
        resolved = stream.resolved
        while segments and segments[0].end <= resolved:
            segments.popleft()

    def _release(self, final: bool) -> bytes:
        out: list[bytes] = []
        pending = self._pending
        while pending:
            event = pending[0]
            if not final and any(segment.end > channel.stream.resolved
                                 for channel, segment in event.segments):
                break
            pending.popleft()
            self._pending_bytes -= len(event.raw)
            out.append(_render(event) if event.dirty else event.raw)
        return b"".join(out)


_ZERO_DIGITS = bytes.maketrans(b"0123456789", b"0000000000")


def _skeleton(payload: bytes, spans: list[tuple[int, int]]) -> bytes:
    """A payload without its text strings, digits zeroed."""
    if spans:
        parts = []
        at = 0
        for start, end in spans:
            parts.append(payload[at:start])
            at = end
        parts.append(payload[at:])
        payload = b"\x00".join(parts)
    return payload.translate(_ZERO_DIGITS)


def _apply(text: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    parts: list[bytes] = []
    at = 0
    for start, end, replacement in sorted(edits):
        start = max(start, at)
        parts.append(text[at:start])
        parts.append(replacement)
        at = max(at, end)
    parts.append(text[at:])
    return b"".join(parts)


def _render(event: _Event) -> bytes:
    """An event whose payload changed, re-serialised: its other fields in place, the
    data as one line per payload line."""
    edits = list(event.edits or ())
    for _, segment in event.segments:
        if segment.edits is not None:
            edits.append((*segment.span, segment.rendered()))
    payload = _apply(event.payload, edits)
    lines: list[bytes] = []
    wrote_data = False
    changed = event.lines or {}
    for number, line in enumerate(event.raw.splitlines()):
        if not line:
            continue
        if line.startswith(b"data:"):
            if not wrote_data:
                lines.extend(b"data: " + part for part in payload.split(b"\n"))
                wrote_data = True
            continue
        lines.append(changed.get(number, line))
    return b"\n".join(lines) + b"\n\n"


_EVENT_SPLIT = re.compile(rb"(?:\r\n|\r|\n)(?:\r\n|\r|\n)")


def _split_events(data: bytes) -> list[bytes]:
    """Whole events (each with its blank line; blank lines between events go with the
    event before them)."""
    if data.endswith(b"\n\n") and b"\r" not in data:
        parts = data.split(b"\n\n")
        if all(parts[:-1]):  # one blank line after each event, as nearly every server
            return [part + b"\n\n" for part in parts[:-1]]
    events: list[bytes] = []
    at = 0
    for match in _EVENT_SPLIT.finditer(data):
        end = match.end()
        if match.start() < at:
            continue
        events.append(data[at:end])
        at = end
    if at < len(data):
        if events:
            events[-1] += data[at:]
        else:
            events.append(data[at:])
    return events


def scrub_json_spec(spec: RulesSpec, body: bytes) -> tuple[bytes, Hits] | None:
    """:func:`scrub_json` by spec: what a scrubbing process runs for a large body."""
    return scrub_json(rules_for(spec), body)


def scrub_json(rules: Rules, body: bytes) -> tuple[bytes, Hits] | None:
    """A whole JSON body, scrubbed: ``(bytes, hits)``; the original bytes, unchanged, when
    nothing was found; None when ``body`` is not JSON. A body in which no detector's
    trigger occurs is not parsed at all (unless deny paths apply)."""
    if rules.deny is None and rules.clean(body):
        return body, Hits()
    if body.startswith(_BOM):  # allowed before JSON text; neither parser takes it
        result = scrub_json(rules, body[len(_BOM):])
        return None if result is None else (_BOM + result[0], result[1])
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        if rules.deny_paths is None:
            return None
        return _walk_whole(rules, body)  # JSON orjson refuses (a BOM, a lone surrogate)
    hits = Hits()
    try:
        if rules.deny is not None:
            doc, paths = rules.deny(doc)
            for path in paths:
                hits.path(path)
        changed = bool(hits.paths)
        wrapper = [doc]
        if _scrub_strings(rules, wrapper, hits):
            changed = True
        if not changed:
            return body, hits
        return orjson.dumps(wrapper[0]), hits
    except (TypeError, ValueError, RecursionError):
        # Nested deeper than orjson writes or the deny walker follows: the streaming
        # walker keeps the bytes as they are (or refuses, and the caller withholds).
        return _walk_whole(rules, body) if rules.deny_paths is not None \
            else _bytes_whole(rules, body)


_BOM = b"\xef\xbb\xbf"


def _walk_whole(rules: Rules, body: bytes) -> tuple[bytes, Hits]:
    """A whole body through the streaming deny-path walker and the detectors. Raises
    :class:`~.json_redact.JsonRedactError` when it is not JSON at all."""
    walker = JsonBodyCensor(rules)
    out = walker.feed(body, True)
    return out, walker.hits


def _bytes_whole(rules: Rules, body: bytes) -> tuple[bytes, Hits]:
    censor = ByteCensor(rules)
    return censor.feed(body, True), censor.hits


_AWS_LABEL = re.compile(r"(?i)aws_?secret_?access_?key")
_AWS_SECRET = re.compile(r"[A-Za-z0-9/+=]{40}")


def _scrub_keys(rules: Rules, node: dict[str, Any], hits: Hits) -> bool:
    """Object keys are text too (a map keyed by API key): a key holding a secret is
    renamed, order kept."""
    renamed: dict[str, str] = {}
    for key in node:
        if len(key) >= _SHORTEST:
            found, _ = rules.scan(key.encode(), 0, True)
            if found:
                for _, _, kind in found:
                    hits.detector(kind)
                renamed[key] = _apply(key.encode(), [(s, e, _marker(k, None))
                                                     for s, e, k in found]).decode(
                    "utf-8", "replace")
    if not renamed:
        return False
    items = list(node.items())
    node.clear()
    for key, value in items:
        node[renamed.get(key, key)] = value
    return True


def _scrub_strings(rules: Rules, node: Any, hits: Hits) -> bool:
    changed = False
    if isinstance(node, dict) and _scrub_keys(rules, node, hits):
        changed = True
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in list(items):
        if isinstance(value, str) and isinstance(key, str) and "aws" in key.lower() \
                and _AWS_SECRET.fullmatch(value) and _AWS_LABEL.fullmatch(key):
            # The AWS secret key has no shape of its own: its member name is the label.
            hits.detector("aws_access_key")
            node[key] = "[REDACTED:aws_access_key]"
            changed = True
        elif isinstance(value, str):
            if len(value) < _SHORTEST:
                continue
            text = value.encode()
            found, _ = rules.scan(text, 0, True)
            if found:
                for _, _, kind in found:
                    hits.detector(kind)
                node[key] = _apply(text, [(s, e, _marker(k, None))
                                          for s, e, k in found]).decode("utf-8", "replace")
                changed = True
        elif isinstance(value, (dict, list)) and _scrub_strings(rules, value, hits):
            changed = True
    return changed
