"""JSON deny-path redaction micro-benchmark: MB/s of the streaming walker and of the
whole-body path on a 1 MiB document (CPU time of this process, steadier than wall time
on a shared machine).

    python -m li_httpd.ops.bench.json_redact_micro [--size 1048576] [--chunk 65536] [--repeat 5]

The document is a seeded, API-like JSON body (a list of records with ids, names, e-mail
addresses, numbers, nested settings, tags and a few hundred bytes of text each), spelt
with indentation. Four deny-path sets are timed: none; paths that match nothing but keep
the walker tracking keys everywhere (``$..nope``); paths that hit in every record
(``$.data[*].password``, ``$..token``); and one that replaces the whole ``data`` array
(``$.data``, the walker then only skips). Prints the best of ``--repeat`` runs for each.
This guards against regressions; it is not a test, and no test asserts on its timings.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

import orjson
from li_httpd.workers.json_redact import (
    DenyPaths,
    JsonStreamRedactor,
    compile_paths,
    redact_json_bytes,
)

CASES: dict[str, list[str]] = {
    "no paths": [],
    "no hits ($..nope)": ["$..nope", "$.data[*].nope"],
    "hits ($.data[*].password, $..token)": ["$.data[*].password", "$..token"],
    "hits ($.data, skip all)": ["$.data"],
}


def document(size: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "token", "model", "stream", "user",
             "gateway", "censor", "\u00e9t\u00e9", "caf\u00e9", "\"quoted\"", "line\nbreak"]
    records: list[dict[str, object]] = []
    body = b""
    while len(body) < size:
        index = len(records)
        records.append({
            "id": index, "name": f"user-{index}", "email": f"u{index}@example.com",
            "password": f"pw-{rng.getrandbits(64):x}", "score": rng.random() * 1000,
            "active": rng.random() < 0.5, "manager": None,
            "settings": {"theme": rng.choice(["dark", "light"]), "token": f"t{index}",
                         "limits": [rng.randrange(100) for _ in range(5)]},
            "tags": rng.sample(words, 4),
            "bio": " ".join(rng.choice(words) for _ in range(40)),
        })
        if index % 64 == 0:
            body = orjson.dumps({"object": "list", "data": records},
                                option=orjson.OPT_INDENT_2)
    while len(body) > size and len(records) > 1:  # the last record went over: drop it
        records.pop()
        body = orjson.dumps({"object": "list", "data": records}, option=orjson.OPT_INDENT_2)
    return body


def best(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024 * 1024)
    parser.add_argument("--chunk", type=int, default=64 * 1024)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    body = document(args.size)
    megabytes = len(body) / 1e6
    print(f"document: {len(body)} bytes, pieces of {args.chunk} bytes")
    for label, paths in CASES.items():
        deny = compile_paths(paths)

        def streamed(deny: DenyPaths = deny) -> None:
            redactor = JsonStreamRedactor(deny)
            for i in range(0, len(body), args.chunk):
                redactor.feed(body[i:i + args.chunk])
            redactor.finish()

        def whole(deny: DenyPaths = deny) -> None:
            redact_json_bytes(body, deny)

        hits = JsonStreamRedactor(deny)
        hits.feed(body)
        hits.finish()
        stream_s = best(streamed, args.repeat)
        whole_s = best(whole, args.repeat)
        print(f"{label:40} hits {len(hits.hits):6}  stream {megabytes / stream_s:6.1f} MB/s"
              f"  whole (orjson) {megabytes / whole_s:6.1f} MB/s")


if __name__ == "__main__":
    main()
