"""Hostile and broken configs (SPEC §3 validation rules): tests/config_reject/*.toml.

Each file is named after the rule it breaks (``RULE.toml`` or ``RULE_detail.toml``) and
starts with header comments naming what must be reported:

    # expect: LINE RULE_ID substring of the message      (an error)
    # warning: LINE RULE_ID substring of the message     (a warning; exit 0)

LINE is the 1-based line of the offending key in that file, or 0 for a problem about
settings the file leaves to their defaults (printed without a line: ``FILE: key.path:
message``). ``@NAME@`` placeholders
(static roots, generated certificates) are filled from the ``config_env`` fixture.

Each file is checked in-process (load_text) and through ``li-httpd validate-config``:
exit 1 with exactly one ``FILE:LINE: key.path: message`` line per problem on stderr
(exit 0 and ``ok: FILE`` when only warnings are expected).
"""

from __future__ import annotations

import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from li_httpd.config import ConfigError, Problem, load_text
from li_httpd.config.validate import RULES

HERE = Path(__file__).parent
REJECT_FILES = sorted(HERE.glob("*.toml"))
_HEADER = re.compile(r"# (expect|warning): (\d+) ([a-z_]+) (.+)")
RULE_IDS = frozenset(rule.id for rule in RULES)
WARNING_RULES = frozenset({"censor_disabled", "manual_cert", "unpriced_budget"})
"""Rules that can be reported as warnings (the other rules are always errors)."""


@dataclass(frozen=True)
class Expectation:
    severity: str
    line: int
    rule: str
    text: str

    def matches(self, problem: Problem) -> bool:
        return (problem.severity == self.severity and problem.line == self.line
                and problem.rule == self.rule and self.text in problem.message)


def read_expectations(path: Path) -> list[Expectation]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        found = _HEADER.fullmatch(line)
        if found:
            kind, number, rule, text = found.groups()
            severity = "error" if kind == "expect" else "warning"
            out.append(Expectation(severity, int(number), rule, text.strip()))
    return out


def _problems(text: str, filename: str) -> tuple[list[Problem], bool]:
    """All problems of a config, and whether loading failed."""
    try:
        loaded = load_text(text, filename)
    except ConfigError as exc:
        return list(exc.problems), True
    return list(loaded.warnings), False


@pytest.fixture(scope="module")
def written(config_env: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each reject file with its placeholders filled, written under a temp dir."""
    directory = tmp_path_factory.mktemp("config_reject")
    out = {}
    for path in REJECT_FILES:
        target = directory / path.name
        target.write_text(config_env.fill(path.read_text(encoding="utf-8")), encoding="utf-8")
        out[path.name] = target
    return out


@pytest.fixture(scope="module")
def validated(cli: Any, written: dict[str, Path]
              ) -> dict[str, subprocess.CompletedProcess[str]]:
    """``li-httpd validate-config -c FILE`` for every reject file, a few at a time."""
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        jobs = {name: pool.submit(cli, "validate-config", "-c", str(path))
                for name, path in written.items()}
        return {name: job.result() for name, job in jobs.items()}


def test_reject_files_exist_and_declare_expectations() -> None:
    assert len(REJECT_FILES) >= len(RULES)
    for path in REJECT_FILES:
        expectations = read_expectations(path)
        assert expectations, f"{path.name}: no '# expect:' / '# warning:' header"
        for expectation in expectations:
            assert expectation.rule in RULE_IDS, f"{path.name}: unknown rule {expectation.rule}"
            if expectation.severity == "warning":
                assert expectation.rule in WARNING_RULES, path.name
        rules = {e.rule for e in expectations}
        assert any(path.stem == r or path.stem.startswith(r + "_") for r in rules), (
            f"{path.name}: the file name must start with the rule id it tests")
        text = path.read_text(encoding="utf-8")
        assert "-----BEGIN" not in text, f"{path.name}: generate certificates at test time"


def test_every_rule_has_a_reject_file() -> None:
    covered: set[str] = set()
    for path in REJECT_FILES:
        rules = {e.rule for e in read_expectations(path)}
        covered |= {r for r in rules if path.stem == r or path.stem.startswith(r + "_")}
    missing = sorted(RULE_IDS - covered)
    assert not missing, f"rules without a reject file: {missing}"


def test_censor_disabled_is_only_a_warning(written: dict[str, Path]) -> None:
    text = written["censor_disabled.toml"].read_text(encoding="utf-8")
    loaded = load_text(text, "censor_disabled.toml")
    assert [w.rule for w in loaded.warnings] == ["censor_disabled"]
    acknowledged = text.replace("enabled = false", "enabled = false\nack_disable_censor = true")
    assert load_text(acknowledged, "ack.toml").warnings == ()
    dev = text.replace('profile = "production"', 'profile = "dev"')
    assert load_text(dev, "dev.toml").warnings == ()


@pytest.mark.parametrize("path", REJECT_FILES, ids=lambda p: p.stem)
def test_reject_in_process(path: Path, written: dict[str, Path]) -> None:
    expectations = read_expectations(path)
    filename = str(written[path.name])
    problems, failed = _problems(written[path.name].read_text(encoding="utf-8"), filename)
    want_errors = any(e.severity == "error" for e in expectations)
    assert failed == want_errors, [p.render(filename) for p in problems]
    shown = "\n".join(f"{p.rule} {p.render(filename)}" for p in problems)
    for expectation in expectations:
        assert any(expectation.matches(p) for p in problems), (
            f"missing {expectation}; got:\n{shown}")
    # No stray problems: every error (and every warning of a warning file) is expected.
    for problem in problems:
        if problem.severity == "warning" and want_errors:
            continue
        assert any(e.rule == problem.rule and e.line == problem.line
                   and e.severity == problem.severity for e in expectations), (
            f"unexpected {problem.rule}: {problem.render(filename)}")


@pytest.mark.parametrize("path", REJECT_FILES, ids=lambda p: p.stem)
def test_reject_through_cli(path: Path, written: dict[str, Path],
                            validated: dict[str, subprocess.CompletedProcess[str]]) -> None:
    filename = str(written[path.name])
    result = validated[path.name]
    expectations = read_expectations(path)
    problems, failed = _problems(written[path.name].read_text(encoding="utf-8"), filename)
    lines = result.stderr.splitlines()
    assert lines == [p.render(filename) for p in problems]
    line_format = re.compile(re.escape(filename) + r"(:[1-9]\d*)?: (\S.*?): (\S.*)")
    for line in lines:
        assert line_format.fullmatch(line), f"not FILE:LINE: key.path: message: {line!r}"
    for expectation in expectations:
        where = f"{filename}:{expectation.line}: " if expectation.line else f"{filename}: "
        assert any(line.startswith(where) and expectation.text in line
                   for line in lines), f"{expectation} not printed"
    if failed:
        assert result.returncode == 1, result
        assert result.stdout == ""
    else:
        assert result.returncode == 0, result
        assert result.stdout == f"ok: {filename}\n"
        assert all(": warning: " in line for line in lines)
