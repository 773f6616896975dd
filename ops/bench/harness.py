"""The benchmark harness: li-httpd against nginx, HAProxy, Caddy, LiteLLM and Portkey,
one scenario at a time.

    bash ops/bench/run [SCENARIO ...] [--profile ci|quick|full] [--set KEY=VALUE ...]
                       [--langs nginx,haproxy,caddy,li,litellm,portkey] [--results DIR]
                       [--compare CSV]

Everything a scenario does comes from TOML (see benchconfig.py); adding one needs no
Python. For each scenario the harness writes the fixtures, starts the upstream(s), then
for each server in turn renders its config from the same scenario, starts it with the
same worker count, runs ``[verify]`` (correctness before timing: a server that answers
wrongly is not measured), runs the scenario's loads (a discarded warm-up, then
``global.runs`` measured runs, median reported) while sampling the server's processes'
CPU and memory, and stops it. Results: ``results/<timestamp>.csv``, one PNG per scenario,
and a table of li/<peer> ratios on stdout. The peers other than nginx are optional
(peers.py): one that is not installed is reported unavailable and skipped.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import orjson

from . import loads, peers, render
from . import tls as bench_tls
from .benchconfig import HERE, BenchConfigError, get, load_profile, parse_value, scenario_config
from .procs import Sampler, Server, free_port
from .report import Row, compare_table, median_metrics, plot, read_csv, write_csv

LITELLM = HERE / "litellm"
LITELLM_VENV = HERE / ".litellm-venv"
OPENAI_PATH = "/v1/chat/completions"
# AI gateways: they reshape answers (headers, usage events), so a failed check is
# reported but does not fail the run, and only the OpenAI requests of [verify] apply.
AI_GATEWAYS = frozenset({"litellm", "portkey"})
REDIS_SERVER = "redis-server"


class Upstreams:
    """The scenario's upstream servers (an nginx, or li-httpd mock-upstream processes)."""

    def __init__(self, config: Mapping[str, Any], work: Path) -> None:
        self.kind = get(config, "upstream.kind", "nginx")
        self.count = int(get(config, "upstream.count", 1))
        self.work = work
        self.servers: list[Server] = []

    def start(self) -> None:
        if self.kind == "nginx":
            port = free_port()
            conf = self.work / "upstream.conf"
            conf.write_text(render.upstream_nginx(self.work, port, self.work / "static"))
            self.servers.append(Server("upstream-nginx", ["nginx", "-p", str(self.work), "-c",
                                                          str(conf)], port,
                                       self.work / "upstream.log"))
        else:
            for index in range(self.count):
                port = free_port()
                self.servers.append(Server(
                    f"mock-{index}", [sys.executable, "-m", "li_httpd.ops.mock_upstream",
                                      "--port", str(port)], port,
                    self.work / f"mock-{index}.log"))
        for server in self.servers:
            server.start()

    @property
    def origins(self) -> list[str]:
        return [server.url for server in self.servers]

    def request_counts(self) -> list[int]:
        counts = []
        for server in self.servers:
            with urllib.request.urlopen(f"{server.url}/stats", timeout=10) as response:
                counts.append(int(orjson.loads(response.read())["requests"]))
        return counts

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


class Redis:
    """A private redis-server for a scenario with ``[redis] start = true``: variants'
    ``extra`` TOML names it as ``@REDIS_URL@``."""

    def __init__(self, config: Mapping[str, Any], work: Path) -> None:
        self.server: Server | None = None
        if get(config, "redis.start", False):
            port = free_port()
            self.server = Server("redis", [REDIS_SERVER, "--port", str(port), "--bind",
                                           "127.0.0.1", "--save", "", "--appendonly", "no",
                                           "--dir", str(work)], port, work / "redis.log")

    def start(self) -> None:
        if self.server is not None:
            self.server.start()

    def fill(self, text: str) -> str:
        if self.server is None:
            return text
        return text.replace("@REDIS_URL@", f"redis://127.0.0.1:{self.server.port}")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def _variants(config: Mapping[str, Any], lang: str) -> list[tuple[str, Mapping[str, Any]]]:
    """(variant name, spec) to run for ``lang``: li may be measured in several
    configurations (``[li.variants.NAME]`` with ``extra`` TOML and/or ``request_logs``)
    to price a feature, or from several builds (``python``: the interpreter of another
    install, e.g. a checkout of an earlier commit) to compare code changes."""
    variants = get(config, "li.variants", {}) if lang == "li" else {}
    return list(variants.items()) if variants else [("default", {})]


