"""Benchmark configuration: TOML layers merged in a fixed order, no Python per scenario.

Order: ``defaults.toml`` → ``scenarios/<name>/bench.toml`` → the suite profile's ``set``
→ ``--set key.path=value`` on the command line. Tables merge key by key; any other value
replaces the earlier one. A ``--set`` value is read as a TOML value when it parses as one
(``3``, ``true``, ``[1, 2]``, ``"text"``) and as a plain string otherwise.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"


class BenchConfigError(Exception):
    """A benchmark TOML file or override that cannot be used."""


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BenchConfigError(f"{path}: {exc}") from exc


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_set(config: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = config
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise BenchConfigError(f"--set {dotted}: {part} is not a table")
        node = child
    node[parts[-1]] = value


@dataclass(frozen=True)
class Profile:
    name: str
    scenarios: tuple[str, ...]
    timing: bool
    overrides: Mapping[str, Any]


def load_profile(name: str) -> Profile:
    suite = read_toml(HERE / "suite.toml")
    profiles = suite.get("profiles", {})
    if name not in profiles:
        raise BenchConfigError(f"no profile {name!r} in suite.toml (have: {', '.join(profiles)})")
    entry = profiles[name]
    return Profile(name, tuple(entry.get("scenarios", ())), bool(entry.get("timing", True)),
                   dict(entry.get("set", {})))


def scenario_config(name: str, profile: Profile, sets: list[tuple[str, Any]]) -> dict[str, Any]:
    path = SCENARIOS / name / "bench.toml"
    if not path.exists():
        available = sorted(p.name for p in SCENARIOS.iterdir() if (p / "bench.toml").exists())
        raise BenchConfigError(f"no scenario {name!r} (have: {', '.join(available)})")
    config = merge(read_toml(HERE / "defaults.toml"), read_toml(path))
    config.setdefault("name", name)
    for dotted, value in profile.overrides.items():
        apply_set(config, dotted, value)
    for dotted, value in sets:
        apply_set(config, dotted, value)
    return config


def get(config: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node
