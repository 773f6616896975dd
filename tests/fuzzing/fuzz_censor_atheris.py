"""atheris (libFuzzer) entry point for the leak censor. Not collected by pytest.

Run, with atheris installed (3.0.0 has a Python 3.11 wheel)::

    python tests/fuzzing/fuzz_censor_atheris.py -runs=100000 [-max_len=4096] [CORPUS_DIR]

The invariant is tests/fuzzing/censor_invariants.py ``check_censor_input``. The seeds
are tests/fuzz_corpus/censor/*; an input that breaks the invariant is saved there as
``crash-<sha1 of the input>`` and replayed by tests/fuzzing/test_fuzz_corpus.py.
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
    from fuzzing.corpus import corpus_inputs, fuzz, seed_inputs  # type: ignore[import-not-found]

    with atheris.instrument_imports():
        from li_httpd.workers import censor  # noqa: F401  (instrumented for coverage)

        from fuzzing import censor_invariants  # type: ignore[import-not-found]

    fuzz(atheris, "censor", censor_invariants.check_censor_input,
         lambda: [seed_inputs(corpus_inputs("censor"))])

if __name__ == "__main__":
    main()
