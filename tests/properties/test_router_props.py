"""Properties of the MatchExpr algebra and the compiled router.

- The indexed :class:`Router` agrees with :func:`naive_lookup` (the plain first-match
  scan) on random route tables and random requests.
- ``covers(a, b)`` is sound: when it says route ``a`` covers route ``b``, no request
  matches ``b`` but not ``a`` (so the shadowing error never rejects a reachable route).
- ``covers`` is also complete: when it says no, some request matches ``b`` and not ``a``
  (so every fully shadowed route is reported).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hypothesis import event, given, settings
from hypothesis import strategies as st
from li_httpd.config import Found, Route, Router, explain, load_text
from li_httpd.config.checks import METHODS
from li_httpd.config.matching import (
    covers,
    effective_methods,
    headers_match,
    pattern_of,
)
from li_httpd.config.matching import host_matches as host_matches_
from li_httpd.config.matching import path_matches as path_matches_
from li_httpd.config.model import (
    Config,
    HeaderLiteral,
    HostMatch,
    Match,
    PathMatch,
    Peer,
    Upstream,
)
from li_httpd.config.router import naive_lookup

SEGMENTS = ("a", "b", "v1")
"""Literal segments routes use; requests also use OTHER_SEGMENT and a literal '*'."""
OTHER_SEGMENT = "zz"
HOSTS = ("a.example.com", "b.example.com")
REQUEST_HOSTS = (*HOSTS, "x.a.example.com", "example.com", "other.org")
HEADER_NAMES = ("x-a", "x-b")
HEADER_VALUES = ("1", "2")
REQUEST_METHODS = (*METHODS, "FOO")


@dataclass(frozen=True)
class Request:
    method: str
    host: str
    path: str
    headers: Mapping[str, str]


# -- strategies -----------------------------------------------------------------------------


@st.composite
def path_matches(draw: st.DrawFn, segments: tuple[str, ...] = SEGMENTS,
                 max_len: int = 3) -> PathMatch:
    kind = draw(st.sampled_from(["exact", "prefix", "prefix_strip", "glob_one", "glob_rest"]))
    literal = st.sampled_from(segments)
    if kind in ("glob_one", "glob_rest"):
        parts = draw(st.lists(st.one_of(literal, st.just("*")), min_size=1, max_size=max_len))
        if "*" not in parts:
            parts[draw(st.integers(0, len(parts) - 1))] = "*"
    else:
        parts = draw(st.lists(literal, max_size=max_len))
    body = "/" + "/".join(parts)
    depth = draw(st.one_of(st.none(), st.integers(1, 3)))
    if kind == "exact":
        slash = draw(st.booleans()) and bool(parts)
        return PathMatch(kind="exact", value=body + ("/" if slash else ""))
    if kind == "glob_one":
        slash = draw(st.booleans())
        return PathMatch(kind="glob_one", value=body + ("/" if slash else ""))
    if kind == "glob_rest":
        return PathMatch(kind="glob_rest", value=body + "/**", max_depth=depth)
    value = body.rstrip("/") + "/"
    if kind == "prefix":
        return PathMatch(kind="prefix", value=value)
    return PathMatch(kind="prefix_strip", value=value, max_depth=depth)


@st.composite
def host_matches(draw: st.DrawFn) -> HostMatch:
    kind = draw(st.sampled_from(["any", "exact", "suffix"]))
    if kind == "any":
        return HostMatch()
    if kind == "exact":
        return HostMatch(kind="exact", value=draw(st.sampled_from(HOSTS)))
    return HostMatch(kind="suffix", value=draw(st.sampled_from([".example.com",
                                                                 ".a.example.com"])))


@st.composite
def methods(draw: st.DrawFn) -> tuple[str, ...]:
    if draw(st.integers(0, 3)) == 0:
        return ("*",)
    chosen = draw(st.lists(st.sampled_from(METHODS), min_size=1, max_size=3, unique=True))
    return tuple(chosen)


@st.composite
def header_literals(draw: st.DrawFn) -> tuple[HeaderLiteral, ...]:
    names = draw(st.lists(st.sampled_from(HEADER_NAMES), max_size=2, unique=True))
    return tuple(HeaderLiteral(name=n, equals=draw(st.sampled_from(HEADER_VALUES)))
                 for n in names)


def matches(segments: tuple[str, ...] = SEGMENTS, max_len: int = 3
            ) -> st.SearchStrategy[Match]:
    return st.builds(lambda m, h, p, lits: Match(methods=m, host=h, path=p, headers=lits),
                     methods(), host_matches(), path_matches(segments, max_len),
                     header_literals())


@st.composite
def requests(draw: st.DrawFn) -> Request:
    parts = draw(st.lists(st.sampled_from([*SEGMENTS, OTHER_SEGMENT, "*"]), max_size=5))
    slash = draw(st.booleans()) or not parts
    path = "/" + "/".join(parts) + ("/" if slash and parts else "")
    names = draw(st.lists(st.sampled_from(HEADER_NAMES), max_size=2, unique=True))
    headers = {n: draw(st.sampled_from(HEADER_VALUES)) for n in names}
    return Request(draw(st.sampled_from(REQUEST_METHODS)), draw(st.sampled_from(REQUEST_HOSTS)),
                   path, headers)


@st.composite
def request_for(draw: st.DrawFn, match: Match) -> Request:
    """A request that ``match`` accepts (so covers() is tested where it matters)."""
    if "*" in match.methods:
        method = draw(st.sampled_from(METHODS))  # "*" is every supported method
    else:
        method = draw(st.sampled_from([*match.methods, *(["HEAD"] if "GET" in match.methods
                                                          else [])]))
    host = {"any": lambda: draw(st.sampled_from(REQUEST_HOSTS)),
            "exact": lambda: match.host.value,
            "suffix": lambda: draw(st.sampled_from(["x", "y.z"])) + match.host.value,
            }[match.host.kind]()
    pattern = pattern_of(match.path)
    filler = st.sampled_from([*SEGMENTS, OTHER_SEGMENT])
    parts = [draw(filler) if s == "*" else s for s in pattern.segments]
    if pattern.tail == "end":
        slash = False
    elif pattern.tail == "slash":
        slash = True
    else:
        limit = pattern.max_depth if pattern.max_depth is not None else 3
        extra = draw(st.lists(filler, max_size=limit))
        parts += extra
        slash = draw(st.booleans()) or not extra
    path = "/" + "/".join(parts) + ("/" if slash and parts else "")
    headers = {lit.name: lit.equals for lit in match.headers}
    for name in HEADER_NAMES:
        if name not in headers and draw(st.booleans()):
            headers[name] = draw(st.sampled_from(HEADER_VALUES))
    return Request(method, host, path, headers)


def route_tables(max_routes: int = 8) -> st.SearchStrategy[list[Route]]:
    def build(items: list[tuple[Match, bool]], order: list[int]) -> list[Route]:
        return [Route(name=f"r{i}", priority=(order[i] + 1) * 10, match=m,
                      **({"proxy": "p"} if is_proxy else {"static": "healthcheck"}))
                for i, (m, is_proxy) in enumerate(items)]

    return st.lists(st.tuples(matches(), st.booleans()), min_size=1,
                    max_size=max_routes).flatmap(
        lambda items: st.permutations(range(len(items))).map(
            lambda order: build(items, list(order))))


# -- helpers ------------------------------------------------------------------------------


def accepts(match: Match, request: Request) -> bool:
    route = Route(name="r", priority=1, match=match, proxy="p")
    found = naive_lookup([route], request.method, request.host, request.path, request.headers)
    return isinstance(found, Found)


def _same(left: object, right: object) -> bool:
    if isinstance(left, Found) and isinstance(right, Found):
        return (left.route.name == right.route.name
                and left.upstream_path == right.upstream_path)
    return left == right


# -- properties -----------------------------------------------------------------------------


@settings(max_examples=200)
@given(route_tables(), st.data())
def test_router_agrees_with_naive_scan(routes: list[Route], data: st.DataObject) -> None:
    router = Router(routes)
    matching_requests = st.sampled_from(routes).flatmap(lambda r: request_for(r.match))
    for _ in range(12):
        request = data.draw(st.one_of(requests(), matching_requests))
        indexed = router.lookup(request.method, request.host, request.path, request.headers)
        naive = naive_lookup(routes, request.method, request.host, request.path,
                             request.headers)
        assert _same(indexed, naive), (request, indexed, naive)


@settings(max_examples=150)
@given(route_tables(), st.data())
def test_first_match_wins_in_priority_order(routes: list[Route], data: st.DataObject) -> None:
    request = data.draw(st.sampled_from(routes).flatmap(lambda r: request_for(r.match)))
    result = Router(routes).lookup(request.method, request.host, request.path, request.headers)
    winners = [r for r in sorted(routes, key=lambda r: r.priority) if accepts(r.match, request)]
    assert winners, "request_for() built a request its own route rejects"
    assert isinstance(result, Found)
    assert result.route.name == winners[0].name


@st.composite
def narrower(draw: st.DrawFn, a: Match) -> Match:
    """A match that is often (not always) covered by ``a``: same or narrower parts."""
    if "*" in a.methods or draw(st.booleans()):
        new_methods = draw(methods())
    else:
        choices = [*a.methods, *(["HEAD"] if "GET" in a.methods else [])]
        new_methods = tuple(draw(st.lists(st.sampled_from(choices), min_size=1, unique=True)))
    if a.host.kind == "suffix" and draw(st.booleans()):
        host = HostMatch(kind="exact", value="x" + a.host.value)
    elif a.host.kind != "any" and draw(st.booleans()):
        host = a.host
    else:
        host = draw(host_matches())
    extra = draw(header_literals())
    names = {lit.name for lit in a.headers}
    literals = (*a.headers, *(lit for lit in extra if lit.name not in names))
    path = a.path if draw(st.booleans()) else draw(path_matches())
    return Match(methods=new_methods, host=host, path=path, headers=literals)


@settings(max_examples=600)
@given(matches().flatmap(lambda a: st.tuples(st.just(a), st.one_of(matches(), narrower(a)))),
       st.data())
def test_covers_is_sound(pair: tuple[Match, Match], data: st.DataObject) -> None:
    a, b = pair
    request = data.draw(request_for(b))
    assert accepts(b, request), "request_for() built a request its own route rejects"
    covered = covers(a, b)
    event(f"covers={covered}")
    if covered:
        assert accepts(a, request), (a, b, request)


def _paths_b_accepts(b: PathMatch, limit: int = 7) -> list[tuple[list[str], bool]]:
    """Paths (segments, trailing slash) that ``b`` accepts, free segments filled with a
    segment no pattern uses: enough to tell whether another pattern accepts them all
    (a literal of the other pattern never equals the filler, so only lengths, tails
    and fixed literals decide)."""
    pattern = pattern_of(b)
    base = [OTHER_SEGMENT if s == "*" else s for s in pattern.segments]
    if pattern.tail == "end":
        return [(base, False)] if base else []
    if pattern.tail == "slash":
        return [(base, True)]
    depth = pattern.max_depth if pattern.max_depth is not None else limit
    out = [(base, True)]
    for count in range(1, depth + 1):
        parts = base + [OTHER_SEGMENT] * count
        out += [(parts, False), (parts, True)]
    return out


def _header_sets() -> list[dict[str, str]]:
    sets: list[dict[str, str]] = [{}]
    for name in HEADER_NAMES:
        sets = [h | extra for h in sets for extra in ({}, *({name: v} for v in HEADER_VALUES))]
    return sets


_UNIVERSE_HOSTS = (*REQUEST_HOSTS, "x.example.com", "y.z.a.example.com")


@settings(max_examples=600)
@given(matches(), matches())
def test_covers_is_complete(a: Match, b: Match) -> None:
    """covers(a, b) is exactly "every request b accepts, a accepts", decided one
    dimension at a time (methods, host, headers and path are independent)."""
    a_methods, b_methods = effective_methods(a.methods), effective_methods(b.methods)
    methods_ok = all(m in a_methods for m in REQUEST_METHODS if m in b_methods)
    hosts_ok = all(host_matches_(a.host, h) for h in _UNIVERSE_HOSTS
                   if host_matches_(b.host, h))
    headers_ok = all(headers_match(a, h) for h in _header_sets() if headers_match(b, h))
    a_pattern = pattern_of(a.path)
    paths_ok = all(path_matches_(a_pattern, segments, slash)
                   for segments, slash in _paths_b_accepts(b.path))
    assert covers(a, b) == (methods_ok and hosts_ok and headers_ok and paths_ok), (a, b)


@settings(max_examples=100)
@given(matches())
def test_generated_matches_are_valid_routes(match: Match) -> None:
    """The strategies only build matches that validation accepts."""
    route = Route(name="r", priority=10, match=match, proxy="p")
    config = Config(upstreams={"p": Upstream(peers=(Peer(url="http://10.0.0.1:8000"),))},
                    route=(route,))
    load_text(explain(config), "generated.toml")
