"""The mypyc build: which modules it compiles, and proof that a compiled install uses them.

``setup.py`` lists the compiled modules (``COMPILED``, read here with :mod:`ast` so the
list has one home). With ``LI_HTTPD_EXPECT_COMPILED=1`` (``ops/test-compiled`` sets it)
every listed module must import as a C extension (``__file__`` ending in ``.so``), so a
build that silently fell back to pure Python fails; otherwise the check is skipped and
the same modules must merely import (interpreted installs are the default).

The list covers the request path: every module of ``workers/`` and ``shm/`` (a new one
is compiled unless :data:`NOT_COMPILED` says why not), the router with its path and host
matching, and the worker's log pipeline. Never ``supervisor/`` or ``actors/``: the master
and its actors are not on the request path. One mypyc difference that mypy does not
catch (an ``except`` name reused for another type) is checked on the compiled sources
here; the others (no monkeypatching of a compiled function or class, checked casts) are
listed in docs/DEPENDENCIES.md.
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


NOT_COMPILED: dict[str, str] = {}
"""Modules of workers/ and shm/ left interpreted, with the reason (none today)."""

ALWAYS_COMPILED = ("workers", "shm")
NEVER_COMPILED = ("supervisor", "actors")


def _source(name: str) -> Path:
    return ROOT / (name.removeprefix("li_httpd.").replace(".", "/") + ".py")


def test_compiled_list_names_existing_request_path_modules() -> None:
    names = compiled_modules()
    assert names, "nothing compiled"
    assert len(set(names)) == len(names), "a module is listed twice"
    for name in names:
        assert _source(name).is_file(), f"{name}: no {_source(name)}"
        assert not name.endswith(".__init__"), f"{name}: package __init__ files stay Python"
        assert name.split(".")[1] not in NEVER_COMPILED, f"{name} is not on the request path"


def test_every_worker_and_shm_module_is_compiled() -> None:
    listed = set(compiled_modules())
    for folder in ALWAYS_COMPILED:
        for path in sorted((ROOT / folder).glob("*.py")):
            name = f"li_httpd.{folder}.{path.stem}"
            if path.stem == "__init__" or name in NOT_COMPILED:
                continue
            assert name in listed, f"{name} is on the request path: add it to COMPILED " \
                                   "in setup.py, or to NOT_COMPILED here with the reason"
    assert not listed & set(NOT_COMPILED), "a module is both compiled and not compiled"


def _except_names_with_several_types(tree: ast.Module) -> list[str]:
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        types: dict[str, set[str]] = {}
        for node in ast.walk(function):
            if isinstance(node, ast.ExceptHandler) and node.name:
                caught = ast.unparse(node.type) if node.type else "BaseException"
                types.setdefault(node.name, set()).add(caught)
        found += [f"{function.name} (line {function.lineno}): `as {name}` for "
                  + ", ".join(sorted(kinds)) for name, kinds in types.items() if len(kinds) > 1]
    return found


@pytest.mark.parametrize("name", compiled_modules())
def test_except_names_have_one_type_per_function(name: str) -> None:
    """mypy accepts ``except A as exc`` and ``except B as exc`` in one function; mypyc
    gives ``exc`` the first type and raises TypeError when B is caught."""
    found = _except_names_with_several_types(ast.parse(_source(name).read_text()))
    assert not found, f"{name}: " + "; ".join(found)


def test_the_except_name_check_finds_a_reused_name() -> None:
    tree = ast.parse("def f():\n    try: pass\n    except KeyError as e: pass\n"
                     "    except OSError as e: pass\n")
    assert _except_names_with_several_types(tree) == [
        "f (line 1): `as e` for KeyError, OSError"]


@pytest.mark.parametrize("name", compiled_modules())
def test_module_is_compiled_when_expected(name: str) -> None:
    module = importlib.import_module(name)
    if os.environ.get("LI_HTTPD_EXPECT_COMPILED") != "1":
        pytest.skip("LI_HTTPD_EXPECT_COMPILED=1 not set (interpreted install)")
    assert module.__file__ is not None and module.__file__.endswith(".so"), \
        f"{name} is not compiled: {module.__file__}"
