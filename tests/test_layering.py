"""Layering: no import cycles among li_httpd modules, and no import a docstring forbids.

The rules are machine-readable lines in docstrings. Every package ``__init__.py`` (the
packages are ``[tool.setuptools] packages`` in pyproject.toml, their folders
``package-dir``) has exactly one line of the form::

    May import: li_httpd.config, li_httpd.shm.
    May import: nothing else.

(A long rule may wrap onto the next lines; its final period ends it.) A module of that
package may import the modules of its own package (its siblings and the package
``__init__``, not subpackages) and any module under a listed name (a listed name covers
its submodules). A module whose own docstring has a ``May import:`` line narrows the
rule for itself: it may then import only the listed names (which the package rule, or
its own package, must allow), not even its siblings unless it lists them.

Imports are read with :mod:`ast` from the source files, all of them: module level, under
``if TYPE_CHECKING:`` and inside functions (lazy imports), relative ones resolved. A
type-only import still couples the modules (and becomes a runtime import the day
someone needs the name at run time), so it counts for cycles and rules alike.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP = "li_httpd"
RULE_LINE = re.compile(r"May import:.*")
_NAME = r"li_httpd(?:\.\w+)+"
RULE = re.compile(rf"May import: (?:(nothing else)|({_NAME}(?:, {_NAME})*))\.")


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    package: str
    """The package this module belongs to (itself for an ``__init__.py``)."""
    is_package: bool


@dataclass(frozen=True)
class Import:
    module: str
    target: str
    """The li_httpd module imported (the longest known module name the statement names)."""
    line: int

    def __str__(self) -> str:
        return f"{self.module} imports {self.target} (line {self.line})"


def modules_of(package_dirs: Mapping[str, Path]) -> dict[str, Module]:
    """Every module of the given packages: ``__init__.py`` and the ``*.py`` files directly
    in each package folder (folders that are not listed packages are not installed)."""
    found: dict[str, Module] = {}
    for package, folder in package_dirs.items():
        for path in sorted(folder.glob("*.py")):
            is_package = path.name == "__init__.py"
            name = package if is_package else f"{package}.{path.stem}"
            found[name] = Module(name, path, package, is_package)
        assert package in found, f"package {package} has no __init__.py in {folder}"
    return found


def project_package_dirs(root: Path = ROOT) -> dict[str, Path]:
    tool = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = tool["package-dir"]
    assert set(tool["packages"]) == set(dirs), "every package needs a package-dir entry"
    return {package: root / dirs[package] for package in tool["packages"]}


def _known(name: str, known: Iterable[str]) -> str | None:
    """``name`` or its longest prefix that is a known module."""
    names = set(known)
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in names:
            return candidate
        parts.pop()
    return None


def imports_of(module: Module, tree: ast.AST, known: Iterable[str]) -> list[Import]:
    """Every li_httpd import in ``tree``, wherever it is (``ast.walk`` visits function
    bodies and ``if TYPE_CHECKING:`` blocks too)."""
    known = set(known)
    found: list[Import] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.name if module.is_package else module.name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                assert base, f"{module.name}: relative import beyond the top package"
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module or ""
            # ``from package import submodule`` imports the submodule.
            names = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin
                     for alias in node.names]
        for name in names:
            if name == TOP or name.startswith(TOP + "."):
                target = _known(name, known)
                assert target is not None, f"{module.name}:{node.lineno}: unknown module {name}"
                if target != module.name:
                    found.append(Import(module.name, target, node.lineno))
    return found


def rule_of(docstring: str | None, where: str) -> tuple[str, ...] | None:
    """The names a ``May import:`` line lists (``()`` for ``nothing else``), or None."""
    text = [line.strip() for line in (docstring or "").splitlines()]
    starts = [index for index, line in enumerate(text) if RULE_LINE.match(line)]
    if not starts:
        return None
    assert len(starts) == 1, f"{where}: more than one 'May import:' line: {starts}"
    # A long rule wraps onto the following lines; its period ends it.
    end = starts[0]
    while not text[end].endswith(".") and end + 1 < len(text) and text[end + 1]:
        end += 1
    lines = [" ".join(text[starts[0]:end + 1])]
    match = RULE.fullmatch(lines[0])
    assert match, (f"{where}: malformed rule {lines[0]!r}; write 'May import: "
                   "li_httpd.a, li_httpd.b.' or 'May import: nothing else.'")
    return () if match.group(1) else tuple(match.group(2).split(", "))


def _covers(names: Iterable[str], target: str) -> bool:
    return any(target == name or target.startswith(name + ".") for name in names)


@dataclass(frozen=True)
class Project:
    modules: dict[str, Module]
    trees: dict[str, ast.Module]

    @classmethod
    def load(cls, package_dirs: Mapping[str, Path]) -> Project:
        modules = modules_of(package_dirs)
        trees = {name: ast.parse(m.path.read_text(), str(m.path)) for name, m in modules.items()}
        return cls(modules, trees)

    def imports(self) -> list[Import]:
        return [imp for name, module in self.modules.items()
                for imp in imports_of(module, self.trees[name], self.modules)]

    def cycles(self) -> list[list[Import]]:
        """The imports inside each strongly connected component of more than one module
        (Tarjan), i.e. every import cycle, sorted."""
        imports = self.imports()
        graph: dict[str, set[str]] = {name: set() for name in self.modules}
        for imp in imports:
            graph[imp.module].add(imp.target)
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        components: list[set[str]] = []

        def visit(node: str) -> None:  # recursion depth is bounded by the module count
            index[node] = low[node] = len(index)
            stack.append(node)
            on_stack.add(node)
            for successor in sorted(graph[node]):
                if successor not in index:
                    visit(successor)
                    low[node] = min(low[node], low[successor])
                elif successor in on_stack:
                    low[node] = min(low[node], index[successor])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)

        for node in sorted(graph):
            if node not in index:
                visit(node)
        return sorted(sorted((imp for imp in imports
                              if imp.module in c and imp.target in c),
                             key=lambda i: (i.module, i.line, i.target))
                      for c in components)

    def package_rules(self) -> dict[str, tuple[str, ...]]:
        rules: dict[str, tuple[str, ...]] = {}
        for name, module in self.modules.items():
            if module.is_package:
                rule = rule_of(ast.get_docstring(self.trees[name]), str(module.path))
                assert rule is not None, (f"{module.path}: the package docstring needs a "
                                          "'May import: ...' line")
                rules[name] = rule
        return rules

    def violations(self) -> list[str]:
        """Each import its module's rule forbids, and each module rule that widens its
        package's rule."""
        package_rules = self.package_rules()
        found: list[str] = []
        own_rules: dict[str, tuple[str, ...]] = {}
        for name, module in self.modules.items():
            if module.is_package:
                continue
            rule = rule_of(ast.get_docstring(self.trees[name]), str(module.path))
            if rule is not None:
                own_rules[name] = rule
                siblings = (module.package, *(m for m in self.modules
                                              if m.rpartition(".")[0] == module.package))
                wider = [n for n in rule
                         if not _covers(package_rules[module.package], n) and n not in siblings]
                if wider:
                    found.append(f"{name}: its own rule lists {wider}, which the rule of "
                                 f"{module.package} does not allow")
        for imp in self.imports():
            module = self.modules[imp.module]
            if imp.module in own_rules:
                allowed = _covers(own_rules[imp.module], imp.target)
                rule_from = f"{imp.module}'s own docstring"
            else:
                sibling = self.modules[imp.target].package == module.package
                allowed = sibling or _covers(package_rules[module.package], imp.target)
                rule_from = f"{module.package}/__init__.py"
            if not allowed:
                found.append(f"{imp}: not allowed by the 'May import:' line of {rule_from}")
        return sorted(found)


