"""The nginx and HAProxy mitigations table and its section in docs/security.md.

``ops/exploits/nginx_mitigations.toml`` maps nginx and HAProxy security advisories and
parser fixes to the li-httpd tests that show li-httpd is not affected, or says why one
does not apply. :func:`load` reads and validates it (the schema is in the file's header
comment; tests/ops/test_mitigations_table.py also checks that every named test exists).
:func:`render` makes the markdown section, which sits between two marker lines in the
document: ``python -m li_httpd.ops.mitigations docs/security.md`` rewrites that part in
place, and a test fails when the committed document is stale.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TABLE = Path(__file__).resolve().parent / "exploits" / "nginx_mitigations.toml"
"""The table, in the source tree (it is not installed with the package)."""
ROOT = TABLE.parent.parent.parent
"""The repository root: test node ids are relative to it."""

BEGIN = "<!-- BEGIN GENERATED MITIGATIONS (python -m li_httpd.ops.mitigations) -->"
END = "<!-- END GENERATED MITIGATIONS -->"

SOURCES = ("nginx", "haproxy")
CLASSES = ("smuggling", "parser", "dos", "memory_safety", "tls", "config", "module")
REF = re.compile(r"CVE-\d{4}-\d{4,}|nginx (?:\d+\.\d+\.\d+|[a-z][a-z0-9_]*)"
                 r"|haproxy [0-9a-f]{7,40}")
"""A CVE id, an nginx changes.xml version or directive, or a haproxy/haproxy commit."""
NODE_ID = re.compile(r"(tests/(?:[A-Za-z0-9_]+/)*test_[A-Za-z0-9_]+\.py)"
                     r"::(?:([A-Za-z_][A-Za-z0-9_]*)::)?([A-Za-z_][A-Za-z0-9_]*)"
                     r"(?:\[([^\]\s]+)\])?")
"""``path::function``, ``path::Class::method``, optionally with ``[case id]``."""
_ID = re.compile(r"[a-z][a-z0-9_]*")
_KEYS = {"id", "source", "refs", "advisory", "class", "applies", "li_invariant", "tests",
         "reason", "weaker", "notes"}
_REQUIRED = ("id", "source", "refs", "advisory", "class", "applies")


class TableError(ValueError):
    """The table breaks its schema; ``problems`` lists every violation."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True, slots=True)
class Mitigation:
    id: str
    source: str
    refs: tuple[str, ...]
    advisory: str
    klass: str
    """The ``class`` key."""
    applies: bool
    li_invariant: str
    tests: tuple[str, ...]
    reason: str
    weaker: bool
    notes: str


def _text(row: Mapping[str, Any], key: str, where: str, problems: list[str]) -> str:
    value = row.get(key, "")
    if not isinstance(value, str):
        problems.append(f"{where}: {key} must be a string")
        return ""
    if "\n" in value or "|" in value:
        problems.append(f"{where}: {key} must be one line without '|'")
    return value.strip()


def _strings(row: Mapping[str, Any], key: str, where: str, problems: list[str]
             ) -> tuple[str, ...]:
    value = row.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"{where}: {key} must be an array of strings")
        return ()
    if len(set(value)) != len(value):
        problems.append(f"{where}: {key} lists an entry twice")
    return tuple(value)


def _row(row: Mapping[str, Any], where: str, problems: list[str]) -> Mitigation:
    unknown = sorted(set(row) - _KEYS)
    if unknown:
        problems.append(f"{where}: unknown keys {unknown}")
    problems.extend(f"{where}: {key} is required" for key in _REQUIRED if key not in row)
    ident = _text(row, "id", where, problems)
    if ident and not _ID.fullmatch(ident):
        problems.append(f"{where}: id {ident!r} is not snake_case")
    where = f"{where} ({ident})" if ident else where
    source = _text(row, "source", where, problems)
    if source not in SOURCES:
        problems.append(f"{where}: source {source!r} is not one of {SOURCES}")
    klass = _text(row, "class", where, problems)
    if klass not in CLASSES:
        problems.append(f"{where}: class {klass!r} is not one of {CLASSES}")
    refs = _strings(row, "refs", where, problems)
    if not refs:
        problems.append(f"{where}: refs needs at least one reference")
    problems.extend(f"{where}: ref {ref!r} is not a CVE id, 'nginx <version or directive>'"
                    f" or 'haproxy <commit>'" for ref in refs if not REF.fullmatch(ref))
    advisory = _text(row, "advisory", where, problems)
    if not advisory:
        problems.append(f"{where}: advisory is empty")
    applies = row.get("applies")
    if not isinstance(applies, bool):
        problems.append(f"{where}: applies must be true or false")
        applies = False
    weaker = row.get("weaker", False)
    if not isinstance(weaker, bool):
        problems.append(f"{where}: weaker must be true or false")
        weaker = False
    invariant = _text(row, "li_invariant", where, problems)
    reason = _text(row, "reason", where, problems)
    tests = _strings(row, "tests", where, problems)
    problems.extend(f"{where}: {test!r} is not a pytest node id under tests/"
                    for test in tests if not NODE_ID.fullmatch(test))
    if applies:
        if not invariant:
            problems.append(f"{where}: a row that applies needs li_invariant")
        if not tests:
            problems.append(f"{where}: a row that applies needs at least one test")
        if "reason" in row:
            problems.append(f"{where}: a row that applies has no reason (that is for "
                            "applies = false)")
    else:
        if not reason:
            problems.append(f"{where}: a row that does not apply needs a reason")
        if weaker:
            problems.append(f"{where}: weaker needs applies = true")
    return Mitigation(ident, source, refs, advisory, klass, applies, invariant, tests,
                      reason, weaker, _text(row, "notes", where, problems))


