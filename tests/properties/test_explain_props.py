"""desugar -> explain -> parse is a fixed point over random easy-form configs.

Random route tables (methods, path sugar, header literals, targets among the declared
pools, [routes] table or flat list) are rendered as TOML. Tables that break a route
rule (a shadowed or repeated route, an ambiguous glob) must fail with exactly those
rules, at the line of the offending entry; those entries are dropped and the rest
loaded. Then:

- explain(load(explain(load(x)))) == explain(load(x)), and both decode to one config;
- each route became what SPEC §3's sugar table says (an independent oracle), with the
  name, priority, host and auth that desugaring fills in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from li_httpd.config import ConfigError, LoadedConfig, load_text

ROUTE_RULES = frozenset({"route_shadowed", "duplicate_route", "route_syntax"})
TARGETS = ("proxy:alpha", "proxy:beta", "static:healthcheck", "static:site")
SEGMENTS = ("v1", "chat", "users", "x", "a-b", "~u")
METHOD_PARTS = ("", "*", "GET", "POST", "GET,POST", "PUT,DELETE", "HEAD", "OPTIONS,PATCH")
KEY_HASH = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


@dataclass(frozen=True)
class Entry:
    method: str
    path: str
    literals: tuple[tuple[str, str], ...]
    target: str
    spaces: int

    def key(self) -> str:
        gap = " " * self.spaces
        parts = ([self.method] if self.method else []) + [self.path]
        parts += [f"{n}={v}" for n, v in self.literals]
        return gap.join(parts)


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    segments = draw(st.lists(st.one_of(st.sampled_from(SEGMENTS), st.just("*")), max_size=3))
    sugar = draw(st.sampled_from(["", "/", "/*", "/**"]))
    path = "/" + "/".join(segments) + sugar if segments else draw(st.sampled_from(
        ["/", "/*", "/**"]))
    path = path.replace("//", "/")
    names = draw(st.lists(st.sampled_from(["x-model", "x-tier"]), max_size=2, unique=True))
    literals = tuple((n, draw(st.sampled_from(["gpt-4", "a", "b=c"]))) for n in names)
    return Entry(draw(st.sampled_from(METHOD_PARTS)), path, literals,
                 draw(st.sampled_from(TARGETS)), draw(st.integers(1, 3)))


@dataclass(frozen=True)
class Scenario:
    entries: tuple[Entry, ...]
    list_form: bool
    host: str | None
    keys: bool


scenarios = st.builds(Scenario, st.lists(entries(), min_size=1, max_size=8).map(tuple),
                      st.booleans(), st.sampled_from([None, "api.example.com"]), st.booleans())


def render(scenario: Scenario, root: str) -> tuple[str, list[int]]:
    """The config text and the line of each entry."""
    lines: list[str] = []
    entry_lines: list[int] = []
    if scenario.list_form:
        lines.append("routes = [")
        for entry in scenario.entries:
            lines.append(f'  "{entry.key()} -> {entry.target}",')
            entry_lines.append(len(lines))
        lines += ["]", ""]
    lines += ["[server]", 'listen = "127.0.0.1:8080"', 'profile = "dev"']
    if scenario.host:
        lines.append(f'host = "{scenario.host}"')
    lines += ["", "[upstreams.alpha]", 'peers = ["http://10.0.0.1:8000"]', "",
              "[upstreams.beta]", 'peers = ["http://10.0.0.2:8000", "http://10.0.0.3:8000"]',
              'balance = "least_conn"', "", "[static.site]", f'root = "{root}"', ""]
    if scenario.keys:
        lines += ["[auth]", f'keys = [{{ id = "k", sha256 = "{KEY_HASH}" }}]', ""]
    if not scenario.list_form:
        lines.append("[routes]")
        for entry in scenario.entries:
            lines.append(f'"{entry.key()}" = "{entry.target}"')
            entry_lines.append(len(lines))
    return "\n".join(lines) + "\n", entry_lines


def load_dropping_bad_routes(scenario: Scenario, root: str
                             ) -> tuple[LoadedConfig, list[Entry]] | None:
    current = list(scenario.entries)
    if not scenario.list_form:  # a repeated TOML key is a syntax error, tested elsewhere
        seen: set[str] = set()
        current = [e for e in current if not (e.key() in seen or seen.add(e.key()))]
    while current:
        candidate = Scenario(tuple(current), scenario.list_form, scenario.host, scenario.keys)
        text, entry_lines = render(candidate, root)
        try:
            return load_text(text, "random.toml"), current
        except ConfigError as exc:
            errors = exc.errors
            assert {p.rule for p in errors} <= ROUTE_RULES, [p.render("random.toml")
                                                             for p in errors]
            bad_lines = {p.line for p in errors}
            assert bad_lines <= set(entry_lines), "route errors must point at their entry"
            current = [e for e, line in zip(current, entry_lines, strict=True)
                       if line not in bad_lines]
    return None


def expected_path(path: str) -> tuple[str, str] | None:
    """SPEC §3 sugar: (type, value), or None when the key is ambiguous."""
    if path.endswith("/**"):
        base = path[:-2]
        return ("glob_rest", path) if "*" in base else ("prefix_strip", base)
    if path.endswith("/*") or path.endswith("/"):
        base = path[:-1] if path.endswith("/*") else path
        return None if "*" in base else ("prefix", base)
    return ("glob_one", path) if "*" in path else ("exact", path)


@settings(max_examples=120, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios)
def test_explain_is_a_fixed_point(config_env: Any, scenario: Scenario) -> None:
    outcome = load_dropping_bad_routes(scenario, config_env.placeholders["WWW"])
    if outcome is None:
        return
    loaded, kept = outcome
    event(f"routes kept: {min(len(kept), 4)}{'+' if len(kept) >= 4 else ''}")
    event(f"dropped: {len(scenario.entries) - len(kept) > 0}")
    canonical = loaded.canonical
    again = load_text(canonical, "canonical.toml")
    assert again.canonical == canonical
    assert again.config == loaded.config
    assert load_text(again.canonical, "again.toml").canonical == canonical

    routes = loaded.config.route
    assert len(routes) == len(kept)
    assert len({r.name for r in routes}) == len(routes)
    for index, (entry, route) in enumerate(zip(kept, routes, strict=True)):
        assert route.priority == (index + 1) * 10
        assert expected_path(entry.path) == (route.match.path.kind, route.match.path.value)
        assert route.match.path.max_depth is None
        want_methods = tuple(entry.method.split(",")) if entry.method else ("*",)
        assert route.match.methods == want_methods
        assert tuple((h.name, h.equals) for h in route.match.headers) == entry.literals
        kind, _, name = entry.target.partition(":")
        assert (route.proxy, route.static) == ((name, None) if kind == "proxy" else (None, name))
        host = route.match.host
        if scenario.host:
            assert (host.kind, host.value) == ("exact", scenario.host)
        else:
            assert host.kind == "any"
        assert route.auth == ("api_key" if scenario.keys and kind == "proxy" else "none")
