"""The generated leak-censor file (``leak_censor.generated.toml``): its format, pure.

Theory of operation. ``li-httpd setup-censor`` (ops/setup_censor.py) reads SQL migrations
and OpenAPI documents, finds the fields that hold secrets, and writes one TOML file with
``json_deny_paths`` (``$..name`` paths, sorted, deduplicated) and the sha256 of every
source it read. ``[leak_censor] generated_file`` names that file; routes with
``include_generated = true`` add its paths to their own (:func:`effective_deny_paths`).

The file protects itself in two ways, both checked by :func:`verify`:

- ``content_sha256`` is the sha256 of the file's text without its own
  ``content_sha256 = "..."`` line. Any edit by hand (a path, a comment, a space) changes
  it: the file is regenerated, never edited.
- each ``[[source]]`` records a file's path (relative to the generated file's directory)
  and sha256, and ``sql``/``openapi`` record the inputs as given (files or directories,
  also relative). A source that changed, vanished or appeared (a new migration in a
  listed directory) since generation makes the file out of date.

This module does no I/O except :func:`read_file`, :func:`expand_inputs` and
:func:`source_problems`, which read the named files (like the validation rules about
certificates and static roots). :func:`render` and :func:`parse` are pure: text in,
records out; ``setup-censor`` and ``validate-config`` share them, so what one writes the
other reads.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from . import checks
from .model import RouteCensor

GENERATOR = "li-httpd setup-censor"
FORMAT = 1
DEFAULT_NAME = "leak_censor.generated.toml"
SQL_SUFFIXES = (".sql",)
OPENAPI_SUFFIXES = (".json", ".yaml", ".yml")

SourceKind = Literal["sql", "openapi"]
GeneratedRule = Literal["generated_file", "generated_format", "generated_edited",
                        "generated_stale", "generated_path"]

_HASH_LINE = re.compile(r'^content_sha256 = "([0-9a-f]{64})"\n', re.MULTILINE)
MAX_BYTES = 8 * 1024 * 1024
"""Largest generated file read (a path to a device or a huge file is refused)."""
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Source:
    """One file read at generation: path relative to the generated file's directory."""

    kind: SourceKind
    path: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Finding:
    """One field that holds a secret, and where it was declared."""

    name: str
    """The JSON key (column or property name)."""
    source: str
    """Source path as recorded (relative to the generated file's directory)."""
    line: int
    what: str
    """A short description for the comment, e.g. ``users.password_hash``."""


@dataclass(frozen=True, slots=True)
class GeneratedCensor:
    """A parsed, verified generated file: what workers merge into routes."""

    path: str
    """Where it was read (absolute)."""
    json_deny_paths: tuple[str, ...]
    sources: tuple[Source, ...]
    sql: tuple[str, ...]
    openapi: tuple[str, ...]
    content_sha256: str


class GeneratedError(Exception):
    """The generated file cannot be used; ``rule`` is its validation rule id."""

    def __init__(self, rule: GeneratedRule, message: str) -> None:
        super().__init__(message)
        self.rule: GeneratedRule = rule
        self.message = message


def deny_path(name: str) -> str:
    return f"$..{name}"


def effective_deny_paths(route_censor: RouteCensor, generated: GeneratedCensor | None
                         ) -> tuple[str, ...]:
    """A route's deny paths: its own ``json_deny_paths``, then, with
    ``include_generated = true``, the generated ones it does not already list.

    ``route_censor`` is a route's (already inherited) ``leak_censor`` section;
    ``generated`` is ``LoadedConfig.generated_censor``, which validation guarantees is
    present whenever a route includes it. Pure: workers call it once per route when they
    compile the censor, not per request.
    """
    own = route_censor.json_deny_paths
    if not route_censor.include_generated or generated is None:
        return own
    seen = set(own)
    return own + tuple(p for p in generated.json_deny_paths if p not in seen)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c >= " " and c != "\x7f" else f"\\u{ord(c):04x}"
                         for c in escaped) + '"'


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_toml_string(v) for v in values) + "]"


