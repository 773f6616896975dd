"""``li-httpd setup-censor``: find secret fields in SQL migrations and OpenAPI documents
and write ``leak_censor.generated.toml`` (format: :mod:`li_httpd.config.censorgen`).

Theory of operation. Each source file is read once, hashed, and scanned into
:class:`~li_httpd.config.censorgen.Finding` records (a field name and where it is
declared); the findings are rendered into the generated file, whose text depends only on
the sources and on the paths given (relative to the output's directory), never on time
or the working directory, so ``--check`` can regenerate in memory and compare bytes.

SQL (:func:`scan_sql`). sqlparse lexes the file (strings, dollar-quoted bodies,
``E'...'`` escapes, quoted identifiers, ``--``/``#``/``/* */`` comments) and splits
statements (semicolons inside strings, comments and ``BEGIN ... END`` bodies do not end
one); its grouping step is not used (it caps statements at 10,000 tokens). On those
tokens a small parser reads ``CREATE TABLE name (...)`` column definitions and the
``ADD [COLUMN]``, ``RENAME [COLUMN] a TO b`` and ``CHANGE [COLUMN] a b`` actions of
``ALTER TABLE``. A column is a secret when its name says so (:func:`secret_reason`) or
when a ``-- li:censor`` comment is on the line of its name; ``-- li:censor off`` on that
line excludes it. A marker on a line with no column name is an error (it would be
silently ignored otherwise).

OpenAPI (:func:`scan_openapi`). A JSON or YAML OpenAPI 3 document is composed into
PyYAML nodes (line numbers; nothing is constructed, no tag runs code). Every
``properties`` map anywhere in it (components, inline request and response schemas,
nested objects, array items) is read, except inside ``example``, ``examples``,
``default``, ``enum``, ``const`` and ``x-*`` values (data, not schemas). A property is a
secret when its schema has ``format: password``, ``writeOnly: true`` or
``x-li-censor: true``, directly, through a local ``$ref`` (``#/...``) or an ``allOf``
member; ``x-li-censor: false`` on the property excludes it. Other ``$ref`` targets
(files, URLs) are never fetched: they are reported as notes.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import sqlparse.engine
import yaml
from li_httpd.config import censorgen
from li_httpd.config.censorgen import Finding, Source
from sqlparse import tokens as ttypes

# -- names -----------------------------------------------------------------------------------

SECRET_WORDS = frozenset({
    "password", "passwords", "passwd", "passphrase", "passcode", "pwd", "secret", "secrets",
    "token", "credential", "credentials", "ssn", "otp", "totp", "hotp", "cvv", "cvc",
    # the usual compounds written as one word
    "apikey", "apikeys", "apitoken", "authtoken", "accesstoken", "refreshtoken",
    "secretkey", "privatekey", "passwordhash", "passhash", "pwhash", "clientsecret",
})
"""Name parts that mark a secret. Plural ``tokens`` is not one: in AI applications it
counts tokens (``prompt_tokens``, ``tokens_used``)."""

SECRET_PHRASES: tuple[tuple[str, ...], ...] = (
    ("api", "key"), ("api", "keys"), ("private", "key"), ("signing", "key"),
    ("encryption", "key"), ("pass", "hash"), ("pw", "hash"), ("card", "number"),
    ("social", "security", "number"),
)
"""Consecutive name parts that mark a secret."""

METADATA_AFTER = frozenset({
    "count", "counts", "used", "usage", "limit", "limits", "max", "min", "total", "length",
    "len", "size", "type", "kind", "id", "ids", "uuid", "at", "on", "date", "time", "ts",
    "timestamp", "changed", "change", "updated", "created", "set", "reset", "rotated",
    "rotation", "expires", "expiry", "expiration", "expired", "version", "policy", "hint",
    "required", "enabled", "disabled", "status", "name", "label", "description", "prefix",
    "last", "scope", "scopes", "strength", "attempts", "failures", "url", "uri",
    "endpoint", "algorithm", "algo", "format", "fingerprint", "iterations",
})
"""A part after the secret word that makes the column data *about* the secret
(``token_count``, ``password_changed_at``, ``api_key_id``, ``ssn_last4``)."""

METADATA_BEFORE = frozenset({
    "is", "has", "can", "should", "must", "needs", "require", "requires", "num", "max",
    "min", "total", "count", "page",
})
"""A part before the secret word that does the same (``is_password_set``,
``has_api_key``, ``next_page_token``)."""


def name_parts(name: str) -> list[str]:
    """Lowercase words of a name: ``snake_case``, ``kebab-case``, ``camelCase``,
    ``APIKey``; digits are parts of their own."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", spaced)
    return re.findall(r"[a-z]+|[0-9]+", spaced.lower())


