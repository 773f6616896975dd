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

from . import censorgen
from .censorgen import GeneratedCensor
from .desugar import desugar
from .locate import KeyPath, SourceMap, format_path
from .model import RATE_LIMIT_EXEMPT, Config, Route
from .problems import ConfigError, Problem, Problems
from .schema import Decoder, InvalidValue, Note, emit
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
    generated_censor: GeneratedCensor | None = None
    """``[leak_censor] generated_file``, read and verified (None when not set). Kept
    beside the model, not in it: the canonical text (explain-config) names the file,
    and routes merge its paths with :func:`~.censorgen.effective_deny_paths`."""

    @property
    def hash(self) -> str:
        """Identifies the effective config: equal for equivalent files (and the same
        generated censor file content, which the canonical text only names)."""
        text = self.canonical
        if self.generated_censor is not None:
            text += f"\n# generated_file sha256 {self.generated_censor.content_sha256}\n"
        return hashlib.sha256(text.encode()).hexdigest()[:12]


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
    # Desugaring only reports route problems (and drops the routes it cannot read).
    broken: list[KeyPath] = [("route",)] if problems.errors else []
    config = _decode(result.data, problems, broken)
    # With errors already found, the cross-field rules still run, except those that
    # read a key that has an error (it holds a stand-in value): every error that does
    # not depend on another one is reported in the same pass.
    validate(config, problems, broken)
    generated = _load_generated(config, filename, problems, broken)
    located = [_locate(p, source, result.origins) for p in problems.items]
    located.sort(key=lambda p: (p.line, p.severity != "error"))
    if any(p.severity == "error" for p in located):
        raise ConfigError(filename, located)
    return LoadedConfig(config, filename, explain(config),
                        tuple(p for p in located if p.severity == "warning"), generated)


def generated_path(config: Config, filename: str) -> str:
    """``[leak_censor] generated_file`` as a path: relative to the config file's
    directory (the working directory for the embedded default)."""
    base = "" if filename == EMBEDDED_NAME else os.path.dirname(os.path.abspath(filename))
    return os.path.abspath(os.path.join(base, config.leak_censor.generated_file))


def _load_generated(config: Config, filename: str, problems: Problems,
                    broken: list[KeyPath]) -> GeneratedCensor | None:
    """Read and verify the generated censor file (rules generated_*)."""
    if not config.leak_censor.generated_file or any(
            p[:1] == ("leak_censor",) or p == () for p in broken):
        return None
    try:
        return censorgen.load(generated_path(config, filename))
    except censorgen.GeneratedError as exc:
        problems.error(("leak_censor", "generated_file"), exc.rule, exc.message)
        return None


def _decode(data: dict[str, Any], problems: Problems, broken: list[KeyPath]) -> Config:
    """Decode everything, then the routes, which inherit the decoded [defaults].

    Keys with errors decode to stand-ins (see :class:`~.schema.Decoder`); their paths
    are added to ``broken``. Routes that cannot be built at all stand in as no routes.
    """
    decoder = Decoder(problems)
    routes_raw = data.pop("route", [])
    base: Config = decoder.section(Config, data, ())  # every key of Config has a default
    try:
        routes = decoder.value(tuple[Route, ...], routes_raw, ("route",),
                               inherited=base.defaults)
        routes = _exempt_from_default_rate_limit(routes, routes_raw)
    except InvalidValue:
        routes = ()
        decoder.broken.append(("route",))
    broken += decoder.broken
    return dataclasses.replace(base, route=routes)


def _exempt_from_default_rate_limit(routes: tuple[Route, ...],
                                    raw: object) -> tuple[Route, ...]:
    """Built-in responders (the healthcheck) do not inherit [defaults.rate_limit]: a
    load balancer probing them must never get 429. A route's own [route.rate_limit]
    still applies."""
    if not isinstance(raw, list):
        return routes
    return tuple(
        dataclasses.replace(route, rate_limit=None)
        if route.static in RATE_LIMIT_EXEMPT and route.proxy is None
        and isinstance(item, dict) and "rate_limit" not in item else route
        for route, item in zip(routes, raw, strict=True))


def _locate(problem: Problem, source: SourceMap, origins: dict[KeyPath, KeyPath]) -> Problem:
    if problem.anchors:
        return _locate_anchored(problem, source, origins)
    path = problem.path
    for end in range(len(path), 0, -1):
        origin = origins.get(path[:end])
        if origin is not None:
            return dataclasses.replace(problem, line=source.line_of(origin),
                                       display_path=format_path(origin))
    return dataclasses.replace(problem, line=source.line_of(path),
                               display_path=format_path(path))


def _locate_anchored(problem: Problem, source: SourceMap,
                     origins: dict[KeyPath, KeyPath]) -> Problem:
    """A problem about settings that may be defaults: the line of the first anchor the
    file writes, else no line at all (and the problem's note on the defaults)."""
    for anchor in problem.anchors:
        if source.has(anchor):
            return dataclasses.replace(problem, line=source.line_of(anchor),
                                       display_path=format_path(anchor))
    message = f"{problem.message} ({problem.unwritten_note})" if problem.unwritten_note \
        else problem.message
    return dataclasses.replace(problem, line=0, display_path=format_path(problem.anchors[0]),
                               message=message)


def explain(config: Config) -> str:
    """The canonical TOML of a config (what ``explain-config`` prints)."""
    header = ("# li-httpd canonical configuration (explain-config).\n"
              "# Every default is filled in; this text validates and explains to itself.\n")
    return header + emit(config, note=_remarks(config))


def _remarks(config: Config) -> Note:
    def remark(section: object) -> str | None:
        if isinstance(section, Route) and section.static in RATE_LIMIT_EXEMPT \
                and section.rate_limit is None \
                and config.defaults.rate_limit is not None:
            return ("no rate limit: the built-in healthcheck is exempt from "
                    "[defaults.rate_limit]\n(add [route.rate_limit] to limit it)")
        return None
    return remark
