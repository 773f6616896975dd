"""The invariant every config text must keep, shared by the hypothesis fuzz test, the
corpus replay test and the atheris target of the config loader."""

from __future__ import annotations

from li_httpd.config import ConfigError, LoadedConfig, load_text


class ConfigInvariantError(AssertionError):
    """The loader broke its contract on some text."""


def check_config_text(text: str, filename: str = "f.toml") -> LoadedConfig | None:
    """Load ``text``: a LoadedConfig (whose explain loads again to itself) or a
    ConfigError whose problems all have a message, a rule and a line within the file.
    Any other exception escapes. Returns the LoadedConfig, or None when refused."""
    try:
        loaded = load_text(text, filename)
    except ConfigError as exc:
        if not exc.errors:
            raise ConfigInvariantError(f"ConfigError without an error: {exc.problems!r}"
                                       ) from exc
        line_count = text.count("\n") + 1
        for problem in exc.problems:
            if not problem.message or not problem.rule:
                raise ConfigInvariantError(f"problem without message/rule: {problem!r}"
                                           ) from exc
            if not 0 <= problem.line <= line_count:
                raise ConfigInvariantError(
                    f"problem line {problem.line} outside 0..{line_count}: {problem!r}"
                ) from exc
            problem.render(filename)  # renders without raising
        return None
    if not isinstance(loaded, LoadedConfig):
        raise ConfigInvariantError(f"load_text returned {loaded!r}")
    canonical = loaded.canonical
    try:
        again = load_text(canonical, "canonical.toml")
    except ConfigError as exc:
        raise ConfigInvariantError(f"explain of an accepted config is refused: {exc}\n"
                                   f"--- input ---\n{text}") from exc
    if again.canonical != canonical or again.config != loaded.config:
        raise ConfigInvariantError(f"explain is not a fixed point for:\n{text}")
    return loaded
