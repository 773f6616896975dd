"""The compiled router: first match wins, 404 vs 405, prefix_strip's upstream path.

:func:`compile_routes` runs once per config load. It sorts routes by priority and
indexes them by (method, first path segment): a request only scans routes that could
match its method and first segment (plus routes whose first segment is a glob or that
match every path), so lookup cost does not grow with the size of unrelated parts of the
table. :func:`naive_lookup` is the plain first-match scan the index must agree with.

The router does no I/O and never raises on request data: the caller normalizes the
path (:func:`~.paths.normalize_path`) and the host (:func:`~.matching.normalize_host`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .checks import METHODS
from .matching import (
    GLOB,
    PathPattern,
    effective_methods,
    headers_match,
    host_matches,
    path_matches,
    pattern_of,
    split_path,
    upstream_path,
)
from .model import Route

_OTHER_METHOD = ""


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    route: Route
    pattern: PathPattern
    methods: frozenset[str]
    first_segment: str | None
    """The literal first segment every matching path has, or None."""

    @property
    def name(self) -> str:
        return self.route.name

    @property
    def action(self) -> str:
        return "proxy" if self.route.proxy is not None else "static"

    @property
    def target(self) -> str:
        return self.route.proxy if self.route.proxy is not None else str(self.route.static)

    def matches_except_method(self, host: str, segments: list[str], slash: bool,
                              headers: Mapping[str, str]) -> bool:
        match = self.route.match
        return (path_matches(self.pattern, segments, slash)
                and host_matches(match.host, host)
                and headers_match(match, headers))


@dataclass(frozen=True, slots=True)
class Found:
    route: CompiledRoute
    upstream_path: str


@dataclass(frozen=True, slots=True)
class NotFound:
    status: int
    allow: tuple[str, ...] = ()
    """For 405: the methods the matching routes accept (the Allow header)."""


Lookup = Found | NotFound


def _compile_one(route: Route) -> CompiledRoute:
    pattern = pattern_of(route.match.path)
    first = pattern.segments[0] if pattern.segments and pattern.segments[0] != GLOB else None
    return CompiledRoute(route, pattern, effective_methods(route.match.methods), first)


class Router:
    """Routes requests for one config generation. Immutable after construction."""

    def __init__(self, routes: Iterable[Route]) -> None:
        ordered = sorted(routes, key=lambda r: r.priority)
        self.routes: tuple[CompiledRoute, ...] = tuple(_compile_one(r) for r in ordered)
        firsts = {r.first_segment for r in self.routes if r.first_segment is not None}
        method_keys = {*METHODS, _OTHER_METHOD}
        self._by_method: dict[tuple[str, str | None], tuple[CompiledRoute, ...]] = {}
        self._any_method: dict[str | None, tuple[CompiledRoute, ...]] = {}
        for segment in [*firsts, None]:
            by_segment = tuple(r for r in self.routes
                               if r.first_segment is None or r.first_segment == segment)
            self._any_method[segment] = by_segment
            for method in method_keys:
                self._by_method[(method, segment)] = tuple(
                    r for r in by_segment if method in r.methods)
        self._firsts = frozenset(firsts)
        self.needs_headers = any(r.route.match.headers for r in self.routes)
        """False when no route has header literals: callers may pass an empty mapping."""

    def lookup(self, method: str, host: str, path: str,
               headers: Mapping[str, str]) -> Lookup:
        segments, slash = split_path(path)
        first = segments[0] if segments else None
        segment_key = first if first in self._firsts else None
        method_key = method if method in METHODS else _OTHER_METHOD
        # Candidates were filtered by method when the index was built.
        for candidate in self._by_method[(method_key, segment_key)]:
            if candidate.matches_except_method(host, segments, slash, headers):
                return Found(candidate, upstream_path(candidate.pattern, path))
        return _miss(self._any_method[segment_key], host, segments, slash, headers)


def _miss(candidates: Iterable[CompiledRoute], host: str, segments: list[str], slash: bool,
          headers: Mapping[str, str]) -> NotFound:
    allowed: set[str] = set()
    for candidate in candidates:
        if candidate.matches_except_method(host, segments, slash, headers):
            allowed |= candidate.methods
    if allowed:
        return NotFound(405, tuple(m for m in METHODS if m in allowed))
    return NotFound(404)


def scan(compiled: Sequence[CompiledRoute], method: str, host: str, path: str,
         headers: Mapping[str, str]) -> Lookup:
    """Reference semantics: try every route in priority order (no index)."""
    segments, slash = split_path(path)
    for candidate in compiled:
        if method in candidate.methods and candidate.matches_except_method(
                host, segments, slash, headers):
            return Found(candidate, upstream_path(candidate.pattern, path))
    return _miss(compiled, host, segments, slash, headers)


def naive_lookup(routes: Iterable[Route], method: str, host: str, path: str,
                 headers: Mapping[str, str]) -> Lookup:
    """:func:`scan` over freshly compiled routes: what the indexed Router must agree with."""
    compiled = [_compile_one(r) for r in sorted(routes, key=lambda r: r.priority)]
    return scan(compiled, method, host, path, headers)
