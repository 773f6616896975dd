"""The config pipeline: TOML text -> desugar -> typed model -> validate -> LoadedConfig.

Nothing is bound or started here. :func:`load_text` either returns a
:class:`LoadedConfig` (possibly with warnings) or raises :class:`ConfigError` listing
every problem with its line. :func:`load` finds the file the way the CLI does: ``-c``,
then ``$LI_HTTPD_CONFIG``, then /etc/li-httpd/li-httpd.toml, then the embedded dev default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import os
import re
import tomllib
from dataclasses import dataclass
from typing import Any

from .desugar import desugar
from .locate import KeyPath, SourceMap, format_path
from .model import Config, Route
from .problems import ConfigError, Problem, Problems
from .schema import Decoder, InvalidValue, emit
from .validate import validate

DEFAULT_PATH = "/etc/li-httpd/li-httpd.toml"
ENV_VAR = "LI_HTTPD_CONFIG"
EMBEDDED_NAME = "<embedded dev default>"
_TOML_LINE = re.compile(r"\(at line (\d+), column \d+\)")


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: Config
    filename: str
    canonical: str
    """explain-config output: the canonical TOML of ``config``."""
    warnings: tuple[Problem, ...]

    @property
    def hash(self) -> str:
        """Identifies the effective config: equal for equivalent files."""
        return hashlib.sha256(self.canonical.encode()).hexdigest()[:12]


def embedded_default() -> str:
    return importlib.resources.files(__package__).joinpath("dev_default.toml").read_text()


EMBEDDED = ":embedded:"
"""Pass as the explicit path to use the embedded dev default whatever files exist."""


def resolve_path(explicit: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The config file to read, or None for the embedded default."""
    env = os.environ if environ is None else environ
    if explicit == EMBEDDED:
        return None
    if explicit:
        return explicit
    if env.get(ENV_VAR):
        return env[ENV_VAR]
    if os.path.exists(DEFAULT_PATH):
        return DEFAULT_PATH
    return None


def load(explicit: str | None = None) -> LoadedConfig:
    path = resolve_path(explicit)
    if path is None:
        return load_text(embedded_default(), EMBEDDED_NAME)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(path, [Problem((), f"cannot read config file: {reason}",
                                         "toml_syntax", line=0, display_path="(file)")]) from exc
    return load_text(text, path)


def load_text(text: str, filename: str) -> LoadedConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_LINE.search(str(exc))
        line = int(found.group(1)) if found else 1
        message = _TOML_LINE.sub("", str(exc)).strip()
        raise ConfigError(filename, [Problem((), f"invalid TOML: {message}", "toml_syntax",
                                             line=line, display_path="(syntax)")]) from exc
    source = SourceMap(text)
    problems = Problems()
    result = desugar(raw, problems)
    config = _decode(result.data, problems)
    if config is not None and not problems.errors:
        validate(config, problems)
    located = [_locate(p, source, result.origins) for p in problems.items]
    located.sort(key=lambda p: (p.line, p.severity != "error"))
    if config is None or any(p.severity == "error" for p in located):
        raise ConfigError(filename, located)
    return LoadedConfig(config, filename, explain(config),
                        tuple(p for p in located if p.severity == "warning"))


def _decode(data: dict[str, Any], problems: Problems) -> Config | None:
    """Decode everything, then the routes, which inherit the decoded [defaults]."""
    decoder = Decoder(problems)
    routes_raw = data.pop("route", [])
    base: Config | None
    try:
        base = decoder.section(Config, data, ())
    except InvalidValue:
        base = None
    try:
        routes = decoder.value(tuple[Route, ...], routes_raw, ("route",),
                               inherited=base.defaults if base is not None else None)
    except InvalidValue:
        return None
    return None if base is None else dataclasses.replace(base, route=routes)


def _locate(problem: Problem, source: SourceMap, origins: dict[KeyPath, KeyPath]) -> Problem:
    path = problem.path
    for end in range(len(path), 0, -1):
        origin = origins.get(path[:end])
        if origin is not None:
            return dataclasses.replace(problem, line=source.line_of(origin),
                                       display_path=format_path(origin))
    return dataclasses.replace(problem, line=source.line_of(path),
                               display_path=format_path(path))


def explain(config: Config) -> str:
    """The canonical TOML of a config (what ``explain-config`` prints)."""
    header = ("# li-httpd canonical configuration (explain-config).\n"
              "# Every default is filled in; this text validates and explains to itself.\n")
    return header + emit(config)
