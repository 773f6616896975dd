"""Router micro-benchmark: lookups per second over a 200-route table.

    python -m li_httpd.ops.bench.router_micro [--routes 200] [--lookups 10000] [--repeat 5]

Builds a realistic table (exact, prefix, prefix_strip, glob and header-literal routes
over many first segments), draws a fixed, seeded mix of requests (hits spread over the
table, 404s and 405s), then times ``Router.lookup`` for the compiled router and the naive
first-match scan and prints the best of ``--repeat`` runs for each. This guards against
regressions; it is not a test, and no test asserts on its timings.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from li_httpd.config import Router, load_text
from li_httpd.config.model import Route
from li_httpd.config.router import naive_lookup, scan


def build_config(route_count: int) -> str:
    lines = ["[server]", 'listen = "127.0.0.1:8080"', "", "[upstreams.pool]",
             'peers = ["http://127.0.0.1:9000"]', "", "[routes]"]
    kinds = ["exact", "prefix", "strip", "glob", "header"]
    for index in range(route_count):
        segment = f"svc{index // 5}"
        kind = kinds[index % len(kinds)]
        method = ("GET", "POST", "PUT", "DELETE")[index % 4]
        if kind == "exact":
            key = f"{method} /{segment}/items/{index}"
        elif kind == "prefix":
            key = f"{method} /{segment}/api{index}/*"
        elif kind == "strip":
            key = f"{method} /{segment}/files{index}/**"
        elif kind == "glob":
            key = f"{method} /{segment}/*/detail{index}"
        else:
            key = f"{method} /{segment}/model{index}/* x-model=m{index}"
        lines.append(f'"{key}" = "proxy:pool"')
    return "\n".join(lines) + "\n"


def request_mix(routes: tuple[Route, ...], count: int,
                seed: int = 7) -> list[tuple[str, str, dict[str, str]]]:
    rng = random.Random(seed)
    requests: list[tuple[str, str, dict[str, str]]] = []
    for _ in range(count):
        route = rng.choice(routes)
        method = route.match.methods[0]
        value = route.match.path.value.replace("**", "x").replace("*", "id42")
        path = value + "resource" if value.endswith("/") else value
        headers = {lit.name: lit.equals for lit in route.match.headers}
        roll = rng.random()
        if roll < 0.1:
            path = "/nowhere/" + path
        elif roll < 0.2:
            method = "PATCH"
        requests.append((method, path, headers))
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description="Router micro-benchmark")
    parser.add_argument("--routes", type=int, default=200)
    parser.add_argument("--lookups", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    config = load_text(build_config(args.routes), "<bench>").config
    router = Router(config.route)
    requests = request_mix(config.route, args.lookups)
    for method, path, headers in requests[:500]:
        compiled = router.lookup(method, "h", path, headers)
        reference = naive_lookup(config.route, method, "h", path, headers)
        if compiled != reference:
            raise SystemExit(f"router disagrees with the naive scan on {method} {path}")

    def best(run: Callable[[], object]) -> float:
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return min(times)

    compiled_s = best(lambda: [router.lookup(m, "h", p, h) for m, p, h in requests])
    naive_s = best(lambda: [scan(router.routes, m, "h", p, h) for m, p, h in requests])
    print(f"routes={args.routes} lookups={args.lookups} repeat={args.repeat}")
    print(f"compiled router: {args.lookups / compiled_s:,.0f} lookups/s "
          f"({compiled_s / args.lookups * 1e6:.2f} us/lookup)")
    print(f"naive scan:      {args.lookups / naive_s:,.0f} lookups/s "
          f"({naive_s / args.lookups * 1e6:.2f} us/lookup)")


if __name__ == "__main__":
    main()
