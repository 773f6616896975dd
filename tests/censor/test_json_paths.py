"""JSON deny paths: parsing (agreeing with the config check) and matching path stacks."""

from __future__ import annotations

import pytest
from li_httpd.config.checks import json_path
from li_httpd.workers.json_redact import DenyPaths, Step, compile_paths, parse_path

PARSED = [
    ("$.api_key", (Step("api_key"),)),
    ("$.a.b", (Step("a"), Step("b"))),
    ("$.items[*].field", (Step("items"), Step(None), Step("field"))),
    ("$.obj.*", (Step("obj"), Step(None))),
    ("$.*[*]", (Step(None), Step(None))),
    ("$..secret", (Step("secret", descendant=True),)),
    ("$..users[*].password",
     (Step("users", descendant=True), Step(None), Step("password"))),
    ("$.a..b-c", (Step("a"), Step("b-c", descendant=True))),
    ("$.data..token[*]", (Step("data"), Step("token", descendant=True), Step(None))),
]

REFUSED = ["api_key", "$", "$.", "$..", "$...a", "$..*", "$.a.", "$[*]", "$.a[*][*]",
           "$.a[0]", "$.users[?(@.admin)].password", "$.1a", "$.a b", "$['a']", ".a",
           "$.a..", "$.a.[*]"]


@pytest.mark.parametrize(("path", "steps"), PARSED)
def test_parse(path: str, steps: tuple[Step, ...]) -> None:
    assert parse_path(path) == steps
    assert json_path(path) is None


@pytest.mark.parametrize("path", REFUSED)
def test_refused_by_parser_and_config(path: str) -> None:
    with pytest.raises(ValueError, match="not a supported JSON path"):
        parse_path(path)
    message = json_path(path)
    assert message is not None
    assert "$..field (any depth)" in message
    with pytest.raises(ValueError, match="not a supported JSON path"):
        compile_paths([path])


def matched(deny: DenyPaths, stack: tuple[str | int, ...]) -> str | None:
    """The deny path that replaces the value at ``stack`` or one of its ancestors."""
    state = 0
    for key in stack:
        state = deny.child(state, key)
        if deny.hit[state] >= 0:
            return deny.paths[deny.hit[state]]
    return None


MATCHES: list[tuple[list[str], tuple[str | int, ...], str | None]] = [
    (["$.api_key"], ("api_key",), "$.api_key"),
    (["$.api_key"], ("x", "api_key"), None),
    (["$.api_key"], (0,), None),
    (["$.a.b"], ("a", "b", "c"), "$.a.b"),
    (["$.a.b"], ("a",), None),
    (["$.a.b"], ("a", 0, "b"), None),
    (["$.items[*].field"], ("items", 3, "field"), "$.items[*].field"),
    (["$.items[*].field"], ("items", "k", "field"), "$.items[*].field"),  # RFC 9535 `[*]`
    (["$.items[*].field"], ("items", "field"), None),
    (["$.obj.*"], ("obj", "anything"), "$.obj.*"),
    (["$.obj.*"], ("obj", 7), "$.obj.*"),
    (["$.obj.*"], ("obj",), None),
    (["$..secret"], ("secret",), "$..secret"),
    (["$..secret"], ("a", 0, "b", 1, "secret"), "$..secret"),
    (["$..secret"], ("a", "secrets"), None),
    (["$..secret"], (0,), None),
    (["$..users[*].password"], ("users", 0, "password"), "$..users[*].password"),
    (["$..users[*].password"], ("org", 2, "users", 5, "password"),
     "$..users[*].password"),
    (["$..users[*].password"], ("org", "users", "password"), None),
    (["$..users[*].password"], ("users", 0, "x", "password"), None),
    (["$.a..b"], ("a", "b"), "$.a..b"),
    (["$.a..b"], ("a", "x", 0, "b"), "$.a..b"),
    (["$.a..b"], ("b",), None),
    (["$.a..b"], ("x", "a", "b"), None),
    (["$..a..b"], ("x", "a", "y", "b"), "$..a..b"),
    (["$..a.b"], ("a", "a", "b"), "$..a.b"),  # the second `a` starts the match
    (["$..a.b"], ("a", "c", "b"), None),
    # the first configured path that matches is the hit; an ancestor's hit wins
    (["$..secret", "$.secret"], ("secret",), "$..secret"),
    (["$.secret", "$..secret"], ("secret",), "$.secret"),
    (["$.a.b", "$.a"], ("a", "b"), "$.a"),
    ([], ("a",), None),
]


@pytest.mark.parametrize(("paths", "stack", "expected"), MATCHES)
def test_matching(paths: list[str], stack: tuple[str | int, ...],
                  expected: str | None) -> None:
    assert matched(compile_paths(paths), stack) == expected


def test_compiled_paths_are_cached_and_hashable() -> None:
    first = compile_paths(["$.a", "$..b"])
    assert compile_paths(("$.a", "$..b")) is first
    assert first == compile_paths(iter(["$.a", "$..b"]))
    assert hash(first) == hash(compile_paths(["$.a", "$..b"]))
    assert first != compile_paths(["$..b", "$.a"])


def test_nothing_is_live_without_paths() -> None:
    deny = compile_paths([])
    assert not deny.live[0]
    assert deny.dead == 0
    assert deny.child(0, "a") == deny.child(0, 0) == deny.dead


def test_other_keys_share_one_transition() -> None:
    """The automaton only tells named keys apart: its size does not depend on the
    document, and a key outside the paths' names goes to one state."""
    deny = compile_paths(["$..users[*].password", "$.api_key", "$.obj.*"])
    assert len(deny.hit) < 20
    assert deny.child(0, "zzz") == deny.child(0, "other") == deny.other[0]
    assert deny.child(0, "us\u00e9rs") == deny.other[0]
