"""Render the configuration reference (docs/configuration.md) from the schema.

The generated part sits between two marker lines in the document; everything else in
the file is hand-written prose. ``python -m li_httpd.config.reference FILE`` rewrites
the generated part in place; a test fails when the committed file is stale.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Mapping
from typing import Any

from .model import Config
from .schema import default_of, describe, field_types, has_default, inline, spec_of, toml_key
from .units import Millis, Size, format_duration, format_size
from .validate import RULES

BEGIN = "<!-- BEGIN GENERATED REFERENCE (python -m li_httpd.config.reference) -->"
END = "<!-- END GENERATED REFERENCE -->"

def _bound(tp: Any, value: int | None) -> str:
    if value is None:
        return ""
    if tp is Size:
        return format_size(value)
    if tp is Millis:
        return format_duration(value)
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _strip(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if type(None) in typing.get_args(tp) and len(args) == 1:
        return args[0]
    return tp


def _dataclass_type(tp: Any) -> type[Any] | None:
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _row(key: str, tp: Any, f: dataclasses.Field[Any], instance: object | None) -> str:
    """One key. ``instance`` is the section's default object when its parent builds
    it with a factory (e.g. [log.error]), whose values override the class defaults."""
    spec = spec_of(f)
    if instance is not None:
        value = getattr(instance, f.name)
        default = "unset" if value is None else f"`{inline(tp, value)}`"
    elif not has_default(f):
        default = "required"
    else:
        value = default_of(f)
        default = "unset" if value is None else f"`{inline(tp, value)}`"
    lower, upper = _bound(tp, spec.minimum), _bound(tp, spec.maximum)
    bounds = f"{lower} .. {upper}" if (lower or upper) else ""
    rule = spec.check_rule if spec.check is not None or spec.key_check is not None else ""
    return (f"| `{key}` | {_cell(describe(tp))} | {_cell(default)} | {bounds} | {rule} | "
            f"{_cell(spec.doc)} |")


def _section_rows(cls: type[Any], header: str, title: str, out: list[str],
                  instance: object | None = None) -> None:
    """Document one section; nested sections follow it. ``title`` is how it is written."""
    hints = field_types(cls)
    rows: list[str] = []
    nested: list[tuple[str, str, type[Any], object | None]] = []
    for f in dataclasses.fields(cls):
        spec = spec_of(f)
        tp = _strip(hints[f.name])
        key = toml_key(f)
        child = f"{header}.{key}" if header else key
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        element = _dataclass_type(args[-1] if origin in (Mapping, dict) else args[0]) \
            if origin in (Mapping, dict, tuple) else None
        section = _dataclass_type(tp)
        if section is not None and spec.style == "table":
            default = getattr(instance, f.name) if instance is not None else (
                default_of(f) if has_default(f) else None)
            nested.append((child, f"[{child}]", section, default))
        elif section is not None and spec.style == "dotted":
            sub_hints = field_types(section)
            for sub in dataclasses.fields(section):
                sub_tp = _strip(sub_hints[sub.name])
                sub_key = f"{key}.{toml_key(sub)}"
                rows.append(_row(sub_key, sub_tp, sub, None))
                inner = _dataclass_type(typing.get_args(sub_tp)[0] if typing.get_origin(sub_tp)
                                        is tuple else sub_tp)
                if inner is not None:
                    nested.append((f"{header}.{sub_key}", f"{header}.{sub_key} (inline table)",
                                   inner, None))
        elif origin in (Mapping, dict) and element is not None:
            nested.append((f"{child}.NAME", f"[{child}.NAME]", element, None))
        elif origin is tuple and element is not None and spec.style == "table":
            nested.append((child, f"[[{child}]]", element, None))
        else:
            rows.append(_row(key, tp, f, instance))
            if origin is tuple and element is not None:
                nested.append((child, f"{child} (array of inline tables)", element, None))
    if rows and header:
        out += [f"### `{title}`" if "(" not in title else f"### {title}", "",
                "| key | type | default | min .. ceiling | rule | meaning |",
                "|---|---|---|---|---|---|", *rows, ""]
    for child_header, child_title, child_cls, child_default in nested:
        _section_rows(child_cls, child_header, child_title, out, child_default)


def render_reference() -> str:
    out = [BEGIN, "", "## Keys", ""]
    _section_rows(Config, "", "", out)
    out += ["## Validation rules", "",
            "Each rule id appears in error messages' tests and has a reject case under "
            "`tests/config_reject/`.", "",
            "| rule | what is refused |", "|---|---|"]
    out += [f"| `{rule.id}` | {_cell(rule.summary)} |" for rule in RULES]
    out += ["", END]
    return "\n".join(out) + "\n"


def splice(document: str, generated: str) -> str:
    start = document.index(BEGIN)
    end = document.index(END) + len(END)
    return document[:start] + generated.rstrip("\n") + document[end:]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m li_httpd.config.reference docs/configuration.md",
              file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as handle:
        document = handle.read()
    with open(argv[0], "w", encoding="utf-8") as handle:
        handle.write(splice(document, render_reference()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