def _gateway(lang: str, config: Mapping[str, Any], work: Path, origins: Sequence[str],
             variant: Mapping[str, Any] | None = None, redis: Redis | None = None,
             tls: bench_tls.BenchTls | None = None) -> Server | str:
    """A started gateway, or the reason it cannot run. ``tls``: every server listens
    with that certificate (the AI gateways are run as plain HTTP servers only)."""
    if tls and lang in AI_GATEWAYS:
        return "unavailable: run over plain HTTP only"
    port = free_port()
    scheme: Literal["http", "https"] = "https" if tls else "http"
    static_root = work / "static"
    if lang == "nginx":
        conf = work / "gateway-nginx.conf"
        conf.write_text(render.gateway_nginx(config, work, port, origins, static_root, tls))
        server = Server("nginx", ["nginx", "-p", str(work), "-c", str(conf)], port,
                        work / "nginx.log", scheme=scheme)
    elif lang == "li":
        conf = work / "gateway-li.toml"
        spec = variant or {}
        conf.write_text(render.gateway_li(config, work, port, origins, static_root,
                                          spec.get("request_logs", ()), tls)
                        + (redis.fill if redis else str)(str(spec.get("extra", ""))))
        python = str(spec.get("python", sys.executable))
        server = Server("li", [python, "-m", "li_httpd.supervisor.cli", "start", "-c",
                               str(conf)], port, work / "li.log", scheme=scheme)
    elif lang == "litellm":
        if not (LITELLM_VENV / "bin" / "litellm").exists():
            return "unavailable: not installed (bash ops/bench/litellm/setup)"
        if len(origins) != 1:
            return "unavailable: one upstream only"
        conf = work / "litellm.yaml"
        rendered = subprocess.run(
            [sys.executable, str(LITELLM / "config.py"), "--upstream", origins[0], "--model",
             "mock-chat", "--out", str(conf)], capture_output=True, text=True, check=False)
        if rendered.returncode != 0:
            return f"unavailable: config rendering failed: {rendered.stderr.strip()[:200]}"
        workers = str(get(config, "global.workers", 2))
        server = Server("litellm", ["bash", str(LITELLM / "run"), "--config", str(conf),
                                    "--port", str(port), "--num_workers", workers],
                        port, work / "litellm.log")
    elif lang in peers.LANGS:
        started = peers.server(lang, config, work, port, origins, tls)
        if isinstance(started, str):
            return started
        server = started
    else:
        return f"unknown lang {lang}"
    try:
        server.start(timeout=120 if lang in AI_GATEWAYS else 30)
    except RuntimeError as exc:
        # The first line says what happened, the log's last line usually why (e.g.
        # HAProxy's "[ALERT] ... Cannot raise FD limit").
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = f" ({lines[-1][:200]})" if len(lines) > 1 else ""
        return f"unavailable: failed to start: {lines[0][:200]}{why}"
    return server


def _label(lang: str, variant: str) -> str:
    return lang if variant == "default" else f"{lang}/{variant}"


