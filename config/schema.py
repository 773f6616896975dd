"""Declarative schema: one description of every config key drives decoding, explain
output and the reference documentation.

Each section of the config is a frozen dataclass whose fields carry a :class:`Spec`
(via :func:`setting`): documentation, bounds (the schema ceiling), the TOML key name,
an extra value check, whether the value is inherited from ``[defaults]`` and how
``explain-config`` prints it. :func:`decode` turns plain TOML data into those
dataclasses, reporting unknown keys (with a "did you mean" hint), type errors, values
outside bounds and missing required keys into a :class:`~.problems.Problems`.
:func:`emit` prints a model back as canonical TOML that decodes to the same model.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from typing import Any, Literal, TypeVar

from .locate import KeyPath, format_path
from .problems import Problems
from .units import Millis, Size, UnitError, format_duration, format_size, parse_duration, parse_size

Check = Callable[[Any], str | None]
"""Returns an error message for a decoded value, or None when the value is fine."""

PrintStyle = Literal["table", "dotted", "inline"]


@dataclass(frozen=True, slots=True)
class Spec:
    doc: str
    minimum: int | None = None
    maximum: int | None = None
    key: str | None = None
    check: Check | None = None
    key_check: Check | None = None
    inherit: bool = False
    style: PrintStyle = "table"
    check_rule: str = "value"


_PLAIN = Spec(doc="")


def setting(
    default: Any = MISSING,
    *,
    doc: str,
    minimum: int | None = None,
    maximum: int | None = None,
    key: str | None = None,
    check: Check | None = None,
    key_check: Check | None = None,
    inherit: bool = False,
    style: PrintStyle = "table",
    check_rule: str = "value",
    factory: Callable[[], Any] | None = None,
) -> Any:
    """Declare a config field. ``factory`` builds a default section object."""
    spec = Spec(doc, minimum, maximum, key, check, key_check, inherit, style, check_rule)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"spec": spec})
    return dataclasses.field(default=default, metadata={"spec": spec})


def spec_of(f: dataclasses.Field[Any]) -> Spec:
    spec = f.metadata.get("spec")
    if not isinstance(spec, Spec):
        raise TypeError(f"config field {f.name} has no Spec")
    return spec


def toml_key(f: dataclasses.Field[Any]) -> str:
    return spec_of(f).key or f.name


_HINTS_CACHE: dict[type, dict[str, Any]] = {}


def field_types(cls: type) -> dict[str, Any]:
    hints = _HINTS_CACHE.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _HINTS_CACHE[cls] = hints
    return hints


def has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING


def default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise KeyError(f.name)


_Number = TypeVar("_Number", int, float)


class InvalidValue(Exception):  # noqa: N818 - a control-flow signal, not an error report
    """The value at this path was reported to Problems and cannot be built."""


def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
             list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _is_optional(tp: Any) -> bool:
    return _is_union(tp) and type(None) in typing.get_args(tp)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _strip_optional(tp: Any) -> Any:
    if not _is_optional(tp):
        return tp
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 else typing.Union[tuple(args)]  # noqa: UP007


def describe(tp: Any) -> str:
    if tp is Size:
        return 'a size such as "4k"'
    if tp is Millis:
        return 'a duration such as "30s"'
    if tp is bool:
        return "a boolean"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "an array"
    if dataclasses.is_dataclass(tp) or origin in (Mapping, dict):
        return "a table"
    if _is_union(tp):
        return " or ".join(describe(a) for a in typing.get_args(tp) if a is not type(None))
    return str(tp)


def suggest(word: str, choices: typing.Iterable[str]) -> str:
    """A ``" (did you mean 'x'?)"`` suffix when a choice is close to ``word``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Decoder:
    """Turns TOML data into typed config sections, reporting every problem found.

    A key whose value is wrong is reported and replaced by what the key would be without
    it (its inherited value or its default), so that a section with a bad key still
    decodes and the rules that do not read that key can still run. :attr:`broken` lists
    the paths whose value is such a stand-in: a section holding an unknown key, or a key
    whose value failed. Only a section that misses a required key (or is not a table)
    cannot be built and raises :class:`InvalidValue`; its parent key then stands in.
    """

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        self.broken: list[KeyPath] = []

    def section(self, cls: type[Any], raw: object, path: KeyPath,
                inherited: object | None = None) -> Any:
        """Decode a table into ``cls``; raises :class:`InvalidValue` after reporting."""
        return self._dataclass(cls, raw, path, inherited, None)

    def _fail(self, path: KeyPath, rule: str, message: str) -> typing.NoReturn:
        self.problems.error(path, rule, message)
        raise InvalidValue

    def _dataclass(self, cls: type[Any], raw: object, path: KeyPath,
                   inherited: object | None, base: object | None) -> Any:
        """``base``: the section's own default (e.g. [log.audit]'s path and format), which
        keys the user left out of a partly written section keep."""
        if not isinstance(raw, dict):
            self._fail(path, "type", f"expected a table, got {_type_name(raw)}")
        fields = dataclasses.fields(cls)
        by_key = {toml_key(f): f for f in fields}
        for key in raw:
            if key not in by_key:
                hint = suggest(key, by_key)
                self.problems.error((*path, key), "unknown_key",
                                    f"unknown key {key!r}{hint}")
                # A misspelt key leaves some key of this section at a value the user
                # did not mean: treat the whole section as unknown.
                self.broken.append(path)
        hints = field_types(cls)
        values: dict[str, Any] = {}
        failed = False
        for f in fields:
            key = toml_key(f)
            spec = spec_of(f)
            inherited_value = getattr(inherited, f.name, None) if inherited is not None else None
            if key in raw:
                child_inherit = None if spec.inherit else inherited_value
                try:
                    values[f.name] = self.value(hints[f.name], raw[key], (*path, key), spec,
                                                child_inherit, base=_section_default(f, base))
                    continue
                except InvalidValue:
                    self.broken.append((*path, key))
            if spec.inherit and inherited_value is not None:
                values[f.name] = inherited_value
            elif base is not None or has_default(f):
                default = getattr(base, f.name) if base is not None else default_of(f)
                # A section the user left out entirely still picks up inherited parts.
                if inherited_value is not None and dataclasses.is_dataclass(default):
                    default = inherited_value
                values[f.name] = default
            elif key in raw:
                failed = True  # reported while decoding it; nothing can stand in
            else:
                self.problems.error((*path, key), "required", f"missing required key {key!r}")
                failed = True
        if failed:
            raise InvalidValue
        return cls(**values)

    def value(self, tp: Any, raw: object, path: KeyPath, spec: Spec | None = None,
              inherited: object | None = None, *, base: object | None = None) -> Any:
        """Decode one value of type ``tp``; raises :class:`InvalidValue` after reporting."""
        spec = spec or _PLAIN
        decoded = self._typed(tp, raw, path, spec, inherited, base)
        if spec.check is not None and decoded is not None:
            message = spec.check(decoded)
            if message:
                self._fail(path, spec.check_rule, message)
        return decoded

    def _bounded(self, number: _Number, path: KeyPath, spec: Spec, tp: Any) -> _Number:
        def show(n: float) -> str:
            if tp is Size:
                return f'"{format_size(int(n))}"'
            if tp is Millis:
                return f'"{format_duration(int(n))}"'
            return str(n)

        if spec.maximum is not None and number > spec.maximum:
            self._fail(path, "ceiling",
                       f"{show(number)} is above the schema ceiling {show(spec.maximum)}")
        if spec.minimum is not None and number < spec.minimum:
            self._fail(path, "minimum",
                       f"{show(number)} is below the minimum {show(spec.minimum)}")
        return number

    def _typed(self, tp: Any, raw: object, path: KeyPath, spec: Spec,
               inherited: object | None, base: object | None = None) -> Any:
        if _is_optional(tp):
            tp = _strip_optional(tp)
        if tp is Size:
            try:
                return Size(self._bounded(parse_size(raw), path, spec, tp))
            except UnitError as exc:
                self._fail(path, "size", str(exc))
        if tp is Millis:
            try:
                return Millis(self._bounded(parse_duration(raw), path, spec, tp))
            except UnitError as exc:
                self._fail(path, "duration", str(exc))
        if tp is bool:
            if not isinstance(raw, bool):
                self._fail(path, "type", f"expected a boolean, got {_type_name(raw)}")
            return raw
        if tp is int:
            if not isinstance(raw, int) or isinstance(raw, bool):
                self._fail(path, "type", f"expected an integer, got {_type_name(raw)}")
            return self._bounded(raw, path, spec, tp)
        if tp is float:
            if not isinstance(raw, int | float) or isinstance(raw, bool):
                self._fail(path, "type", f"expected a number, got {_type_name(raw)}")
            if not math.isfinite(raw):
                self._fail(path, "type", f"expected a finite number, got {raw}")
            return float(self._bounded(raw, path, spec, tp))
        if tp is str:
            if not isinstance(raw, str):
                self._fail(path, "type", f"expected a string, got {_type_name(raw)}")
            return raw
        origin = typing.get_origin(tp)
        if origin is Literal:
            choices = typing.get_args(tp)
            if raw not in choices or type(raw) is not type(choices[0]):
                shown = ", ".join(repr(c) for c in choices)
                hint = suggest(raw, [str(c) for c in choices]) if isinstance(raw, str) else ""
                self._fail(path, "enum", f"{raw!r} is not one of {shown}{hint}")
            return raw
        if _is_union(tp):
            for member in typing.get_args(tp):
                if typing.get_origin(member) is Literal and isinstance(raw, str):
                    return self._typed(member, raw, path, spec, inherited)
                if member is int and isinstance(raw, int) and not isinstance(raw, bool):
                    return self._typed(member, raw, path, spec, inherited)
            self._fail(path, "type", f"expected {describe(tp)}, got {_type_name(raw)}")
        if origin is tuple:
            (element_type, _) = typing.get_args(tp)
            if not isinstance(raw, list):
                self._fail(path, "type", f"expected an array, got {_type_name(raw)}")
            items: list[Any] = []
            failed = False
            element_spec = dataclasses.replace(spec, check=None)
            for index, element in enumerate(raw):
                try:
                    items.append(self.value(element_type, element, (*path, index), element_spec,
                                            inherited))
                except InvalidValue:
                    failed = True
            if failed:
                raise InvalidValue
            return tuple(items)
        if origin in (Mapping, dict):
            (_, value_type) = typing.get_args(tp)
            if not isinstance(raw, dict):
                self._fail(path, "type", f"expected a table, got {_type_name(raw)}")
            entries: dict[str, Any] = {}
            failed = False
            element_spec = dataclasses.replace(spec, check=None)
            for name, element in raw.items():
                try:
                    if spec.key_check is not None:
                        message = spec.key_check(name)
                        if message:
                            self._fail((*path, name), spec.check_rule, message)
                    entries[name] = self.value(value_type, element, (*path, name), element_spec)
                except InvalidValue:
                    failed = True
            if failed:
                raise InvalidValue
            return types.MappingProxyType(entries)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            return self._dataclass(tp, raw, path, inherited, base)
        raise TypeError(f"unsupported schema type {tp!r} at {format_path(path)}")



