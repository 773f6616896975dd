"""User docs (README.md, docs/, ops/**/README.md) stand alone and their commands run.

- No citation of "SPEC §" sections: that document is not in the repository.
- A shell block that runs a bare ``li-httpd`` belongs to a document that says how to get
  it on PATH (``. .venv/bin/activate`` after ``bash ops/demo``), because the demo and
  test scripts install it into ``.venv`` only.
- What a reader pastes works: toml blocks parse, a block that is a whole config (a
  [server] table and routes, no file to make first) validates, links and anchors
  resolve, and the li_* metrics named are ones the code registers.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from li_httpd.config.loader import load_text

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


_TOML_BLOCK = re.compile(r"^```toml\n(.*?)^```", re.S | re.M)
_FENCED = re.compile(r"^```.*?^```", re.S | re.M)
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_METRIC = re.compile(r"\bli_[a-z0-9_]*[a-z0-9]\b")
_SOURCE_DIRS = ("config", "workers", "supervisor", "shm", "actors", "ops")


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_toml_blocks_are_valid_toml(path: Path) -> None:
    """A reader pastes these: a syntax error (a multi-line inline table, say) would be
    the first thing they meet. Whether a fragment loads as a config is the reader's
    next step (it names tables it leaves out); that it parses is this test's."""
    text = path.read_text(encoding="utf-8")
    for block in _TOML_BLOCK.findall(text):
        try:
            tomllib.loads(block)
        except tomllib.TOMLDecodeError as exc:
            pytest.fail(f"{path.name}: a toml block does not parse ({exc}):\n{block}")


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = _FENCED.sub("", path.read_text(encoding="utf-8"))
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+\s+(.*)$", text, re.M)}


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    broken = []
    for url in _LINK.findall(text):
        if url.startswith(("http://", "https://", "mailto:")):
            continue
        target, _, anchor = url.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists() or (anchor and file.suffix == ".md"
                                 and anchor not in _anchors(file)):
            broken.append(url)
    assert not broken, f"{path.name}: links to nothing: {broken}"


def _registered_metric_names() -> set[str]:
    names = set()
    for folder in _SOURCE_DIRS:
        for source in (ROOT / folder).glob("**/*.py"):
            names.update(re.findall(r"[\"'](li_[a-z0-9_]+)[\"']",
                                    source.read_text(encoding="utf-8")))
    # prometheus-client adds _total to a counter's name (and _bucket, _sum, _count to a
    # histogram's samples).
    return names | {name + "_total" for name in names}


def test_metric_names_in_the_docs_are_exported() -> None:
    """Every li_* metric a user doc names is a name the code registers: a renamed
    metric would otherwise leave dashboards and alerts built from the docs empty."""
    registered = _registered_metric_names()
    unknown = {(path.name, name) for path in USER_DOCS
               for name in _METRIC.findall(path.read_text(encoding="utf-8"))
               if name not in registered and not name.startswith("li_httpd")
               and name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
               not in registered}
    assert not unknown, sorted(unknown)


def _whole_configs() -> list[tuple[str, str]]:
    """toml blocks that are a whole gateway config (a [server] table and routes) and name
    no absolute path, i.e. no file the reader is told to make first."""
    return [(f"{path.name}#{number}", block) for path in USER_DOCS
            for number, block in enumerate(_TOML_BLOCK.findall(path.read_text("utf-8")))
            if re.search(r"^\[server\]\s*(#.*)?$", block, re.M)
            and re.search(r"^(\[routes\]|\[\[route\]\])\s*(#.*)?$", block, re.M)
            and not re.search(r"=\s*\[?\s*[\"']/", block)]


def test_whole_config_blocks_exist() -> None:
    assert any(name.startswith("README.md") for name, _ in _whole_configs())


@pytest.mark.parametrize(("name", "block"), _whole_configs(),
                         ids=[name for name, _ in _whole_configs()])
def test_whole_config_blocks_validate(name: str, block: str) -> None:
    """The README's "save that as gateway.toml" and its likes validate exactly as written
    (warnings allowed, as validate-config allows them)."""
    load_text(block, name)  # raises ConfigError, listing every error, when one does not
