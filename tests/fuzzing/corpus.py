"""The fuzz corpus: saved inputs under tests/fuzz_corpus/<target>/, replayed by
tests/fuzzing/test_fuzz_corpus.py on every test run.

A target is one parser with one invariant check (``http1``: the HTTP/1.1 readers, the
input format of tests/workers/http1_invariants.py ``decode``; ``config``: the config
loader, the input decoded as UTF-8 with replacement; ``censor``: the leak censor, the
input format of tests/fuzzing/censor_invariants.py). Seed inputs are named
``seed-*``; an input that broke an invariant under atheris is saved as
``crash-<sha1 of the input>`` by :func:`save_reproducer`, so it becomes a regression
test once committed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

TESTS = Path(__file__).resolve().parent.parent
CORPUS = TESTS / "fuzz_corpus"
TARGETS = ("http1", "config", "censor")


def reproducer_path(target: str, data: bytes, corpus: Path = CORPUS) -> Path:
    return corpus / target / f"crash-{hashlib.sha1(data).hexdigest()}"


def save_reproducer(target: str, data: bytes, corpus: Path = CORPUS) -> Path:
    """Write ``data`` as a reproducer of ``target`` (idempotent) and return its path."""
    if target not in TARGETS:
        raise ValueError(f"unknown fuzz target {target!r}")
    path = reproducer_path(target, data, corpus)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def saving(target: str, check: Callable[[bytes], object]) -> Callable[[bytes], None]:
    """An atheris test function: ``check(data)``, and when it raises, save ``data`` as a
    reproducer of ``target`` (say where on stderr) before re-raising."""
    def test_one_input(data: bytes) -> None:
        try:
            check(data)
        except Exception:
            path = save_reproducer(target, data)
            print(f"\n==> reproducer saved: {path}", file=sys.stderr)
            raise
    return test_one_input


def fuzz(atheris: Any, target: str, check: Callable[[bytes], object],
         defaults: Callable[[], Sequence[str]]) -> None:
    """Run atheris on ``check`` (saving reproducers of ``target``) with the command
    line's libFuzzer options; ``defaults()`` gives options such as ``-seed_inputs=`` or
    ``-dict=``, each added only when the command line does not set that option."""
    argv = list(sys.argv)
    for option in defaults():
        name = option.partition("=")[0] + "="
        if not any(arg.startswith(name) for arg in argv[1:]):
            argv.append(option)
    atheris.Setup(argv, saving(target, check))
    atheris.Fuzz()


def seed_inputs(paths: Sequence[Path]) -> str:
    """The ``-seed_inputs=`` option for ``paths``."""
    return "-seed_inputs=" + ",".join(str(path) for path in paths)


def corpus_inputs(target: str, corpus: Path = CORPUS) -> list[Path]:
    """The saved inputs of ``target`` (seeds and reproducers), README files excepted."""
    return [path for name, path in corpus_files(corpus) if name == target]


def corpus_files(corpus: Path = CORPUS) -> list[tuple[str, Path]]:
    """(target, file) for every input in the corpus, README files excepted."""
    return [(path.relative_to(corpus).parts[0], path)
            for path in sorted(corpus.rglob("*"))
            if path.is_file() and len(path.relative_to(corpus).parts) > 1
            and not path.name.startswith("README")]


def config_text(data: bytes) -> str:
    """The config text a ``config`` input stands for."""
    return data.decode("utf-8", "replace")


def http1_invariants() -> ModuleType:
    """tests/workers/http1_invariants.py, loaded by path (pytest's importlib mode gives
    the two test packages no common parent to import it relatively from)."""
    name = "li_httpd_tests_http1_invariants"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, TESTS / "workers" / "http1_invariants.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
