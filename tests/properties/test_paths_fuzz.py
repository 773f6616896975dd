"""Fuzz test of the path normalizer on arbitrary strings (hypothesis).

test_paths_units.py checks idempotence and the normal form over path-like text (an
alphabet of path characters and escapes). What it does not cover, added here: fully
arbitrary text (any code point, surrogates, controls, long runs of escapes), where
``normalize_path`` must return a string or raise PathError (never another exception),
be idempotent, and agree with ``normalize_slow`` (the fast path for already-normal
paths is an optimization only: same result, same refusals).
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st
from li_httpd.config import PathError, normalize_path
from li_httpd.config.paths import normalize_slow

_ESCAPES = st.builds(lambda a, b: f"%{a}{b}", st.sampled_from("0123456789abcdefABCDEFgz%"),
                     st.sampled_from("0123456789abcdefABCDEFgz%/"))
arbitrary = st.one_of(
    st.text(max_size=60),
    st.text(max_size=60).map(lambda s: "/" + s),
    st.lists(st.sampled_from(["/", ".", "..", "%", "a"]) | _ESCAPES | st.text(max_size=3),
             max_size=25).map(lambda parts: "/" + "".join(parts)))


def _outcome(function: object, raw: str) -> str | None:
    assert callable(function)
    try:
        result = function(raw)
    except PathError:
        return None
    assert isinstance(result, str)
    return result


@settings(max_examples=1000)
@given(raw=arbitrary)
@example(raw="/\ud800")
@example(raw="/%C3%A9\x7f")
@example(raw="/a%")
@example(raw="/%%41")
@example(raw="/" + "%41" * 200)
def test_normalize_path_on_arbitrary_text(raw: str) -> None:
    normal = _outcome(normalize_path, raw)
    assert normal == _outcome(normalize_slow, raw)
    if normal is not None:
        assert normalize_path(normal) == normal
        assert normalize_slow(normal) == normal
        assert normal.startswith("/") and normal.isascii()