def parse(document: Mapping[str, Any]) -> list[Mitigation]:
    """The rows of a parsed table; raises :class:`TableError` listing every problem."""
    problems: list[str] = []
    extra = sorted(set(document) - {"mitigation"})
    if extra:
        problems.append(f"unknown top-level keys {extra}")
    rows = document.get("mitigation")
    if not isinstance(rows, list) or not rows:
        raise TableError([*problems, "the table needs [[mitigation]] rows"])
    out: list[Mitigation] = []
    for index, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            problems.append(f"row {index}: not a table")
            continue
        out.append(_row(row, f"row {index}", problems))
    counts = Counter(m.id for m in out if m.id)
    problems.extend(f"id {ident!r} is used {n} times" for ident, n in sorted(counts.items())
                    if n > 1)
    if problems:
        raise TableError(problems)
    return out


def load(path: Path = TABLE) -> list[Mitigation]:
    with path.open("rb") as handle:
        return parse(tomllib.load(handle))


# -- rendering ------------------------------------------------------------------------------


def _test_link(node_id: str, doc_dir: Path, root: Path) -> str:
    match = NODE_ID.fullmatch(node_id)
    assert match is not None, node_id  # load() checked it
    path, cls, function, case = match.groups()
    name = function + (f"[{case}]" if case else "")
    if cls:
        name = f"{cls}.{name}"
    target = Path(os.path.relpath(root / path, doc_dir)).as_posix()
    return f"[`{name}`]({target})"


def render(rows: Sequence[Mitigation], doc_dir: Path, root: Path = ROOT) -> str:
    """The generated section (markers included) for a document in ``doc_dir``."""
    applying = sum(m.applies for m in rows)
    weaker = [m.id for m in rows if m.weaker]
    out = [BEGIN, "",
           f"{len(rows)} advisories and fixes: {applying} apply to li-httpd, each with the "
           f"tests that check it, and {len(rows) - applying} do not apply"
           + (f"; li-httpd is weaker than the fix in {len(weaker)} "
              f"({', '.join(f'`{w}`' for w in weaker)}: a strict xfail test documents the "
              "gap)." if weaker else "."), "",
           "| class | " + " | ".join(SOURCES) + " |",
           "|---|" + "---|" * len(SOURCES)]
    by = Counter((m.klass, m.source) for m in rows)
    out += [f"| {klass} | " + " | ".join(str(by[klass, source]) for source in SOURCES)
            + " |" for klass in CLASSES]
    out += ["", "| id | source | refs | advisory | applies | li-httpd invariant | tests |",
            "|---|---|---|---|---|---|---|"]
    for m in rows:
        applies = ("yes, weaker (xfail)" if m.weaker else "yes") if m.applies else "no"
        invariant = m.li_invariant if m.applies else f"Not applicable: {m.reason}"
        tests = "<br>".join(_test_link(t, doc_dir, root) for t in m.tests) or "-"
        out.append(f"| `{m.id}` | {m.source} | {', '.join(m.refs)} | {m.advisory} | "
                   f"{applies} | {invariant} | {tests} |")
    noted = [m for m in rows if m.notes]
    if noted:
        out += ["", "Notes:", ""]
        out += [f"- `{m.id}`: {m.notes}" for m in noted]
    out += ["", END]
    return "\n".join(out) + "\n"


def splice(document: str, generated: str) -> str:
    start = document.index(BEGIN)
    end = document.index(END) + len(END)
    return document[:start] + generated.rstrip("\n") + document[end:]


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: python -m li_httpd.ops.mitigations docs/security.md [TABLE.toml]",
              file=sys.stderr)
        return 2
    doc = Path(argv[0])
    table = Path(argv[1]) if len(argv) == 2 else TABLE
    try:
        rows = load(table)
    except TableError as exc:
        print(f"{table}:\n{exc}", file=sys.stderr)
        return 1
    document = doc.read_text(encoding="utf-8")
    doc.write_text(splice(document, render(rows, doc.resolve().parent)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
