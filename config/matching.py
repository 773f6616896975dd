"""The MatchExpr algebra: what a route matches, and when one route covers another.

A path pattern is a list of segments (literals or ``*`` for exactly one non-empty
segment) and a *tail*:

- ``end``: the path has exactly these segments and no trailing slash;
- ``slash``: exactly these segments followed by ``/``;
- ``rest``: these segments, then ``/`` and anything (at most ``max_depth`` more segments
  when a depth is set).

Every canonical ``match.path`` type maps onto that one shape (:func:`pattern_of`), so
matching and the shadowing check (:func:`covers`) are each written once. ``covers`` is
exact for this algebra: it answers True only when every request the later route accepts
is also accepted by the earlier one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from .checks import METHODS
from .model import HostMatch, Match, PathMatch

Tail = Literal["end", "slash", "rest"]
GLOB = "*"


@dataclass(frozen=True, slots=True)
class PathPattern:
    segments: tuple[str, ...]
    tail: Tail
    max_depth: int | None = None
    strip_prefix: str | None = None
    """For prefix_strip: the literal prefix removed before forwarding."""


def pattern_of(path: PathMatch) -> PathPattern:
    value = path.value
    kind = path.kind
    if kind in ("prefix", "prefix_strip"):
        segments = tuple(s for s in value.split("/") if s)
        strip = value if kind == "prefix_strip" else None
        depth = path.max_depth
        return PathPattern(segments, "rest", depth, strip)
    if kind == "glob_rest":
        head = value[:-3] if value.endswith("/**") else value.rstrip("/")
        return PathPattern(tuple(s for s in head.split("/") if s), "rest", path.max_depth)
    segments = tuple(s for s in value.split("/") if s)
    tail: Tail = "slash" if value.endswith("/") else "end"
    return PathPattern(segments, tail)


def split_path(path: str) -> tuple[list[str], bool]:
    """Segments of a normalized path, and whether it ends with a slash."""
    if path == "/":
        return [], True
    return path[1:].rstrip("/").split("/"), path.endswith("/")


def path_matches(pattern: PathPattern, segments: list[str], slash: bool) -> bool:
    count = len(pattern.segments)
    if len(segments) < count:
        return False
    for want, have in zip(pattern.segments, segments, strict=False):
        if want not in (GLOB, have):
            return False
    extra = len(segments) - count
    if pattern.tail == "end":
        return extra == 0 and not slash
    if pattern.tail == "slash":
        return extra == 0 and slash
    if extra == 0 and not slash:
        return False
    return pattern.max_depth is None or extra <= pattern.max_depth


def upstream_path(pattern: PathPattern, path: str) -> str:
    """The path sent upstream: the request path, minus a prefix_strip prefix."""
    if pattern.strip_prefix is None:
        return path
    return "/" + path[len(pattern.strip_prefix):]


def normalize_host(raw: str) -> str:
    """Lowercase, without port or trailing dot; bracketed IPv6 literals stay bracketed."""
    host = raw.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    host = host.rpartition(":")[0] if ":" in host else host
    return host.rstrip(".")


def host_matches(match: HostMatch, host: str) -> bool:
    if match.kind == "any":
        return True
    if match.kind == "exact":
        return host == match.value
    return host.endswith(match.value) and len(host) > len(match.value)


def effective_methods(methods: tuple[str, ...]) -> frozenset[str]:
    """The methods a route answers: ``*`` means every supported method (never TRACE,
    CONNECT or an unknown extension method); GET also answers HEAD."""
    if "*" in methods:
        return frozenset(METHODS)
    found = set(methods)
    if "GET" in found:
        found.add("HEAD")
    return frozenset(found)


def headers_match(match: Match, headers: Mapping[str, str]) -> bool:
    return all(headers.get(lit.name) == lit.equals for lit in match.headers)


# -- shadowing ----------------------------------------------------------------------------


def covers_path(a: PathPattern, b: PathPattern) -> bool:
    """True when every path ``b`` matches is matched by ``a``."""
    na, nb = len(a.segments), len(b.segments)
    if b.tail == "rest":
        if a.tail != "rest" or na > nb:
            return False
        if a.max_depth is not None and (
                b.max_depth is None or (nb - na) + b.max_depth > a.max_depth):
            return False
    elif a.tail == "rest":
        if na > nb or (nb == na and b.tail != "slash"):
            return False
        if a.max_depth is not None and nb - na > a.max_depth:
            return False
    elif na != nb or a.tail != b.tail:
        return False
    return all(want in (GLOB, have) for want, have in zip(a.segments, b.segments, strict=False))


def covers_host(a: HostMatch, b: HostMatch) -> bool:
    if a.kind == "any":
        return True
    if b.kind == "any":
        return False
    if a.kind == "exact":
        return b.kind == "exact" and a.value == b.value
    return b.value.endswith(a.value) and (b.kind == "suffix" or len(b.value) > len(a.value))


def covers_methods(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    return effective_methods(b) <= effective_methods(a)


def covers(a: Match, b: Match) -> bool:
    """True when route ``a`` (earlier) accepts every request route ``b`` accepts."""
    b_literals = {(lit.name, lit.equals) for lit in b.headers}
    return (
        covers_methods(a.methods, b.methods)
        and covers_host(a.host, b.host)
        and all((lit.name, lit.equals) in b_literals for lit in a.headers)
        and covers_path(pattern_of(a.path), pattern_of(b.path))
    )
