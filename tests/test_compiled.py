"""The mypyc build: which modules it compiles, and proof that a compiled install uses them.

``setup.py`` lists the compiled modules (``COMPILED``, read here with :mod:`ast` so the
list has one home). With ``LI_HTTPD_EXPECT_COMPILED=1`` (``ops/test-compiled`` sets it)
every listed module must import as a C extension (``__file__`` ending in ``.so``), so a
build that silently fell back to pure Python fails; otherwise the check is skipped and
the same modules must merely import (interpreted installs are the default).
"""

from __future__ import annotations

import ast
import importlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def compiled_modules() -> list[str]:
    """``li_httpd.<folder>.<module>`` for every path in setup.py's ``COMPILED``."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "COMPILED" for t in node.targets):
            paths: list[str] = ast.literal_eval(node.value)
            return ["li_httpd." + p.removesuffix(".py").replace("/", ".") for p in paths]
    raise AssertionError("setup.py has no COMPILED list")


def test_compiled_list_names_existing_pure_modules() -> None:
    names = compiled_modules()
    assert names, "nothing compiled"
    for name in names:
        source = ROOT / (name.removeprefix("li_httpd.").replace(".", "/") + ".py")
        assert source.is_file(), f"{name}: no {source}"
        assert "import trio" not in source.read_text(), f"{name} uses trio: not a pure core"


@pytest.mark.parametrize("name", compiled_modules())
def test_module_is_compiled_when_expected(name: str) -> None:
    module = importlib.import_module(name)
    if os.environ.get("LI_HTTPD_EXPECT_COMPILED") != "1":
        pytest.skip("LI_HTTPD_EXPECT_COMPILED=1 not set (interpreted install)")
    assert module.__file__ is not None and module.__file__.endswith(".so"), \
        f"{name} is not compiled: {module.__file__}"