def secret_reason(name: str) -> str | None:
    """The secret word a field name carries, or None. Whole parts only (``secretary``,
    ``tokenizer`` and ``bypass`` carry none)."""
    parts = name_parts(name)
    hits: list[tuple[int, int]] = []
    for start in range(len(parts)):
        if parts[start] in SECRET_WORDS:
            hits.append((start, start + 1))
        for phrase in SECRET_PHRASES:
            if tuple(parts[start:start + len(phrase)]) == phrase:
                hits.append((start, start + len(phrase)))
    if not hits:
        return None
    first = min(s for s, _ in hits)
    last = max(e for _, e in hits)
    if any(p in METADATA_BEFORE for p in parts[:first]):
        return None
    if any(p in METADATA_AFTER for p in parts[last:] if not p.isdigit()):
        return None
    return "_".join(parts[first:last])


# -- errors ------------------------------------------------------------------------------------


class SetupError(Exception):
    """Inputs setup-censor cannot turn into a generated file; one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


@dataclass
class Scan:
    findings: list[Finding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _add(scan: Scan, name: str, source: str, line: int, what: str) -> None:
    if not _NAME_RE.fullmatch(name):
        scan.errors.append(f"{source}:{line}: {what} holds a secret but {name!r} cannot be "
                           "written as a $..name deny path (letters, digits, '_', '-'); "
                           "rename it, or mark it `li:censor off` if it is not a secret")
        return
    scan.findings.append(Finding(name, source, line, what))


# -- SQL ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Tok:
    ttype: object
    value: str
    line: int

    @property
    def word(self) -> str:
        """Upper-case keyword or bare name, '' for anything else (quoted names too)."""
        bare_name = self.ttype in ttypes.Name and self.value[:1] not in "`["
        if self.ttype in ttypes.Keyword or bare_name:
            return " ".join(self.value.upper().split())
        return ""

    def punct(self, char: str) -> bool:
        return self.ttype in ttypes.Punctuation and self.value == char


@dataclass(frozen=True, slots=True)
class _Column:
    name: str
    line: int
    table: str


Marker = Literal["on", "off"]
_MARKER = re.compile(r"li:censor(?![\w-])(.*)", re.IGNORECASE | re.DOTALL)
_MARKER_ARG = re.compile(r"\s*(?:(on|off)(?![\w-]))?\s*(?:[:(#-].*)?", re.IGNORECASE | re.DOTALL)
_CONSTRAINTS = frozenset({"CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN", "EXCLUDE",
                          "INDEX", "KEY", "FULLTEXT", "SPATIAL", "LIKE", "PERIOD"})


def _identifier(tok: _Tok) -> str | None:
    """The name a token spells as an identifier, unquoted, or None."""
    value = tok.value
    if tok.ttype in ttypes.String.Symbol and value.startswith('"') and value.endswith('"'):
        return value[1:-1].replace('""', '"')
    if tok.ttype in ttypes.Name or tok.ttype in ttypes.Keyword:
        if value.startswith("`") and value.endswith("`"):
            return value[1:-1].replace("``", "`")
        if value.startswith("[") and value.endswith("]"):
            return value[1:-1].replace("]]", "]")
        if " " in value or "\n" in value:
            return None  # a merged keyword such as "NOT NULL"
        return value
    return None


def _comment_body(value: str) -> str:
    if value.startswith("--"):
        return value[2:].strip()
    if value.startswith("#"):
        return value[1:].strip()
    if value.startswith("/*"):
        return value[2:].removesuffix("*/").strip()
    return value.strip()


def _lex(text: str) -> Iterator[tuple[list[_Tok], list[_Tok]]]:
    """Each statement's significant tokens and its comments, with 1-based lines.

    Lines come from the tokens' places in ``text``: the splitter may drop whitespace
    between statements, never anything else (checked)."""
    line = 1
    cursor = 0
    stack = sqlparse.engine.FilterStack()  # type: ignore[no-untyped-call]
    for statement in stack.run(text):  # type: ignore[no-untyped-call]
        significant: list[_Tok] = []
        comments: list[_Tok] = []
        for token in statement.flatten():
            value = str(token.value)
            at = text.find(value, cursor)
            if at < 0 or text[cursor:at].strip():
                raise SetupError([f"line {line}: sqlparse tokens do not match the text"])
            line += text.count("\n", cursor, at)
            tok = _Tok(token.ttype, value, line)
            line += value.count("\n")
            cursor = at + len(value)
            if token.ttype in ttypes.Comment:
                comments.append(tok)
            elif not token.is_whitespace:
                significant.append(tok)
        yield significant, comments


def _split(tokens: list[_Tok]) -> list[list[_Tok]]:
    """Split at commas outside parentheses."""
    parts: list[list[_Tok]] = [[]]
    depth = 0
    for tok in tokens:
        if tok.punct("("):
            depth += 1
        elif tok.punct(")"):
            depth -= 1
        if depth == 0 and tok.punct(","):
            parts.append([])
        else:
            parts[-1].append(tok)
    return [p for p in parts if p]


def _skip_words(tokens: list[_Tok], *words: str) -> list[_Tok]:
    """Drop leading keywords that spell ``words`` (merged or not: "IF NOT EXISTS")."""
    want = list(words)
    index = 0
    while want and index < len(tokens):
        got = tokens[index].word.split()
        if not got or got != want[:len(got)]:
            break
        want = want[len(got):]
        index += 1
    return tokens[index:] if not want else tokens


def _table_name(tokens: list[_Tok]) -> tuple[str, list[_Tok]]:
    parts: list[str] = []
    index = 0
    while index < len(tokens):
        name = _identifier(tokens[index])
        if name is None:
            break
        parts.append(name)
        index += 1
        if index < len(tokens) and tokens[index].punct("."):
            index += 1
            continue
        break
    return ".".join(parts), tokens[index:]


def _column_of(item: list[_Tok], table: str) -> _Column | None:
    """The column a column definition declares (None for a table constraint)."""
    if not item:
        return None
    first = item[0]
    if first.word.split()[:1] and first.word.split()[0] in _CONSTRAINTS:
        return None
    name = _identifier(first)
    return None if name is None else _Column(name, first.line, table)


def _create_columns(tokens: list[_Tok]) -> list[_Column]:
    index = next((i for i, t in enumerate(tokens[1:6], 1) if t.word == "TABLE"), None)
    # CREATE [OR REPLACE] [GLOBAL|LOCAL] [TEMP|TEMPORARY|UNLOGGED|...] TABLE: words only
    if index is None or not all(t.value.replace(" ", "").isalpha() and t.word
                                for t in tokens[1:index]):
        return []
    rest = _skip_words(tokens[index + 1:], "IF", "NOT", "EXISTS")
    table, rest = _table_name(rest)
    if not table or not rest or not rest[0].punct("("):
        return []  # CREATE TABLE ... AS SELECT, PARTITION OF, ...
    depth = 0
    body: list[_Tok] = []
    for tok in rest[1:]:
        if tok.punct(")") and depth == 0:
            break
        depth += tok.punct("(") - tok.punct(")")
        body.append(tok)
    return [c for item in _split(body) if (c := _column_of(item, table)) is not None]


def _alter_columns(tokens: list[_Tok]) -> list[_Column]:
    if len(tokens) < 3 or tokens[1].word != "TABLE":
        return []
    rest = _skip_words(tokens[2:], "IF", "EXISTS")
    rest = _skip_words(rest, "ONLY")
    table, rest = _table_name(rest)
    columns: list[_Column] = []
    for action in _split(rest):
        verb = action[0].word
        tail = _skip_words(action[1:], "COLUMN")
        if verb == "ADD":
            tail = _skip_words(tail, "IF", "NOT", "EXISTS")
            if tail and tail[0].punct("("):
                inner = tail[1:-1] if tail[-1].punct(")") else tail[1:]
                columns += [c for item in _split(inner)
                            if (c := _column_of(item, table)) is not None]
            elif (column := _column_of(tail, table)) is not None:
                columns.append(column)
        elif verb == "RENAME" and len(tail) >= 3 and tail[1].word == "TO" \
                and tail[0].word not in _CONSTRAINTS:
            columns += _maybe(_column_of(tail[2:], table))  # the new name
        elif verb == "CHANGE" and len(tail) >= 2:
            columns += _maybe(_column_of(tail[1:], table))  # CHANGE old new type
    return columns


def _maybe(column: _Column | None) -> list[_Column]:
    return [] if column is None else [column]


def scan_sql(text: str, source: str) -> Scan:
    """Secret columns of one SQL file (``source`` names it in findings and errors)."""
    scan = Scan()
    columns: list[_Column] = []
    markers: dict[int, Marker] = {}
    for tokens, comments in _lex(text):
        for comment in comments:
            found = _MARKER.match(_comment_body(comment.value))
            if found is None:
                continue
            argument = _MARKER_ARG.fullmatch(found.group(1))
            if argument is None:
                scan.errors.append(f"{source}:{comment.line}: malformed marker "
                                   f"{comment.value.strip()!r}: write `-- li:censor` or "
                                   "`-- li:censor off`, optionally followed by ': reason'")
                continue
            markers[comment.line] = "off" if (argument.group(1) or "").lower() == "off" \
                else "on"
        if not tokens:
            continue
        verb = tokens[0].word.partition(" ")[0]  # the lexer merges "CREATE OR REPLACE"
        if verb == "CREATE":
            columns += _create_columns(tokens)
        elif verb == "ALTER":
            columns += _alter_columns(tokens)
    named_lines = {c.line for c in columns}
    for line in sorted(set(markers) - named_lines):
        scan.errors.append(f"{source}:{line}: li:censor marker on a line without a column "
                           "name; put it on the line where the column is named")
    for column in columns:
        marker = markers.get(column.line)
        what = f"{column.table}.{column.name}"
        if marker == "on" or (marker is None and secret_reason(column.name)):
            _add(scan, column.name, source, column.line, what)
            camel = camel_case(column.name)
            if camel != column.name:
                # ORMs and API layers often serialise password_hash as passwordHash.
                _add(scan, camel, source, column.line, f"{what} (as {camel})")
    return scan


def camel_case(name: str) -> str:
    """``password_hash`` -> ``passwordHash``; a name without ``_`` is returned as is."""
    head, *rest = name.split("_")
    if not rest or not head:
        return name
    return head + "".join(part[:1].upper() + part[1:] for part in rest if part)


# -- OpenAPI -----------------------------------------------------------------------------------

_NOT_SCHEMAS = frozenset({"example", "examples", "default", "enum", "const"})


def _compose(text: str, source: str) -> yaml.Node:
    if source.endswith(".json"):
        try:
            json.loads(text)
        except ValueError as exc:
            raise SetupError([f"{source}: not JSON: {exc}"]) from exc
        # Valid JSON has no raw tab inside strings, so tabs are only indentation, which
        # YAML does not allow: spaces keep every line and column.
        text = text.replace("\t", " ")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise SetupError([f"{source}: not YAML: {exc}"]) from exc
    if not isinstance(node, yaml.MappingNode):
        raise SetupError([f"{source}: not an OpenAPI 3 document (no top-level mapping)"])
    version = _get(node, "openapi")
    if _get(node, "swagger") is not None or (
            version is not None and not (isinstance(version, yaml.ScalarNode)
                                         and str(version.value).startswith("3"))):
        raise SetupError([f"{source}: not an OpenAPI 3 document (Swagger 2 and other "
                          "versions are not read)"])
    return node  # with no `openapi` key: a file of schemas another document $refs


def _get(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key \
                    and isinstance(value, yaml.Node):
                return value
    return None


def _bool(node: yaml.Node | None) -> bool | None:
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:bool":
        return str(node.value).lower() in ("true", "yes", "on")
    return None


def _resolve(root: yaml.Node, ref: str) -> yaml.Node | None:
    node: yaml.Node | None = root
    for raw in ref[2:].split("/") if ref != "#" else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, yaml.SequenceNode) and part.isdigit() \
                and int(part) < len(node.value):
            node = node.value[int(part)]
        else:
            node = _get(node, part) if node is not None else None
    return node


def _marker(schema: yaml.Node | None, root: yaml.Node, seen: set[int]) -> Marker | None:
    if not isinstance(schema, yaml.MappingNode) or id(schema) in seen:
        return None
    seen.add(id(schema))
    explicit = _bool(_get(schema, "x-li-censor"))
    if explicit is not None:
        return "on" if explicit else "off"
    form = _get(schema, "format")
    if _bool(_get(schema, "writeOnly")) or (isinstance(form, yaml.ScalarNode)
                                             and form.value == "password"):
        return "on"
    ref = _get(schema, "$ref")
    if isinstance(ref, yaml.ScalarNode) and str(ref.value).startswith("#"):
        found = _marker(_resolve(root, str(ref.value)), root, seen)
        if found is not None:
            return found
    members = _get(schema, "allOf")
    if isinstance(members, yaml.SequenceNode):
        for member in members.value:
            if _marker(member, root, seen) == "on":
                return "on"
    return None


def scan_openapi(text: str, source: str) -> Scan:
    """Secret properties of one OpenAPI 3 document (JSON or YAML by suffix), or of a
    file without an ``openapi`` key that holds schemas another document refers to."""
    scan = Scan()
    root = _compose(text, source)
    visited: set[int] = set()
    stack: list[yaml.Node] = [root]
    while stack:
        node = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
            continue
        if not isinstance(node, yaml.MappingNode):
            continue
        later: list[yaml.Node] = []
        for key_node, value in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or key in _NOT_SCHEMAS or key.startswith("x-"):
                continue
            if key == "$ref" and isinstance(value, yaml.ScalarNode) \
                    and not str(value.value).startswith("#"):
                scan.notes.append(f"{source}:{value.start_mark.line + 1}: $ref "
                                  f"{value.value!r} not followed (pass that document with "
                                  "--openapi too)")
            if key == "properties" and isinstance(value, yaml.MappingNode):
                for name_node, schema in value.value:
                    if not isinstance(name_node, yaml.ScalarNode):
                        continue
                    if _marker(schema, root, set()) == "on":
                        line = name_node.start_mark.line + 1
                        _add(scan, str(name_node.value), source, line,
                             f"property {name_node.value}")
                    later.append(schema)
            else:
                later.append(value)
        stack.extend(reversed(later))
    scan.findings.sort(key=lambda f: f.line)
    return scan


# -- the generated file ---------------------------------------------------------------------


def _posix(path: str) -> str:
    return path.replace(os.sep, "/")


@dataclass(frozen=True, slots=True)
class Generated:
    text: str
    paths: int
    sources: int
    notes: tuple[str, ...]


def generate(sql: Sequence[str], openapi: Sequence[str], out: str) -> Generated:
    """The generated file's text for these inputs (paths as given on the command line)
    and notes for the operator. A file named twice (itself and through its directory)
    is read once. Raises :class:`SetupError`."""
    if not sql and not openapi:
        raise SetupError(["nothing to read: give --sql and/or --openapi paths"])
    base = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(base):
        raise SetupError([f"{out}: directory {base} does not exist"])
    scans: list[Scan] = []
    sources: list[Source] = []
    recorded: dict[censorgen.SourceKind, list[str]] = {"sql": [], "openapi": []}
    errors: list[str] = []
    groups: tuple[tuple[censorgen.SourceKind, Sequence[str]], ...] = (
        ("sql", sql), ("openapi", openapi))
    for kind, inputs in groups:
        for given in inputs:
            relative = _posix(os.path.relpath(os.path.abspath(given), base))
            recorded[kind].append(relative)
            try:
                files = censorgen.expand_inputs(base, [relative], kind)
            except OSError:
                errors.append(f"{given}: no such file or directory")
                continue
            if not files:
                errors.append(f"{given}: no {'*.sql' if kind == 'sql' else 'OpenAPI'} files")
            for path in files:
                path = _posix(path)
                if any(s.kind == kind and s.path == path for s in sources):
                    continue
                try:
                    with open(os.path.normpath(os.path.join(base, path)), "rb") as handle:
                        raw = handle.read()
                    text = raw.decode("utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    errors.append(f"{path}: cannot read: {exc}")
                    continue
                sources.append(Source(kind, path, censorgen.digest(raw)))
                try:
                    scans.append(scan_sql(text, path) if kind == "sql"
                                 else scan_openapi(text, path))
                except SetupError as exc:
                    errors += exc.problems
    errors += [e for s in scans for e in s.errors]
    if errors:
        raise SetupError(errors)
    findings = [f for s in scans for f in s.findings]
    text = censorgen.render(findings, sources, recorded["sql"], recorded["openapi"],
                            os.path.basename(out))
    return Generated(text, len({f.name for f in findings}), len(sources),
                     tuple(n for s in scans for n in s.notes))


EXIT_OK = 0
EXIT_FAIL = 1


def main(sql: Sequence[str], openapi: Sequence[str], out: str, check: bool) -> int:
    """The subcommand: write ``out`` (or with ``check``, compare it). Exit 0 when
    written or up to date, 1 on input errors or (``check``) when it would change."""
    try:
        generated = generate(sql, openapi, out)
    except SetupError as exc:
        for problem in exc.problems:
            print(f"li-httpd setup-censor: {problem}", file=sys.stderr)
        return EXIT_FAIL
    for note in generated.notes:
        print(f"li-httpd setup-censor: note: {note}", file=sys.stderr)
    text = generated.text
    if check:
        try:
            with open(out, encoding="utf-8") as handle:
                current = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            print(f"li-httpd setup-censor: {out}: cannot read ({exc}); run setup-censor "
                  "without --check to write it", file=sys.stderr)
            return EXIT_FAIL
        if current == text:
            print(f"up to date: {out} ({generated.paths} deny paths)")
            return EXIT_OK
        print(f"li-httpd setup-censor: {out} would change: run li-httpd setup-censor "
              "without --check", file=sys.stderr)
        sys.stderr.writelines(difflib.unified_diff(
            current.splitlines(keepends=True), text.splitlines(keepends=True),
            f"{out} (on disk)", f"{out} (generated)"))
        return EXIT_FAIL
    temporary = f"{out}.tmp-{os.getpid()}"
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, out)
    except OSError as exc:
        print(f"li-httpd setup-censor: cannot write {out}: {exc}", file=sys.stderr)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        return EXIT_FAIL
    print(f"wrote {out}: {generated.paths} deny paths from {generated.sources} source files")
    return EXIT_OK
