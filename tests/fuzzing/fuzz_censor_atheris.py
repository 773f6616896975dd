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
    from fuzzing.corpus import saving  # type: ignore[import-not-found]

    with atheris.instrument_imports():
        from li_httpd.workers import censor  # noqa: F401  (instrumented for coverage)

        from fuzzing import censor_invariants  # type: ignore[import-not-found]

    test_one_input = saving("censor", censor_invariants.check_censor_input)
    argv = list(sys.argv)
    if not any(arg.startswith("-seed_inputs=") for arg in argv[1:]):
        seeds = sorted(p for p in (tests / "fuzz_corpus" / "censor").glob("*") if p.is_file())
        argv.append("-seed_inputs=" + ",".join(str(p) for p in seeds))
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