def _describe(cycles: list[list[Import]]) -> str:
    return "\n".join("cycle:\n" + "\n".join(f"  {imp}" for imp in cycle) for cycle in cycles)


# -- the real project ---------------------------------------------------------------------------


def test_the_checker_sees_the_whole_project() -> None:
    project = Project.load(project_package_dirs())
    assert len(project.modules) >= 60, sorted(project.modules)
    assert set(project.package_rules()) == set(project_package_dirs())
    assert len(project.imports()) >= 150
    targets = {imp.target for imp in project.imports()}
    # lazy (function-level) and TYPE_CHECKING imports are seen
    assert "li_httpd.workers.worker" in targets  # supervisor/master.py, inside a function
    assert "li_httpd.ops.log.writer" in targets


def test_no_import_cycles() -> None:
    cycles = Project.load(project_package_dirs()).cycles()
    assert not cycles, "import cycles among li_httpd modules:\n" + _describe(cycles)


def test_no_forbidden_imports() -> None:
    violations = Project.load(project_package_dirs()).violations()
    assert not violations, "imports the layering rules forbid:\n" + "\n".join(violations)


# -- the checker catches what it must (so the tests above cannot pass vacuously) -------------------


def _synthetic(tmp_path: Path, files: Mapping[str, str]) -> Project:
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return Project.load({"li_httpd.low": tmp_path / "low", "li_httpd.high": tmp_path / "high"})