def render(findings: Iterable[Finding], sources: Sequence[Source], sql: Sequence[str],
           openapi: Sequence[str], out_name: str = DEFAULT_NAME) -> str:
    """The text of a generated file. Deterministic: the same inputs give the same bytes
    (no timestamps, sorted paths), so ``setup-censor --check`` can compare."""
    where: dict[str, list[Finding]] = {}
    for finding in findings:
        if checks.json_path(deny_path(finding.name)) is not None:
            raise ValueError(f"{finding.name!r} cannot be written as a JSON deny path")
        where.setdefault(finding.name, []).append(finding)
    command = ["li-httpd setup-censor"]
    command += [f"--sql {p}" for p in sql] + [f"--openapi {p}" for p in openapi]
    command.append(f"--out {out_name}")
    lines = [
        f"# {out_name}: generated by `{GENERATOR}`. Do not edit.",
        "# validate-config refuses this file when it was edited (content_sha256 covers",
        "# every other line) or when a source changed since generation. Regenerate, from",
        "# this file's directory (paths below are relative to it):",
        "#   " + " ".join(command),
        f'generator = "{GENERATOR}"',
        f"format = {FORMAT}",
        "json_deny_paths = [",
    ]
    for name in sorted(where):
        places = ", ".join(f"{f.source}:{f.line} {f.what}" for f in where[name])
        lines.append(f"    {_toml_string(deny_path(name))},  # {places}")
    lines.append("]")
    lines.append(f"sql = {_toml_list(sql)}")
    lines.append(f"openapi = {_toml_list(openapi)}")
    for source in sources:
        lines += ["", "[[source]]", f'kind = "{source.kind}"',
                  f"path = {_toml_string(source.path)}", f'sha256 = "{source.sha256}"']
    body = "\n".join(lines) + "\n"
    # The hash line goes right after `format`, before any table.
    head, sep, tail = body.partition("json_deny_paths = [\n")
    unhashed = head + sep + tail
    line = f'content_sha256 = "{digest(unhashed.encode())}"\n'
    return head + line + sep + tail


def rehash(text: str) -> str:
    """``text`` with its content_sha256 line recomputed (tests build broken files that
    pass the hash check with it; setup-censor never needs it)."""
    body = _HASH_LINE.sub("", text, count=1)
    line = f'content_sha256 = "{digest(body.encode())}"\n'
    return _HASH_LINE.sub(line.replace("\\", "\\\\"), text, count=1)


