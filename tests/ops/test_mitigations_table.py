"""ops/exploits/nginx_mitigations.toml: its schema, that every test it names exists, and
that docs/security.md carries the table rendered from it.

Test node ids are checked with :mod:`ast`, without importing or collecting anything:
``tests/x.py::function`` (or ``::Class::method``) must be defined at the top level of the
file (a method directly in the class). A parametrized case may be named as
``function[case id]``; the id must then be written in the file as a string literal (a
case table's ``id``, ``ids=[...]``, ``pytest.param(..., id=...)``) or be the stem of a
file next to the test module (data-file driven cases such as tests/config_reject/*.toml).
Cases whose ids pytest generates (``value0``...) are named by their function only.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import Any

import pytest
from li_httpd.ops.mitigations import (
    CLASSES,
    NODE_ID,
    SOURCES,
    TABLE,
    Mitigation,
    TableError,
    load,
    parse,
    render,
    splice,
)

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"


@functools.cache
def _rows() -> tuple[Mitigation, ...]:
    return tuple(load())


def test_the_table_is_the_one_in_the_repository() -> None:
    assert ROOT / "ops" / "exploits" / "nginx_mitigations.toml" == TABLE


def test_the_table_follows_its_schema() -> None:
    rows = _rows()  # raises TableError with every problem
    assert len(rows) >= 40
    assert {m.source for m in rows} == set(SOURCES)
    assert {m.klass for m in rows} == set(CLASSES)
    assert any(not m.applies for m in rows) and any(m.applies for m in rows)


# CVEs that must stay in the table (the well-known ones for a reverse proxy).
KNOWN = ["CVE-2013-2028", "CVE-2013-4547", "CVE-2017-7529", "CVE-2021-23017",
         "CVE-2023-44487", "CVE-2019-18277", "CVE-2021-40346", "CVE-2023-25725",
         "CVE-2023-0056", "CVE-2023-40225", "CVE-2023-45539", "CVE-2021-39240",
         "CVE-2021-39241", "CVE-2021-39242", "CVE-2024-53008"]


@pytest.mark.parametrize("cve", KNOWN)
def test_well_known_advisories_have_a_row(cve: str) -> None:
    assert any(cve in m.refs for m in _rows()), f"no row refers to {cve}"


GOOD: dict[str, Any] = {"id": "x", "source": "nginx", "refs": ["CVE-2020-1234"],
                        "advisory": "a", "class": "parser", "applies": True,
                        "li_invariant": "i", "tests": ["tests/a/test_b.py::test_c[d]"]}
NOT_APPLICABLE: dict[str, Any] = {**{k: v for k, v in GOOD.items()
                                     if k not in ("li_invariant", "tests")},
                                  "applies": False, "reason": "r"}


@pytest.mark.parametrize(("change", "problem"), [
    ({"id": "Bad-Id"}, "not snake_case"),
    ({"source": "envoy"}, "source 'envoy'"),
    ({"class": "xss"}, "class 'xss'"),
    ({"refs": []}, "at least one reference"),
    ({"refs": ["CVE-1", "nginx"]}, "ref 'CVE-1'"),
    ({"refs": ["haproxy main"]}, "ref 'haproxy main'"),
    ({"applies": "yes"}, "true or false"),
    ({"tests": []}, "at least one test"),
    ({"tests": ["tests/a/test_b.py"]}, "not a pytest node id"),
    ({"tests": ["other/test_b.py::test_c"]}, "not a pytest node id"),
    ({"tests": ["tests/a/test_b.py::test_c", "tests/a/test_b.py::test_c"]}, "twice"),
    ({"li_invariant": ""}, "needs li_invariant"),
    ({"reason": "r"}, "has no reason"),
    ({"advisory": "a | b"}, "without '|'"),
    ({"colour": "red"}, "unknown keys"),
])
def test_schema_problems_are_reported(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(TableError) as caught:
        parse({"mitigation": [{**GOOD, **change}]})
    assert any(problem in p for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize(("change", "problem"), [
    ({"reason": ""}, "needs a reason"),
    ({"weaker": True}, "weaker needs applies = true"),
])
def test_rows_that_do_not_apply_need_a_reason(change: dict[str, Any], problem: str) -> None:
    assert parse({"mitigation": [NOT_APPLICABLE]})[0].tests == ()
    with pytest.raises(TableError) as caught:
        parse({"mitigation": [{**NOT_APPLICABLE, **change}]})
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_ids_are_unique_and_the_table_is_not_empty() -> None:
    with pytest.raises(TableError, match="used 2 times"):
        parse({"mitigation": [GOOD, GOOD]})
    with pytest.raises(TableError, match="needs"):
        parse({"mitigation": []})


# -- the tests named in the table exist -------------------------------------------------------


class _Module:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        self.strings = {node.value for node in ast.walk(self.tree)
                        if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        self.stems = {p.stem for p in path.parent.iterdir() if p.is_file()}

    def function(self, cls: str | None, name: str,
                 ) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        body = self.tree.body
        if cls is not None:
            found = [n for n in body if isinstance(n, ast.ClassDef) and n.name == cls]
            body = found[0].body if found else []
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
                return node
        return None


@functools.cache
def _module(path: str) -> _Module:
    return _Module(ROOT / path)


def _xfail(function: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """'strict' or 'lax' when the function carries ``pytest.mark.xfail``, else None."""
    for decorator in function.decorator_list:
        call = decorator if isinstance(decorator, ast.Call) else None
        target = call.func if call else decorator
        if isinstance(target, ast.Attribute) and target.attr == "xfail":
            strict = any(k.arg == "strict" and isinstance(k.value, ast.Constant)
                         and k.value.value is True for k in (call.keywords if call else []))
            return "strict" if strict else "lax"
    return None


def _resolve(node_id: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    match = NODE_ID.fullmatch(node_id)
    assert match, f"{node_id}: not a node id"
    path, cls, name, case = match.groups()
    assert (ROOT / path).is_file(), f"{node_id}: no file {path}"
    module = _module(path)
    function = module.function(cls, name)
    assert function is not None, f"{node_id}: {path} defines no {name}"
    assert name.startswith("test"), f"{node_id}: {name} is not a test"
    if case is not None:
        assert case in module.strings or case in module.stems, (
            f"{node_id}: no case {case!r} in {path} (a string literal in the file or a "
            "file stem next to it)")
    return function


@pytest.mark.parametrize("row", _rows(), ids=lambda m: m.id)
def test_every_named_test_exists(row: Mitigation) -> None:
    for node_id in row.tests:
        _resolve(node_id)


@pytest.mark.parametrize("row", _rows(), ids=lambda m: m.id)
def test_weaker_rows_and_xfail_tests_go_together(row: Mitigation) -> None:
    """A row marked weaker names a strict xfail test (the gap, reproduced); any other row
    relies on no xfail test at all."""
    kinds = [_xfail(_resolve(node_id)) for node_id in row.tests]
    if row.weaker:
        assert "strict" in kinds, f"{row.id}: weaker, but no strict xfail test is listed"
    else:
        assert not any(kinds), f"{row.id}: lists an xfail test but is not marked weaker"


def test_the_node_id_checker_finds_what_is_missing() -> None:
    this = "tests/ops/test_mitigations_table.py"
    _resolve(f"{this}::test_every_named_test_exists")
    _resolve(f"{this}::test_well_known_advisories_have_a_row[CVE-2013-2028]")
    _resolve("tests/config_reject/test_reject.py::test_reject_in_process[static_root_etc]")
    for missing in (f"{this}::test_nothing_here", f"{this}::test_every_named_test_exists[x y]",
                    "tests/ops/test_none.py::test_x", f"{this}::_module",
                    f"{this}::_Module::test_function"):
        with pytest.raises(AssertionError):
            _resolve(missing)


# -- the docs ----------------------------------------------------------------------------


def test_security_doc_table_is_current() -> None:
    document = DOC.read_text(encoding="utf-8")
    assert splice(document, render(_rows(), DOC.parent)) == document, (
        "docs/security.md is stale: run "
        "`.venv/bin/python -m li_httpd.ops.mitigations docs/security.md`")


def test_rendered_links_point_at_the_test_files() -> None:
    generated = render(_rows(), DOC.parent)
    for row in _rows():
        assert f"| `{row.id}` |" in generated
        for node_id in row.tests:
            path = node_id.partition("::")[0]
            assert f"](../{path})" in generated
            assert (DOC.parent / ".." / path).resolve().is_file()