def test_the_checker_catches_a_cycle_and_a_forbidden_import(tmp_path: Path) -> None:
    project = _synthetic(tmp_path, {
        "low/__init__.py": '"""Low.\n\nMay import: nothing else.\n"""\n',
        "low/a.py": "from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n    from .b import B\n",
        "low/b.py": "def f():\n    from li_httpd.low import a\n"
                    "    from li_httpd.high.top import X\n",
        "low/narrow.py": '"""Narrow.\n\nMay import: nothing else.\n"""\nfrom . import a\n',
        "high/__init__.py": '"""High.\n\nMay import: li_httpd.low.\n"""\n',
        "high/top.py": "X = 1\n",
    })
    assert _describe(project.cycles()) == (
        "cycle:\n"
        "  li_httpd.low.a imports li_httpd.low.b (line 3)\n"
        "  li_httpd.low.b imports li_httpd.low.a (line 2)")
    assert project.violations() == [
        "li_httpd.low.b imports li_httpd.high.top (line 3): not allowed by the "
        "'May import:' line of li_httpd.low/__init__.py",
        "li_httpd.low.narrow imports li_httpd.low.a (line 5): not allowed by the "
        "'May import:' line of li_httpd.low.narrow's own docstring",
    ]


def test_a_module_rule_may_only_narrow(tmp_path: Path) -> None:
    project = _synthetic(tmp_path, {
        "low/__init__.py": '"""Low.\n\nMay import: nothing else.\n"""\n',
        "low/wide.py": '"""Wide.\n\nMay import: li_httpd.high.\n"""\n',
        "high/__init__.py": '"""High.\n\nMay import: li_httpd.low.\n"""\n',
    })
    assert project.violations() == [
        "li_httpd.low.wide: its own rule lists ['li_httpd.high'], which the rule of "
        "li_httpd.low does not allow"]


def test_rule_lines_parse_exactly() -> None:
    assert rule_of("x\nMay import: li_httpd.config, li_httpd.ops.log.\n", "x") == (
        "li_httpd.config", "li_httpd.ops.log")
    assert rule_of("May import: nothing else.", "x") == ()
    assert rule_of("May import: li_httpd.config,\nli_httpd.shm.\n", "x") == (
        "li_httpd.config", "li_httpd.shm")
    assert rule_of("Imports li_httpd.config only.", "x") is None
    for malformed in ("May import: li_httpd.config", "May import: config.",
                      "May import: li_httpd.config and li_httpd.shm."):
        try:
            rule_of(malformed, "x")
        except AssertionError:
            continue
        raise AssertionError(f"accepted {malformed!r}")