def parse(text: str, path: str) -> GeneratedCensor:
    """Read and check a generated file's text (not its sources: see
    :func:`source_problems`). Raises :class:`GeneratedError`."""
    found = _HASH_LINE.findall(text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GeneratedError("generated_format", f"{path}: not a file written by "
                             f"setup-censor (invalid TOML: {exc})") from exc
    if data.get("generator") != GENERATOR or len(found) != 1:
        raise GeneratedError("generated_format", f"{path}: not a file written by "
                             f"setup-censor (no generator = \"{GENERATOR}\" and "
                             "content_sha256 lines)")
    if data.get("format") != FORMAT:
        raise GeneratedError("generated_format", f"{path}: format {data.get('format')!r} "
                             f"is not {FORMAT}; run li-httpd setup-censor again")
    expected = {"generator", "format", "content_sha256", "json_deny_paths", "sql",
                "openapi", "source"}
    unknown = sorted(set(data) - expected)
    if unknown:
        raise GeneratedError("generated_format", f"{path}: unexpected keys {unknown}")
    if digest(_HASH_LINE.sub("", text, count=1).encode()) != found[0]:
        raise GeneratedError("generated_edited", f"{path}: content does not match its "
                             "content_sha256: edited by hand: run li-httpd setup-censor "
                             "again")
    paths = _strings(data, "json_deny_paths", path)
    sources = []
    items = data.get("source", [])
    if not isinstance(items, list):
        raise GeneratedError("generated_format", f"{path}: source must be [[source]] tables")
    for item in items:
        if not (isinstance(item, dict) and item.get("kind") in ("sql", "openapi")
                and isinstance(item.get("path"), str)
                and isinstance(item.get("sha256"), str) and _HEX64.fullmatch(item["sha256"])):
            raise GeneratedError("generated_format", f"{path}: malformed [[source]] {item!r}")
        sources.append(Source(item["kind"], item["path"], item["sha256"]))
    lines = text.splitlines()
    for deny in paths:
        problem = checks.json_path(deny)
        if problem is not None:
            number = next((n for n, line in enumerate(lines, 1)
                           if _toml_string(deny) in line), 0)
            raise GeneratedError("generated_path", f"{path}:{number}: {problem}")
    return GeneratedCensor(path, paths, tuple(sources), _strings(data, "sql", path),
                           _strings(data, "openapi", path), found[0])


def _strings(data: dict[str, object], key: str, path: str) -> tuple[str, ...]:
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise GeneratedError("generated_format", f"{path}: {key} must be a list of strings")
    return tuple(value)


# -- files ----------------------------------------------------------------------------------


def expand_inputs(base: str, inputs: Sequence[str], kind: SourceKind) -> list[str]:
    """The source files of ``inputs`` (relative to ``base`` unless absolute): a file as
    itself, a directory as every file with the kind's suffix below it (hidden entries
    skipped), sorted by path. Returns paths as ``os.path.join(input, relative)``;
    raises OSError for an input that does not exist."""
    suffixes = SQL_SUFFIXES if kind == "sql" else OPENAPI_SUFFIXES
    out: list[str] = []
    for given in inputs:
        full = os.path.normpath(os.path.join(base, given))  # lexical, like relpath
        if os.path.isdir(full):
            found = []
            for directory, dirs, files in os.walk(full):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                rel = os.path.relpath(directory, full)
                found += [os.path.normpath(os.path.join(given, rel, f)) for f in files
                          if f.endswith(suffixes) and not f.startswith(".")]
            out += sorted(found)
        elif os.path.isfile(full):
            out.append(given)
        else:
            raise FileNotFoundError(f"{given}: no such file or directory")
    return out


def read_file(path: str) -> GeneratedCensor:
    """Read and parse the generated file at ``path`` (raises :class:`GeneratedError`)."""
    try:
        if os.path.exists(path) and not os.path.isfile(path):
            raise GeneratedError("generated_file", f"generated file {path!r} is not a "
                                 "regular file")
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise GeneratedError("generated_file", f"generated file {path!r} is larger "
                                 f"than {MAX_BYTES} bytes")
        text = raw.decode("utf-8")
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path, not UTF-8
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise GeneratedError("generated_file", f"cannot read generated file {path!r}: "
                             f"{reason}; run li-httpd setup-censor to write it") from exc
    return parse(text, path)


def source_problems(generated: GeneratedCensor) -> list[str]:
    """What changed in the sources since generation (empty: up to date)."""
    base = os.path.dirname(generated.path)
    problems: list[str] = []
    recorded = {(s.kind, s.path): s for s in generated.sources}
    current: list[tuple[SourceKind, str]] = []
    groups: tuple[tuple[SourceKind, tuple[str, ...]], ...] = (
        ("sql", generated.sql), ("openapi", generated.openapi))
    for kind, inputs in groups:
        for given in inputs:
            try:
                current += [(kind, p) for p in expand_inputs(base, [given], kind)]
            except (OSError, ValueError):
                problems.append(f"source {given!r} is missing")
    for kind, path in current:
        source = recorded.get((kind, path))
        if source is None:
            problems.append(f"new source file {path!r}")
            continue
        try:
            with open(os.path.normpath(os.path.join(base, path)), "rb") as handle:
                changed = digest(handle.read()) != source.sha256
        except (OSError, ValueError):
            problems.append(f"source {path!r} is unreadable")
            continue
        if changed:
            problems.append(f"source {path!r} changed")
    listed = set(current)
    problems += [f"source {s.path!r} is missing" for s in generated.sources
                 if (s.kind, s.path) not in listed]
    return problems


def load(path: str) -> GeneratedCensor:
    """Read, parse and check a generated file against its sources."""
    generated = read_file(path)
    stale = source_problems(generated)
    if stale:
        raise GeneratedError("generated_stale", f"{path} is out of date "
                             f"({'; '.join(stale)}): run li-httpd setup-censor again")
    return generated
