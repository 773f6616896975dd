"""Config problems: what went wrong, where (key path and line), and how bad.

Every stage of the pipeline (TOML parse, desugar, decode, validate) reports into one
:class:`Problems` collector so that a user sees all errors of a file at once, each as
``FILE:LINE: key.path: message``. A problem about settings the file does not write
(their defaults apply) has no line and reads ``FILE: key.path: message``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .locate import KeyPath, format_path

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding. ``rule`` is a stable identifier, listed in docs/configuration.md."""

    path: KeyPath
    message: str
    rule: str
    severity: Severity = "error"
    line: int = 0
    """1-based line in the file; 0 when the problem is not about any line of it."""
    display_path: str = ""
    anchors: tuple[KeyPath, ...] = ()
    """For a problem about settings a file may leave to their defaults: the keys it may
    point at, in order of preference. The first one written in the file gives the line;
    when none is, the problem has no line (never a made-up one)."""
    unwritten_note: str = ""
    """Appended to the message when none of ``anchors`` is written in the file."""

    def render(self, filename: str) -> str:
        where = self.display_path or format_path(self.path) or "(top level)"
        prefix = "warning: " if self.severity == "warning" else ""
        at = f"{filename}:{self.line}" if self.line > 0 else filename
        return f"{at}: {where}: {prefix}{self.message}"


@dataclass
class Problems:
    """Collects problems in the order they were found."""

    items: list[Problem] = field(default_factory=list)

    def error(self, path: KeyPath, rule: str, message: str,
              anchors: tuple[KeyPath, ...] = (), unwritten_note: str = "") -> None:
        self.items.append(Problem(path, message, rule, anchors=anchors,
                                  unwritten_note=unwritten_note))

    def warning(self, path: KeyPath, rule: str, message: str,
                anchors: tuple[KeyPath, ...] = (), unwritten_note: str = "") -> None:
        self.items.append(Problem(path, message, rule, "warning", anchors=anchors,
                                  unwritten_note=unwritten_note))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "warning"]


class ConfigError(Exception):
    """Raised when a config has at least one error; carries every problem found."""

    def __init__(self, filename: str, problems: list[Problem]) -> None:
        self.filename = filename
        self.problems = problems
        super().__init__("\n".join(p.render(filename) for p in problems))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]
