"""The one path normalization algorithm, shared by config validation and routing.

Given the path part of a request target (no query), :func:`normalize_path`:

1. requires a leading ``/`` and only RFC 3986 path characters (no space, control byte,
   backslash or raw non-ASCII byte);
2. decodes %-escapes of unreserved characters (``A-Z a-z 0-9 - . _ ~``) and prints every
   other escape with uppercase hex; malformed escapes are refused;
3. refuses encoded ``/`` (``%2F``), ``\\`` (``%5C``) and NUL (``%00``): they let a path mean
   different things to the gateway and to the upstream;
4. merges repeated slashes, drops ``.`` segments and refuses ``..`` segments (after
   decoding, so ``%2e%2e`` is caught too).

The result is what the router matches and what the upstream receives, so both see
the same path. The function is idempotent (property-tested).
"""

from __future__ import annotations

import re

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PATH_CHARS = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
_HEX = frozenset("0123456789abcdefABCDEF")
_REFUSED_ESCAPES = {
    0x2F: "an encoded '/' (%2F)",
    0x5C: "an encoded '\\' (%5C)",
    0x00: "an encoded NUL",
}


_SEGMENT = r"/(?!\.\.?(?:/|$))[A-Za-z0-9\-._~!$&'()*+,;=:@]+"
_ALREADY_NORMAL = re.compile(rf"(?:{_SEGMENT})*/?")
"""Paths in normal form: no escapes, no empty, '.' or '..' segments (checked by a test)."""


class PathError(ValueError):
    """The path cannot be normalized safely; the request is refused with 400."""


def normalize_path(raw: str) -> str:
    """Return the normal form of ``raw`` or raise :class:`PathError`."""
    if raw and _ALREADY_NORMAL.fullmatch(raw):
        return raw  # the common case, and what normalize_slow returns for it
    return normalize_slow(raw)


def normalize_slow(raw: str) -> str:
    """The normalization algorithm itself, without the fast path."""
    if not raw.startswith("/"):
        raise PathError("path must start with '/'")
    decoded: list[str] = []
    index = 0
    length = len(raw)
    while index < length:
        char = raw[index]
        if char == "%":
            digits = raw[index + 1 : index + 3]
            if len(digits) != 2 or not all(d in _HEX for d in digits):
                raise PathError("malformed %-escape")
            byte = int(digits, 16)
            refused = _REFUSED_ESCAPES.get(byte)
            if refused:
                raise PathError(f"path contains {refused}")
            as_char = chr(byte)
            decoded.append(as_char if as_char in _UNRESERVED else "%" + digits.upper())
            index += 3
            continue
        if char not in _PATH_CHARS:
            if char == "\\":
                raise PathError("path contains a backslash")
            raise PathError(f"path contains a character that must be %-encoded: {char!r}")
        decoded.append(char)
        index += 1
    text = "".join(decoded)
    trailing = text.endswith("/") or text.endswith("/.")
    segments: list[str] = []
    for segment in text.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            raise PathError("path contains a '..' segment")
        segments.append(segment)
    if not segments:
        return "/"
    return "/" + "/".join(segments) + ("/" if trailing else "")
