"""atheris (libFuzzer) entry point for the config loader. Not collected by pytest.

Run, with atheris installed (3.0.0 has a Python 3.11 wheel)::

    python tests/fuzzing/fuzz_config_atheris.py -runs=100000 [-max_len=4096] [CORPUS_DIR]

Each input is decoded as UTF-8 (with replacement) and loaded with ``load_text``; the
invariant is tests/fuzzing/config_invariants.py ``check_config_text``: a LoadedConfig
whose explain loads again to itself, or a ConfigError whose problems all have a
message, a rule and a line within the file; nothing else may be raised.

The accepted example configs (tests/config_accept/*.toml, with their ``@NAME@``
placeholders left in: such a config is refused, which still exercises the loader) and
tests/fuzz_corpus/config/* are passed as seed inputs unless ``-seed_inputs=`` is given.

An input that breaks the invariant is saved, before the fuzzer stops, as
tests/fuzz_corpus/config/crash-<sha1 of the input> (tests/fuzzing/corpus.py); committed,
it is replayed by tests/fuzzing/test_fuzz_corpus.py on every test run.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import atheris
except ImportError:  # the script explains itself below; pytest never imports it
    atheris = None


def main() -> None:
    if atheris is None:
        sys.exit("atheris is not installed; try: pip install atheris==3.0.0")
    tests = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(tests))
    from fuzzing.corpus import (  # type: ignore[import-not-found]
        config_text,
        corpus_inputs,
        fuzz,
        seed_inputs,
    )

    with atheris.instrument_imports():
        from li_httpd import config  # noqa: F401  (instrumented for coverage)

        from fuzzing import config_invariants  # type: ignore[import-not-found]

    fuzz(atheris, "config", lambda data: config_invariants.check_config_text(config_text(data)),
         lambda: [seed_inputs(sorted(tests.glob("config_accept/*.toml"))
                              + corpus_inputs("config"))])

if __name__ == "__main__":
    main()