class Scenario:
    def __init__(self, config: dict[str, Any], timing: bool, rows: list[Row]) -> None:
        self.config = config
        self.name = str(config["name"])
        self.timing = timing
        self.rows = rows
        self.workers = int(get(config, "global.workers", 2))
        self.failed = False
        self.wrk_runs: dict[tuple[str, str], list[dict[str, tuple[float, str]]]] = {}
        self.shares: dict[tuple[str, str], list[int]] = {}
        self.tls: bench_tls.BenchTls | None = None

    def add(self, lang: str, variant: str, metrics: Mapping[str, tuple[float, str]]) -> None:
        for metric, (value, unit) in sorted(metrics.items()):
            self.rows.append(Row(self.name, lang, variant, self.workers, metric,
                                 f"{value:.4g}" if isinstance(value, float) else str(value),
                                 unit))

    def note(self, lang: str, reason: str) -> None:
        self.rows.append(Row(self.name, lang, "-", self.workers, "status", "", reason))
        print(f"  {lang}: {reason}", flush=True)

    def run(self, langs: Sequence[str]) -> None:
        print(f"== {self.name}: {get(self.config, 'description', '')}", flush=True)
        rounds = int(get(self.config, "global.rounds", 1))
        if rounds > 1 and set(get(self.config, "load.tools", ["wrk"])) != {"wrk"}:
            raise BenchConfigError(f"{self.name}: global.rounds > 1 needs load.tools = [\"wrk\"]")
        work = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        # nginx started as root serves files as "nobody": let it read the fixtures.
        work.chmod(0o755)
        fixtures = render.write_fixtures(self.config, work / "static")
        self.tls = bench_tls.make(work) if get(self.config, "server.tls", False) else None
        upstreams = Upstreams(self.config, work)
        redis = Redis(self.config, work)
        try:
            upstreams.start()
            redis.start()
            # Rounds alternate the servers and variants so that drift on a busy machine
            # (CPU frequency, noisy neighbours) lands on all of them alike.
            for round_index in range(rounds):
                for lang in langs:
                    absent = peers.missing(lang)
                    if absent:
                        if round_index == 0:
                            self.note(lang, absent)
                        self.failed = self.failed or (lang in peers.SYSTEM and peers.required())
                        continue
                    for variant, spec in _variants(self.config, lang):
                        server = _gateway(lang, self.config, work, upstreams.origins, spec,
                                          redis, self.tls)
                        if isinstance(server, str):
                            if round_index == 0:
                                self.note(lang, server)
                            if lang not in AI_GATEWAYS:
                                self.failed = True
                            continue
                        try:
                            self._serve(lang, variant, server, upstreams, fixtures,
                                        first_round=round_index == 0)
                        finally:
                            server.stop()
            self._report_wrk()
        finally:
            redis.stop()
            upstreams.stop()
            shutil.rmtree(work, ignore_errors=True)

    def _serve(self, lang: str, variant: str, server: Server, upstreams: Upstreams,
               fixtures: Mapping[str, bytes], first_round: bool = True) -> None:
        requests = get(self.config, "verify.requests", [])
        if lang in AI_GATEWAYS:
            requests = [r for r in requests if r["path"].startswith(OPENAI_PATH)]
        extra = peers.client_headers(lang, upstreams.origins)
        if extra:
            requests = [_with_headers(r, extra) for r in requests]
        ca = self.tls.ca if self.tls else None
        failures = loads.verify(server.port, requests, fixtures, ca)
        retried = ""
        if failures and lang != "li":
            # A peer is an oracle, not the system under test: one transient failure of
            # it (seen once from Caddy on a loaded box: an SSE body without its end) is
            # retried once and reported; li-httpd gets no second chance.
            retried = "; ".join(failures)[:200]
            time.sleep(1.0)
            failures = loads.verify(server.port, requests, fixtures, ca)
        if first_round or failures:
            self.add(lang, "verify", {"verify_passed": (0.0 if failures else 1.0, "bool")})
        if failures:
            self.failed = lang not in AI_GATEWAYS or self.failed
            self.note(lang, "verify failed: " + "; ".join(failures)[:300])
            return
        print(f"  {_label(lang, variant)}: verify ok"
              + (f" (after one retry; first attempt: {retried})" if retried else ""), flush=True)
        if not self.timing:
            return
        for tool in get(self.config, "load.tools", ["wrk"]):
            if tool == "wrk":
                self._wrk(lang, variant, server, upstreams)
            elif tool == "latency":
                self._latency(lang, server, upstreams)
            elif tool == "sse":
                self._sse(lang, variant, server, upstreams)
            else:
                raise BenchConfigError(f"{self.name}: unknown load tool {tool!r}")

    def _wrk(self, lang: str, variant: str, server: Server, upstreams: Upstreams) -> None:
        config = self.config
        url = server.url + get(config, "load.path", "/")
        options = {"threads": int(get(config, "load.wrk.threads", 2)),
                   "connections": int(get(config, "load.wrk.connections", 64)),
                   "method": get(config, "load.method", "GET"),
                   "body": get(config, "load.body", ""),
                   "headers": [*get(config, "load.headers", []),
                               *peers.client_headers(lang, upstreams.origins)]}
        loads.run_wrk(url, seconds=float(get(config, "global.warmup_sec", 3)), **options)
        distribution = bool(get(config, "check.distribution", False))
        before = upstreams.request_counts() if distribution else []
        runs = self.wrk_runs.setdefault((lang, variant), [])
        for _ in range(int(get(config, "global.runs", 3))):
            with Sampler(server.pid, float(get(config, "global.sample_interval_sec", 0.1))) \
                    as sampler:
                metrics = loads.run_wrk(url, seconds=float(get(config, "load.wrk.duration_sec",
                                                               10)), **options)
            requests = max(metrics["requests"][0], 1.0)
            metrics["cpu_s"] = (sampler.cpu_seconds, "s")
            metrics["cpu_us_per_req"] = (sampler.cpu_seconds / requests * 1e6, "us")
            metrics["peak_rss_mib"] = (sampler.peak_rss_kib / 1024, "MiB")
            metrics["peak_pss_mib"] = (sampler.peak_pss_kib / 1024, "MiB")
            runs.append(metrics)
            print(f"  {_label(lang, variant)}: run {len(runs)}: {metrics['rps'][0]:.0f} req/s",
                  flush=True)
        if distribution:
            served = [after - b for after, b in zip(upstreams.request_counts(), before,
                                                    strict=True)]
            total = self.shares.setdefault((lang, variant), [0] * len(served))
            total[:] = [t + s for t, s in zip(total, served, strict=True)]

    def _report_wrk(self) -> None:
        """Median over every run of every round, and the distribution check on the totals."""
        tolerance = float(get(self.config, "check.tolerance", 0.05))
        for (lang, variant), runs in self.wrk_runs.items():
            result = median_metrics(runs)
            shares = self.shares.get((lang, variant))
            if shares is not None:
                mean = sum(shares) / len(shares)
                spread = (max(shares) - min(shares)) / mean if mean else 1.0
                result["share_spread"] = (spread, "ratio")
                if any(abs(share - mean) > tolerance * mean for share in shares):
                    self.note(lang, f"distribution check failed: {shares}")
                    self.failed = True
            self.add(lang, variant, result)
            p99 = result.get("p99_latency_ms", (0.0, ""))[0]
            print(f"  {_label(lang, variant)}: median of {len(runs)}: {result['rps'][0]:.0f} "
                  f"req/s, p99 {p99:.2f} ms, {result['cpu_us_per_req'][0]:.0f} us CPU/req, "
                  f"{result['peak_pss_mib'][0]:.0f} MiB", flush=True)

    def _latency(self, lang: str, server: Server, upstreams: Upstreams) -> None:
        config = self.config
        path = get(config, "load.path", OPENAI_PATH)
        levels = ",".join(str(c) for c in get(config, "load.latency.concurrency", [1, 4, 16, 64]))
        report = loads.run_driver("latency", [
            "--url", server.url + path, "--body", get(config, "load.body", "{}"),
            "--concurrency", levels,
            "--requests-per-level", str(get(config, "load.latency.requests_per_level", 1000)),
            "--warmup", str(get(config, "load.latency.warmup", 100)),
            "--baseline-url", upstreams.origins[0] + path,
            *_header_args(peers.client_headers(lang, upstreams.origins))], timeout=1800)
        for variant, metrics in loads.latency_metrics(report).items():
            self.add(lang, variant, metrics)
        summary = {v: m.get("added_p50_ms", (float("nan"),))[0]
                   for v, m in loads.latency_metrics(report).items()}
        print(f"  {lang}: added p50 ms by concurrency {summary}", flush=True)

    def _sse(self, lang: str, variant: str, server: Server, upstreams: Upstreams) -> None:
        config = self.config
        seconds = float(get(config, "load.sse.duration_sec", 30))
        with Sampler(server.pid, float(get(config, "global.sample_interval_sec", 0.1))) \
                as sampler:
            report = loads.run_driver("sse", [
                "--url", server.url + get(config, "load.path", OPENAI_PATH),
                "--streams", str(get(config, "load.sse.streams", 100)),
                "--open-rate", str(get(config, "load.sse.open_rate", 100)),
                "--events", str(get(config, "load.sse.events", 100)),
                "--event-interval-ms", str(get(config, "load.sse.event_interval_ms", 100)),
                "--duration", str(seconds),
                *_header_args(peers.client_headers(lang, upstreams.origins))],
                timeout=seconds + 300)
        metrics = loads.sse_metrics(report)
        metrics["cpu_s"] = (sampler.cpu_seconds, "s")
        # The gateway's CPU (all its processes) per event the driver received: the
        # streaming cost beside cpu_us_per_req of the request scenarios.
        events = max(metrics.get("events", (0.0, ""))[0], 1.0)
        metrics["cpu_us_per_event"] = (sampler.cpu_seconds / events * 1e6, "us")
        metrics["peak_rss_mib"] = (sampler.peak_rss_kib / 1024, "MiB")
        metrics["peak_pss_mib"] = (sampler.peak_pss_kib / 1024, "MiB")
        self.add(lang, variant, metrics)
        print(f"  {lang}: added delay p50 {metrics.get('added_delay_p50_ms', (0,))[0]:.2f} ms "
              f"p99 {metrics.get('added_delay_p99_ms', (0,))[0]:.2f} ms, "
              f"{metrics.get('completed', (0,))[0]:.0f} completed, "
              f"{metrics['stream_errors'][0]:.0f} errors, "
              f"{metrics['cpu_us_per_event'][0]:.1f} us CPU/event, "
              f"peak {metrics['peak_pss_mib'][0]:.0f} MiB", flush=True)


