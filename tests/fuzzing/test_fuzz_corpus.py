"""Replay every saved fuzz input (tests/fuzz_corpus/<target>/*) through its target's
invariant: the seeds, and every ``crash-<sha1>`` reproducer an atheris run saved (see
tests/fuzzing/corpus.py), so a fixed crash stays fixed."""

from __future__ import annotations

from pathlib import Path

import pytest

from .censor_invariants import check_censor_input
from .config_invariants import check_config_text
from .corpus import (
    CORPUS,
    TARGETS,
    config_text,
    corpus_files,
    http1_invariants,
    reproducer_path,
    save_reproducer,
)

FILES = corpus_files()


def test_the_corpus_has_seeds_for_every_target() -> None:
    assert {target for target, _ in FILES} == set(TARGETS)


@pytest.mark.parametrize(("target", "path"), FILES,
                         ids=[str(p.relative_to(CORPUS)) for _, p in FILES])
def test_replay(target: str, path: Path) -> None:
    data = path.read_bytes()
    seed = path.name.startswith("seed-")  # seeds are valid inputs: no error expected
    if target == "http1":
        events = http1_invariants().check_fuzz_input(data)
        errors = [e for e in events if isinstance(e, tuple) and e[0] == "error"]
        assert not seed or ("END" in events and not errors), events
    elif target == "config":
        loaded = check_config_text(config_text(data))
        assert not seed or loaded is not None
    elif target == "censor":
        check_censor_input(data)
    else:
        pytest.fail(f"unknown fuzz target folder {target!r}")


def test_a_saved_reproducer_is_replayed(tmp_path: Path) -> None:
    saved = save_reproducer("http1", b"\x02\x00HTTP/1.1 200 OK\r\n\r\n", tmp_path)
    assert saved == reproducer_path("http1", saved.read_bytes(), tmp_path)
    assert saved.name.startswith("crash-") and len(saved.name) == len("crash-") + 40
    assert corpus_files(tmp_path) == [("http1", saved)]
    with pytest.raises(ValueError):
        save_reproducer("nope", b"", tmp_path)
