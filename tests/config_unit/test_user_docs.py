"""User docs (README.md, docs/, ops/**/README.md) stand alone and their commands run.

- No citation of "SPEC §" sections: that document is not in the repository.
- A shell block that runs a bare ``li-httpd`` belongs to a document that says how to get
  it on PATH (``. .venv/bin/activate`` after ``bash ops/demo``), because the demo and
  test scripts install it into ``.venv`` only.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The project's own docs: not those of packages installed under ops/ (hidden venvs).
USER_DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"),
                    *(path for path in (ROOT / "ops").glob("**/README.md")
                      if not any(part.startswith(".")
                                 for part in path.relative_to(ROOT).parts))])
_SHELL_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)
_BARE_COMMAND = re.compile(r"(^|[|;&]\s*|sudo\s+)li-httpd\s", re.M)


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_docs_cite_no_spec_sections(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "SPEC" not in text, [line for line in text.splitlines() if "SPEC" in line]


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_bare_li_httpd_commands_say_how_to_get_it_on_path(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    bare = [block for block in _SHELL_BLOCK.findall(text) if _BARE_COMMAND.search(block)]
    if bare:
        assert ".venv/bin/activate" in text or "/usr/local/bin" in text, (
            f"{path.name} runs li-httpd without saying how to put it on PATH")