def _with_headers(spec: Mapping[str, Any], headers: Sequence[str]) -> dict[str, Any]:
    """A [verify] request with ``NAME: VALUE`` headers added (the peer's own)."""
    merged = dict(spec.get("headers", {}))
    for header in headers:
        name, _, value = header.partition(":")
        merged[name.strip()] = value.strip()
    return {**spec, "headers": merged}


def _header_args(headers: Sequence[str]) -> list[str]:
    return [arg for header in headers for arg in ("--header", header)]


def _parse_sets(values: Sequence[str]) -> list[tuple[str, Any]]:
    sets = []
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise BenchConfigError(f"--set expects KEY=VALUE, got {item!r}")
        sets.append((key.strip(), parse_value(value.strip())))
    return sets


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ops/bench/run", description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", help="scenarios (default: the profile's)")
    parser.add_argument("--profile", default="quick", help="ci, quick, full or costs (suite.toml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a merged TOML key, e.g. load.wrk.connections=128")
    parser.add_argument("--langs", help="comma-separated servers (default: the scenario's)")
    parser.add_argument("--results", default=str(HERE / "results"), help="output directory")
    parser.add_argument("--compare", metavar="CSV", help="print the ratio table of an "
                                                         "earlier results CSV and exit")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    if args.compare:
        print(compare_table(read_csv(Path(args.compare))))
        return 0
    try:
        profile = load_profile(args.profile)
        sets = _parse_sets(args.set)
        configs = [scenario_config(name, profile, sets)
                   for name in (args.scenarios or profile.scenarios)]
    except BenchConfigError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    rows: list[Row] = []
    failed = False
    for config in configs:
        langs = args.langs.split(",") if args.langs else get(config, "langs", ["nginx", "li"])
        scenario = Scenario(config, profile.timing, rows)
        scenario.run(langs)
        failed = failed or scenario.failed
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = Path(args.results)
    csv_path = results / f"{stamp}.csv"
    write_csv(csv_path, rows)
    print(f"\nresults: {csv_path}")
    if profile.timing:
        if not args.no_plots:
            plots = plot(rows, results / stamp)
            print(f"plots:   {results / stamp} ({len(plots)} files)")
        print()
        print(compare_table(rows))
    if failed:
        print("\nbench: some server failed verification or a check; see above", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
