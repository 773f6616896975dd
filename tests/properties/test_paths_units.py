"""Properties of the path normalization algorithm and of size/duration units."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from li_httpd.config import PathError, normalize_path
from li_httpd.config.units import (
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)

UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
PATH_CHARS = UNRESERVED + "!$&'()*+,;=:@/"

# Pieces chosen to hit every branch: dots, slashes, backslashes, escapes of unreserved,
# reserved, refused and non-ASCII bytes, malformed escapes and raw characters that must
# be encoded.
_PIECES = st.sampled_from([
    "/", "//", ".", "..", "/./", "/../", "a", "B", "v1", "~", "-", "_", "*", ":", "@",
    "%2e", "%2E", "%2e%2e", "%41", "%7e", "%7E", "%2F", "%2f", "%5C", "%5c", "%00",
    "%20", "%25", "%3f", "%3F", "%C3%A9", "%c3%a9", "%", "%2", "%zz", "%g1", "\\",
    " ", "é", "?", "#", "\x00", "\n",
])
adversarial_paths = st.builds(lambda parts: "/" + "".join(parts), st.lists(_PIECES, max_size=12))
any_text = st.text(alphabet=st.sampled_from(PATH_CHARS + "%\\ é0123456789abcdefABCDEF"),
                   max_size=40)

_ESCAPE = re.compile(r"%([0-9A-F]{2})")


@settings(max_examples=800)
@given(st.one_of(adversarial_paths, any_text, any_text.map(lambda s: "/" + s)))
@example("/a/%2e%2e/b")
@example("/%2e%2E")
@example("/.%2e")
@example("/a/.")
@example("//./.")
def test_normalize_path_is_idempotent(raw: str) -> None:
    try:
        normal = normalize_path(raw)
    except PathError:
        return
    assert normalize_path(normal) == normal
    # The normal form: absolute, no empty, '.' or '..' segments, only path characters,
    # and every remaining escape is an uppercase escape of a byte that must stay encoded.
    assert normal.startswith("/")
    assert "//" not in normal
    body = normal[1:].removesuffix("/")
    for segment in body.split("/") if body else []:
        assert segment not in ("", ".", "..")
    assert all(c in PATH_CHARS or c == "%" for c in normal)
    for match in re.finditer(r"%(..)?", normal):
        escape = _ESCAPE.fullmatch(match.group(0))
        assert escape is not None, normal
        byte = int(escape.group(1), 16)
        assert chr(byte) not in UNRESERVED and byte not in (0x00, 0x2F, 0x5C)


@settings(max_examples=300)
@given(adversarial_paths)
def test_refused_escapes_and_dotdot_always_refused(raw: str) -> None:
    lowered = raw.lower()
    refused = any(e in lowered for e in ("%2f", "%5c", "%00")) or "\\" in raw
    try:
        normal = normalize_path(raw)
    except PathError:
        return
    assert not refused, f"{raw!r} -> {normal!r}"
    decoded_segments = re.sub(r"%2e", ".", raw, flags=re.IGNORECASE).split("/")
    assert ".." not in decoded_segments, f"{raw!r} -> {normal!r}"


@settings(max_examples=300)
@given(st.lists(st.sampled_from(["a", "b", "%41", "~", "x%20y"]), min_size=1, max_size=5),
       st.lists(st.sampled_from(["/", "//", "/./", "/%2e/"]), min_size=1, max_size=5),
       st.booleans())
def test_extra_slashes_and_dots_do_not_change_the_path(segments: list[str],
                                                      separators: list[str],
                                                      trailing: bool) -> None:
    plain = "/" + "/".join(segments) + ("/" if trailing else "")
    noisy = ""
    for index, segment in enumerate(segments):
        noisy += separators[index % len(separators)] + segment
    noisy += "/" if trailing else ""
    assert normalize_path(noisy) == normalize_path(plain)


@pytest.mark.parametrize(("raw", "normal"), [
    ("/", "/"),
    ("//", "/"),
    ("/a//b/", "/a/b/"),
    ("/a/./b", "/a/b"),
    ("/a/.", "/a/"),
    ("/%7e%41", "/~A"),
    ("/%c3%a9", "/%C3%A9"),
    ("/a%3fb", "/a%3Fb"),
    ("/%25", "/%25"),
    ("/a/%2E/b", "/a/b"),
    ("/...", "/..."),
    ("/a;b=c", "/a;b=c"),
])
def test_normalize_golden(raw: str, normal: str) -> None:
    assert normalize_path(raw) == normal


@pytest.mark.parametrize("raw", [
    "", "a", "a/b", "/a/../b", "/..", "/%2e%2e", "/.%2E/", "/a%2Fb", "/a%2fb", "/a%5Cb",
    "/a%00", "/a\\b", "/%", "/%2", "/%zz", "/a b", "/é", "/a?b", "/a#b", "/\x00",
])
def test_normalize_refuses(raw: str) -> None:
    with pytest.raises(PathError):
        normalize_path(raw)


# -- units ----------------------------------------------------------------------------------

_SIZE_FACTORS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_DURATION_FACTORS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}

size_texts = st.builds(lambda n, unit: f"{n}{unit}", st.integers(0, 10**12 - 1),
                       st.sampled_from(list(_SIZE_FACTORS)))
duration_texts = st.builds(lambda n, unit: f"{n}{unit}", st.integers(0, 10**9 - 1),
                           st.sampled_from(list(_DURATION_FACTORS)))


@settings(max_examples=500)
@given(st.one_of(st.integers(0, 10**12 - 1), size_texts.map(parse_size)))
def test_size_format_parse_round_trip(value: int) -> None:
    text = format_size(value)
    assert parse_size(text) == value
    assert format_size(parse_size(text)) == text


@settings(max_examples=500)
@given(st.one_of(st.integers(0, 10**9 - 1), duration_texts.map(parse_duration)))
def test_duration_format_parse_round_trip(value: int) -> None:
    text = format_duration(value)
    assert parse_duration(text) == value
    assert format_duration(parse_duration(text)) == text


@settings(max_examples=300)
@given(size_texts)
def test_size_text_means_number_times_unit(text: str) -> None:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", text).groups()  # type: ignore[union-attr]
    assert parse_size(text) == int(number) * _SIZE_FACTORS[unit]


@settings(max_examples=300)
@given(duration_texts)
def test_duration_text_means_number_times_unit(text: str) -> None:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text).groups()  # type: ignore[union-attr]
    assert parse_duration(text) == int(number) * _DURATION_FACTORS[unit]