def _section_default(f: dataclasses.Field[Any], base: object | None) -> object | None:
    """The default section object of field ``f`` (within the parent's default ``base``)."""
    if base is not None:
        value = getattr(base, f.name)
    elif has_default(f):
        value = default_of(f)
    else:
        return None
    return value if dataclasses.is_dataclass(value) and not isinstance(value, type) else None


# -- canonical TOML output -------------------------------------------------------------


def _toml_string(text: str) -> str:
    out = ['"']
    for char in text:
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _toml_key(key: str) -> str:
    return format_path((key,))


def inline(tp: Any, value: Any) -> str:
    """One value as inline TOML."""
    tp = _strip_optional(tp)
    if tp is Size:
        return _toml_string(format_size(value))
    if tp is Millis:
        return _toml_string(format_duration(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # finite (checked on load): a TOML float, e.g. 0.15 or 1e-05
    if isinstance(value, str):
        return _toml_string(value)
    origin = typing.get_origin(tp)
    if origin is tuple:
        (element_type, _) = typing.get_args(tp)
        return "[" + ", ".join(inline(element_type, v) for v in value) + "]"
    if origin in (Mapping, dict):
        (_, value_type) = typing.get_args(tp)
        if not value:
            return "{}"
        body = ", ".join(f"{_toml_key(k)} = {inline(value_type, v)}" for k, v in value.items())
        return "{ " + body + " }"
    if dataclasses.is_dataclass(value):
        hints = field_types(type(value))
        parts = []
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is not None:
                parts.append(f"{_toml_key(toml_key(f))} = {inline(hints[f.name], item)}")
        return "{ " + ", ".join(parts) + " }"
    raise TypeError(f"cannot print {value!r}")


def _is_table_value(tp: Any, value: Any, spec: Spec) -> bool:
    if spec.style != "table":
        return False
    tp = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(value):
        return True
    if origin in (Mapping, dict):
        (_, value_type) = typing.get_args(tp)
        return dataclasses.is_dataclass(value_type)
    if origin is tuple:
        (element_type, _) = typing.get_args(tp)
        return dataclasses.is_dataclass(element_type)
    return False


Note = Callable[[Any], str | None]
"""A comment to print under a table's header (explain-config's remarks), or None."""


def emit(section: Any, header: tuple[str, ...] = (), note: Note | None = None) -> str:
    """Print a config section (and everything below it) as canonical TOML."""
    lines: list[str] = []
    _emit_table(section, header, lines, array=False, note=note)
    return "\n".join(lines).lstrip("\n") + "\n"


def _emit_table(section: Any, header: tuple[str, ...], lines: list[str], *, array: bool,
                note: Note | None = None) -> None:
    hints = field_types(type(section))
    body: list[str] = []
    nested: list[tuple[dataclasses.Field[Any], Any]] = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if value is None:
            continue
        spec = spec_of(f)
        key = _toml_key(toml_key(f))
        if _is_table_value(hints[f.name], value, spec):
            nested.append((f, value))
        elif spec.style == "dotted" and dataclasses.is_dataclass(value):
            sub_hints = field_types(type(value))
            for sub in dataclasses.fields(value):
                item = getattr(value, sub.name)
                if item is not None:
                    body.append(f"{key}.{_toml_key(toml_key(sub))} = "
                                f"{inline(sub_hints[sub.name], item)}")
        else:
            body.append(f"{key} = {inline(hints[f.name], value)}")
    if header and (body or array):
        name = ".".join(_toml_key(h) for h in header)
        lines.append("")
        lines.append(f"[[{name}]]" if array else f"[{name}]")
    remark = note(section) if note is not None else None
    if remark:
        lines.extend(f"# {text}" for text in remark.splitlines())
    lines.extend(body)
    for f, value in nested:
        child = (*header, toml_key(f))
        tp = _strip_optional(hints[f.name])
        origin = typing.get_origin(tp)
        if origin in (Mapping, dict):
            for name, item in value.items():
                _emit_table(item, (*child, name), lines, array=False, note=note)
        elif origin is tuple:
            for item in value:
                _emit_table(item, child, lines, array=True, note=note)
        else:
            _emit_table(value, child, lines, array=False, note=note)
