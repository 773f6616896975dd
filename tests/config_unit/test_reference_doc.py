"""docs/configuration.md carries the reference generated from the schema; keep it current."""

from __future__ import annotations

from pathlib import Path

from li_httpd.config.reference import render_reference, splice

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_configuration_reference_is_current() -> None:
    document = DOC.read_text()
    assert splice(document, render_reference()) == document, (
        "docs/configuration.md is stale: run "
        "`.venv/bin/python -m li_httpd.config.reference docs/configuration.md`")
