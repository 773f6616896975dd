"""atheris (libFuzzer) entry point for workers/http1.py. Not collected by pytest.

Run, with atheris installed (3.0.0 has a Python 3.11 wheel)::

    python tests/workers/fuzz_http1_atheris.py -runs=100000 [-max_len=4096] [CORPUS_DIR]

Each input is decoded by ``decode`` (http1_invariants.py): a reader (request or response, with or
without end of stream), cut points, and the bytes to feed. The invariants are those of
the hypothesis tests (see http1_invariants.py): only HttpError escapes, errors are final,
buffering stays within the limits plus one feed, no spinning, no NEED_DATA after end of
stream; and splitting the bytes differently never changes what is accepted.

An input that breaks an invariant (any exception) is saved, before the fuzzer stops, as
tests/fuzz_corpus/http1/crash-<sha1 of the input> (tests/fuzzing/corpus.py); committed,
it is replayed by tests/fuzzing/test_fuzz_corpus.py on every test run. libFuzzer's own
``crash-*`` file (in the working directory, or ``-artifact_prefix=``) holds the same bytes.

A libFuzzer dictionary of HTTP tokens is passed automatically unless ``-dict=`` is given,
and a few well-formed requests and responses are passed as seed inputs unless
``-seed_inputs=`` is given: without them libFuzzer rarely assembles a request llhttp
accepts (llhttp's C code is not instrumented, so there is no coverage feedback inside it).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

try:
    import atheris
except ImportError:  # the script explains itself below; pytest never imports it
    atheris = None

_DICTIONARY = [
    b"GET ", b"POST ", b"HEAD ", b"CONNECT ", b" HTTP/1.1\r\n", b" HTTP/1.0\r\n",
    b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 100 Continue\r\n", b"HTTP/1.1 204 x\r\n", b"\r\n",
    b"\r\n\r\n", b"Host: a\r\n", b"Content-Length: ", b"Transfer-Encoding: chunked\r\n",
    b"Connection: close\r\n", b"Connection: keep-alive\r\n", b"Expect: 100-continue\r\n",
    b"0\r\n\r\n", b"ffffffffffffffff", b";ext=v", b"X-Trailer: t\r\n", b"\x00", b"\x7f",
]


_SEEDS = [
    b"GET /a?b=c HTTP/1.1\r\nHost: a\r\nX-A: v\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;e=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
]
"""Seed payloads; each is prefixed with the provider bytes that select a reader."""


def _seed_argument() -> str:
    directory = Path(tempfile.mkdtemp(prefix="http1-seeds-"))
    names = []
    for index, payload in enumerate(_SEEDS):
        mode = b"\x00" if payload.startswith((b"GET", b"POST")) else b"\x02"
        for cuts in (b"\x00", b"\x02\x00\x10\x00\x31"):
            path = directory / f"seed-{index}-{len(cuts)}"
            path.write_bytes(mode + cuts + payload)
            names.append(str(path))
    return "-seed_inputs=" + ",".join(names)


def _dictionary_argument() -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".dict", delete=False) as handle:
        for token in _DICTIONARY:
            handle.write('"' + "".join(f"\\x{b:02x}" for b in token) + '"\n')
    return f"-dict={handle.name}"


def main() -> None:
    if atheris is None:
        sys.exit("atheris is not installed; try: pip install atheris==3.0.0")
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parent)]
    from fuzzing.corpus import fuzz  # type: ignore[import-not-found]

    with atheris.instrument_imports():
        import http1_invariants as inv  # type: ignore[import-not-found]
        from li_httpd.workers import http1  # noqa: F401  (instrumented for coverage)

    fuzz(atheris, "http1", inv.check_fuzz_input,
         lambda: [_dictionary_argument(), _seed_argument()])

if __name__ == "__main__":
    main()
