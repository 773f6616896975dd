"""With lets_encrypt on, a GET route is refused (acme_reserved) exactly when it can match
some path at or below /.well-known/acme-challenge/ (decided here by brute force)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from li_httpd.config import ConfigError, load_text
from li_httpd.config.matching import path_matches, pattern_of
from li_httpd.config.model import PathMatch

RESERVED = [".well-known", "acme-challenge"]
POOL = (".well-known", "acme-challenge", "token", "x")

CONFIG = """\
[server]
listen = "127.0.0.1:8080"
host = "api.example.com"
profile = "dev"

[server.tls]
mode = "lets_encrypt"

[server.tls.lets_encrypt]
email = "ops@example.com"
domains = ["api.example.com"]
environment = "staging"

[upstreams.p]
peers = ["http://10.0.0.1:8000"]

[[route]]
name = "r"
priority = 10
match.methods = ["GET"]
match.path = {path}
proxy = "p"
"""


@st.composite
def paths(draw: st.DrawFn) -> PathMatch:
    kind = draw(st.sampled_from(["exact", "prefix", "prefix_strip", "glob_one", "glob_rest"]))
    literal = st.sampled_from(POOL)
    if kind.startswith("glob"):
        parts = draw(st.lists(st.one_of(literal, st.just("*")), min_size=1, max_size=4))
        if "*" not in parts:
            parts[draw(st.integers(0, len(parts) - 1))] = "*"
    else:
        parts = draw(st.lists(literal, max_size=4))
    body = "/" + "/".join(parts)
    depth = draw(st.one_of(st.none(), st.integers(1, 3)))
    if kind == "exact":
        return PathMatch(kind="exact", value=body + ("/" if parts and draw(st.booleans()) else ""))
    if kind == "glob_one":
        return PathMatch(kind="glob_one", value=body + ("/" if draw(st.booleans()) else ""))
    if kind == "glob_rest":
        return PathMatch(kind="glob_rest", value=body + "/**", max_depth=depth)
    value = body.rstrip("/") + "/"
    if kind == "prefix":
        return PathMatch(kind="prefix", value=value)
    return PathMatch(kind="prefix_strip", value=value, max_depth=depth)


def reaches_reserved(path: PathMatch) -> bool:
    pattern = pattern_of(path)
    fillers = sorted({s for s in pattern.segments if s != "*"} | {"zz"})
    for count in range(6):
        for extra in itertools.product(fillers, repeat=count):
            for slash in (True, False) if count else (True,):
                if path_matches(pattern, [*RESERVED, *extra], slash):
                    return True
    return False


def inline(path: PathMatch) -> str:
    depth = f", max_depth = {path.max_depth}" if path.max_depth is not None else ""
    return f'{{ type = "{path.kind}", value = "{path.value}"{depth} }}'


@settings(max_examples=250)
@given(paths())
def test_acme_reserved_is_exact(path: PathMatch) -> None:
    text = CONFIG.replace("{path}", inline(path))
    try:
        load_text(text, "le.toml")
        rules: set[str] = set()
    except ConfigError as exc:
        rules = {p.rule for p in exc.errors}
    assert rules <= {"acme_reserved"}, rules
    assert ("acme_reserved" in rules) == reaches_reserved(path), path
