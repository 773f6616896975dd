"""Redaction of everything a log sink writes (pure).

Redaction is always on (SPEC §9): whatever the config says, the values of the headers
in :data:`ALWAYS_REDACTED` are replaced by :data:`REDACTED`, and so are the headers
named in ``[log.redact] headers``. The detector ids of ``[log.redact] patterns`` (see
:mod:`.detectors`) run over every string that reaches a sink: messages, paths, peers,
route names, header values and every diagnostic field, nested values included.

The formatters call the :class:`Redactor` in the log writer task, never on the request
path. Bytes are decoded as latin-1 (every byte maps to one character, nothing can fail),
which is also how HTTP/1.1 field values are defined on the wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from li_httpd.config.model import Redact

from .detectors import pattern, replacement

ALWAYS_REDACTED: Final = frozenset({"authorization", "proxy-authorization", "cookie",
                                    "set-cookie"})
"""Header names whose values never reach a log, whatever the config."""

REDACTED: Final = "[REDACTED]"
"""What a redacted header value (or a field named like one) is replaced with."""

_MEMO_MAX_LEN = 200
_MEMO_MAX_ENTRIES = 4096
_MAX_DEPTH = 8

Text = str | bytes | bytearray | memoryview


def _decode(value: Text) -> str:
    if isinstance(value, str):
        return value
    return bytes(value).decode("latin-1")


class Redactor:
    """Applies the always-on header rule and the configured detectors.

    Short strings (route names, methods, peers, common paths) repeat from one line to
    the next, so their redacted form is memoised in a bounded dict (cleared when full,
    so memory stays bounded whatever the traffic).
    """

    __slots__ = ("_memo", "_pattern", "detector_ids", "headers")

    def __init__(self, config: Redact | None = None) -> None:
        config = config if config is not None else Redact()
        self.headers: frozenset[str] = ALWAYS_REDACTED | {name.lower() for name in
                                                          config.headers}
        """Lowercase header names whose values are replaced by :data:`REDACTED`."""
        self.detector_ids: tuple[str, ...] = tuple(config.patterns)
        self._pattern = pattern(self.detector_ids)
        self._memo: dict[str, str] = {}

    def is_sensitive(self, name: Text) -> bool:
        """True for a header name (or a field key: ``_`` counts as ``-``) to redact whole."""
        return _decode(name).lower().replace("_", "-") in self.headers

    def text(self, value: Text) -> str:
        """``value`` as a str with every detector hit replaced by ``[REDACTED:<id>]``."""
        text = _decode(value)
        compiled = self._pattern
        if compiled is None:
            return text
        if len(text) <= _MEMO_MAX_LEN:
            cached = self._memo.get(text)
            if cached is not None:
                return cached
            result = self._scrub(text)
            if len(self._memo) >= _MEMO_MAX_ENTRIES:
                self._memo.clear()
            self._memo[text] = result
            return result
        return self._scrub(text)

    def _scrub(self, text: str) -> str:
        compiled = self._pattern
        if compiled is None or compiled.search(text) is None:
            return text
        return compiled.sub(replacement, text)

    def header(self, name: Text, value: Text) -> str:
        """The loggable form of one header value."""
        return REDACTED if self.is_sensitive(name) else self.text(value)

    def fields(self, fields: Mapping[str, object]) -> dict[str, object]:
        """Diagnostic fields made safe: sensitive keys redacted whole, the rest by value."""
        return {key: (REDACTED if value is not None and self.is_sensitive(key)
                      else self.value(value))
                for key, value in fields.items()}

    def value(self, value: object, depth: int = 0) -> object:
        """A JSON-compatible copy of ``value`` with every string redacted.

        Numbers, booleans and None pass through; bytes are decoded as latin-1;
        mappings and sequences are walked (a key, or the first item of a 2-item pair,
        naming a sensitive header redacts its value whole); exceptions print as their
        repr; anything else as ``str()``. Nesting deeper than 8 levels is cut off.
        """
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str | bytes | bytearray | memoryview):
            return self.text(value)
        if depth >= _MAX_DEPTH:
            return "[TRUNCATED]"
        if isinstance(value, Mapping):
            out: dict[str, object] = {}
            for key, item in value.items():
                name = _decode(key) if isinstance(key, str | bytes) else str(key)
                out[self.text(name)] = (REDACTED if self.is_sensitive(name)
                                        else self.value(item, depth + 1))
            return out
        if isinstance(value, list | tuple | set | frozenset):
            items = list(value)
            if (len(items) == 2 and isinstance(items[0], str | bytes)
                    and self.is_sensitive(items[0])):
                return [self.text(items[0]), REDACTED]
            return [self.value(item, depth + 1) for item in items]
        if isinstance(value, BaseException):
            return self.text(repr(value))
        return self.text(str(value))


QUERY_VALUE: Final = b"<redacted>"
"""What every query parameter's value becomes in a logged path."""


def logged_path(path: bytes, query: bytes | None) -> bytes:
    """The request path as the access line and audit record show it: the query's keys
    are kept, every value becomes :data:`QUERY_VALUE` (``/v1?a=1&b`` ->
    ``/v1?a=<redacted>&b``). Pure and cheap: a path without a query is returned as is."""
    if query is None:
        return path
    parts = []
    for item in query.split(b"&"):
        key, equals, _ = item.partition(b"=")
        parts.append(key + b"=" + QUERY_VALUE if equals else key)
    return path + b"?" + b"&".join(parts)
