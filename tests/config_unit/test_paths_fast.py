"""The fast path of normalize_path must agree with the algorithm it short-cuts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from li_httpd.config.paths import PathError, normalize_path, normalize_slow

_ALPHABET = "/.%aAz09-_~!$&'()*+,;=:@\\ ?#\x00é"
_paths = st.text(alphabet=_ALPHABET, max_size=40).map(lambda s: "/" + s) | st.text(
    alphabet=_ALPHABET, max_size=20)


def _outcome(function: object, raw: str) -> str:
    try:
        return function(raw)  # type: ignore[operator, no-any-return]
    except PathError:
        return "<refused>"


@given(_paths)
def test_fast_path_agrees_with_the_algorithm(raw: str) -> None:
    assert _outcome(normalize_path, raw) == _outcome(normalize_slow, raw)


def test_typical_paths_take_the_fast_path_unchanged() -> None:
    for raw in ("/", "/health", "/v1/chat/completions", "/files/a.b/c~d/", "/.well-known/x"):
        assert normalize_path(raw) == normalize_slow(raw) == raw
