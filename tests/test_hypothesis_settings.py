"""The hypothesis profile in use is the one tests/conftest.py chose, and no test file
overrides what makes a run reproducible (see the conftest docstring)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

from hypothesis import settings

TESTS = Path(__file__).resolve().parent
PROFILE_ONLY = {"derandomize", "database", "deadline", "print_blob"}
"""Keyword arguments that belong to the profile, never to one test's ``settings``."""


def _expected_profile() -> str:
    if os.environ.get("HYPOTHESIS_PROFILE"):
        return os.environ["HYPOTHESIS_PROFILE"]
    return "ci" if os.environ.get("CI", "").lower() not in ("", "0", "false") else "dev"


def test_the_profile_follows_the_environment() -> None:
    assert settings.get_current_profile_name() == _expected_profile()
    ci = settings.get_profile("ci")
    assert (ci.derandomize, ci.database, ci.deadline, ci.print_blob) == (True, None, None,
                                                                         True)
    dev = settings.get_profile("dev")
    assert (dev.derandomize, dev.deadline, dev.print_blob) == (False, None, True)
    if settings.get_current_profile_name() == "ci":
        assert settings.default is not None and settings.default.derandomize


def _overrides(path: Path, base: Path = TESTS) -> list[str]:
    """``file:line keyword`` for each profile-only keyword passed to a settings call."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else \
            getattr(node.func, "id", None)
        if name not in ("settings", "register_profile"):
            continue
        found += [f"{path.relative_to(base)}:{node.lineno} {keyword.arg}"
                  for keyword in node.keywords if keyword.arg in PROFILE_ONLY]
    return found


def test_no_test_overrides_the_profile() -> None:
    files = [p for p in TESTS.rglob("*.py") if "hypothesis" in p.read_text()
             and p.name != "conftest.py" and p != Path(__file__).resolve()]
    assert len(files) >= 10  # the scan found the property tests
    offending = [hit for path in sorted(files) for hit in _overrides(path)]
    assert not offending, f"set these in the profile (tests/conftest.py): {offending}"


def test_the_scan_sees_an_override(tmp_path: Path) -> None:
    sample = tmp_path / "test_sample.py"
    sample.write_text("from hypothesis import settings\n"
                      "FAST = settings(max_examples=5, deadline=2000)\n")
    assert _overrides(sample, tmp_path) == ["test_sample.py:2 deadline"]
