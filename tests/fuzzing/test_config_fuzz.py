"""Fuzz tests of the config loader (hypothesis): ``load_text`` on arbitrary text and on
mutated valid configs.

The inputs are arbitrary text, TOML-ish soup, and the accepted example configs
(tests/config_accept/*.toml, placeholders filled) mutated line by line: lines deleted,
duplicated, swapped, or a value replaced by an arbitrary string, integer, float, bool,
array or inline table. Whatever the text, ``load_text``:

- returns a LoadedConfig, or raises ConfigError with at least one error, where every
  problem has a non-empty message, a rule and a line >= 0 (and within the file);
- never raises anything else;
- and for an accepted config, its canonical text (explain) loads again to the same
  canonical text and the same config (the fixed point test_explain_props.py checks over
  generated route tables, here over whatever survives the mutations).

The same check is :func:`check_config_text`, used by the fuzz corpus replay test
(tests/fuzzing/test_fuzz_corpus.py) and the atheris target
tests/fuzzing/fuzz_config_atheris.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from .config_invariants import check_config_text

ACCEPT = Path(__file__).resolve().parent.parent / "config_accept"
SAMPLES = sorted(ACCEPT.glob("*.toml"))

FAST = settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow,
                                                         HealthCheck.data_too_large])

_TOML_FRAGMENTS = [
    "[server]", "[limits]", "[upstreams.a]", "[static.s]", "[routes]", "[auth]",
    "[[route]]", "[defaults]", "[timeouts]", "listen", "profile", "peers", "root", "host",
    " = ", "=", '"', "'", '"""', "[", "]", "{", "}", ",", ".", "\n", "\r\n", "#", " ",
    '"127.0.0.1:8080"', '"dev"', '"production"', '["http://10.0.0.1:8000"]', "1m", '"1m"',
    '"GET /x" = "proxy:a"', '"/**"', '"static:healthcheck"', "true", "0", "-1",
    "1e999", "nan", "inf", "1979-05-27T07:32:00Z", "\x00", "\ufeff", "é",
]
toml_soup = st.lists(st.sampled_from(_TOML_FRAGMENTS) | st.text(max_size=6),
                     max_size=60).map("".join)

_SCALARS = st.one_of(
    st.text(max_size=20).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"')
                              .replace("\n", "\\n") + '"'),
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["true", "false", "[]", "{}", '["a", 1]', '{ a = 1 }', '""', "0",
                     "-1", "1979-05-27", '"1m"', '"0s"', '"/"', '"http://[::1]:0"',
                     '"proxy:nope"', '"static:healthcheck"', "18446744073709551616",
                     "nan", "-inf", "+inf", "1e999"]),
    st.text(max_size=10))
_ASSIGNMENT = re.compile(r"^(\s*(?:\"[^\"]*\"|[A-Za-z0-9_.\-]+)\s*=\s*)(.*)$")


@st.composite
def mutated_configs(draw: st.DrawFn, fill: Any) -> str:
    path = draw(st.sampled_from(SAMPLES))
    lines = fill(path.read_text(encoding="utf-8")).split("\n")
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        index = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["delete", "duplicate", "swap", "value", "value",
                                       "insert"]))
        if action == "delete":
            del lines[index]
        elif action == "duplicate":
            lines.insert(index, lines[index])
        elif action == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[index], lines[other] = lines[other], lines[index]
        elif action == "insert":
            lines.insert(index, draw(st.sampled_from(_TOML_FRAGMENTS) | st.text(max_size=20)))
        else:
            assignments = [i for i, line in enumerate(lines) if _ASSIGNMENT.match(line)]
            if assignments:
                target = draw(st.sampled_from(assignments))
                found = _ASSIGNMENT.match(lines[target])
                assert found is not None
                lines[target] = found.group(1) + draw(_SCALARS)
    return "\n".join(lines)


@FAST
@given(text=st.text(max_size=300) | toml_soup)
@example(text="")
@example(text="[server]\nlisten = 1\n")
@example(text="\ufeff[server]")
def test_load_text_on_arbitrary_text(text: str) -> None:
    event("accepted" if check_config_text(text) else "refused")


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow,
                                                   HealthCheck.data_too_large])
@given(data=st.data())
def test_load_text_on_mutated_valid_configs(config_env: Any, data: st.DataObject) -> None:
    text = data.draw(mutated_configs(config_env.fill))
    event("accepted" if check_config_text(text) else "refused")


def test_the_unmutated_samples_are_accepted(config_env: Any) -> None:
    """The mutation base is sound: every sample loads, and its explain loads again."""
    for path in SAMPLES:
        assert check_config_text(config_env.fill(path.read_text(encoding="utf-8"))), path
