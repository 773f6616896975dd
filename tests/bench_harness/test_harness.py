"""The benchmark harness's pure parts: TOML layering, wrk parsing, rendering, reporting."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from li_httpd.config import load_text
from li_httpd.ops.bench import benchconfig, harness, loads, render, report
from li_httpd.ops.bench import tls as bench_tls

WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:9000/small
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms  700.00us   7.61ms   74.55%
  Latency Distribution
     50%  465.00us
     75%    1.10ms
     90%    2.20ms
     99%    1.50s
  272490 requests in 5.00s, 41.58MB read
  Non-2xx or 3xx responses: 12
  Socket errors: connect 0, read 3, write 0, timeout 1
Requests/sec:  54498.08
Transfer/sec:      8.32MB
"""


def test_every_scenario_parses_and_names_known_tools() -> None:
    for path in sorted(benchconfig.SCENARIOS.glob("*/bench.toml")):
        scenario = tomllib.loads(path.read_text())
        assert scenario["name"] == path.parent.name
        assert set(benchconfig.get(scenario, "load.tools", ["wrk"])) <= {"wrk", "latency", "sse"}
        assert benchconfig.get(scenario, "verify.requests"), f"{path}: nothing verified"


def test_profiles_name_existing_scenarios() -> None:
    names = {p.parent.name for p in benchconfig.SCENARIOS.glob("*/bench.toml")}
    for profile in ("ci", "quick", "full", "costs"):
        loaded = benchconfig.load_profile(profile)
        assert set(loaded.scenarios) <= names
    assert not benchconfig.load_profile("ci").timing
    assert set(benchconfig.load_profile("ci").scenarios) == names  # CI verifies every one
    comparisons = {name for name in names if not name.startswith("cost_")}
    assert set(benchconfig.load_profile("full").scenarios) == comparisons


def test_merge_order_defaults_scenario_profile_then_set() -> None:
    profile = benchconfig.load_profile("quick")
    config = benchconfig.scenario_config("proxy_large", profile,
                                         [("load.wrk.threads", 4), ("global.workers", 1)])
    assert config["load"]["wrk"]["connections"] == 16  # scenario over defaults
    assert config["load"]["wrk"]["duration_sec"] == 5  # profile over defaults
    assert config["load"]["wrk"]["threads"] == 4  # --set over everything
    assert config["global"]["workers"] == 1
    assert benchconfig.parse_value("[1, 2]") == [1, 2]
    assert benchconfig.parse_value("abc") == "abc"
    with pytest.raises(benchconfig.BenchConfigError):
        benchconfig.scenario_config("no_such_scenario", profile, [])


def test_wrk_output_is_parsed() -> None:
    metrics = loads.parse_wrk(WRK_OUTPUT)
    assert metrics["rps"] == (54498.08, "req/s")
    assert metrics["p50_latency_ms"][0] == pytest.approx(0.465)
    assert metrics["p99_latency_ms"][0] == pytest.approx(1500.0)
    assert metrics["non_2xx"][0] == 12 and metrics["socket_errors"][0] == 4
    assert metrics["requests"][0] == 272490
    assert metrics["transfer_mib_s"][0] == pytest.approx(8.32)


def test_li_config_is_valid_for_every_scenario(tmp_path: Path) -> None:
    profile = benchconfig.load_profile("full")
    (tmp_path / "static").mkdir()
    for name in profile.scenarios:
        config = benchconfig.scenario_config(name, profile, [])
        peers = [f"http://127.0.0.1:{9000 + i}" for i in range(
            int(benchconfig.get(config, "upstream.count", 1)))]
        tls = bench_tls.make(tmp_path) if benchconfig.get(config, "server.tls") else None
        text = render.gateway_li(config, tmp_path, 8080, peers, tmp_path / "static", (), tls)
        loaded = load_text(text, f"{name}.toml")  # raises on any config error
        assert loaded.config.server.workers == config["global"]["workers"]
        nginx = render.gateway_nginx(config, tmp_path, 8081, peers, tmp_path / "static")
        assert f"worker_processes {config['global']['workers']};" in nginx


def test_fixtures_are_deterministic() -> None:
    assert render.fixture_bytes(5000) == render.fixture_bytes(5000)
    assert len(render.fixture_bytes(1048576)) == 1048576


def test_compare_table_ratios_and_unavailable_rows() -> None:
    rows = [report.Row("openai_chat", "nginx", "default", 2, "rps", "1000", "req/s"),
            report.Row("openai_chat", "li", "default", 2, "rps", "500", "req/s"),
            report.Row("openai_chat", "litellm", "-", 2, "status", "", "unavailable: x")]
    table = report.compare_table(rows)
    line = next(row for row in table.splitlines() if row.startswith("openai_chat"))
    assert "0.50" in line and "n/a" in line
    assert "litellm unavailable: x" in table
    assert report.median_metrics([{"rps": (1.0, "r")}, {"rps": (3.0, "r")},
                                  {"rps": (2.0, "r")}]) == {"rps": (2.0, "r")}


def _metrics(rps: float) -> dict[str, tuple[float, str]]:
    return {"rps": (rps, "req/s"), "cpu_us_per_req": (100.0, "us"), "peak_pss_mib": (60.0, "MiB")}


def test_rounds_report_the_median_of_every_run_and_check_total_shares() -> None:
    config = {"name": "lb", "global": {"workers": 2}, "check": {"tolerance": 0.05}}
    rows: list[report.Row] = []
    scenario = harness.Scenario(config, timing=True, rows=rows)
    # Three rounds of one run each: the reported value is the median across rounds.
    scenario.wrk_runs[("li", "default")] = [_metrics(100), _metrics(300), _metrics(200)]
    scenario.shares[("li", "default")] = [100, 100, 130]  # 30% off the mean: must fail
    scenario.wrk_runs[("nginx", "default")] = [_metrics(500)]
    scenario._report_wrk()
    values = {(r.lang, r.metric): r.value for r in rows}
    assert values[("li", "rps")] == "200"
    assert values[("nginx", "rps")] == "500"
    assert float(values[("li", "share_spread")]) == pytest.approx(30 / 110, rel=1e-3)
    assert scenario.failed
    assert any(r.metric == "status" and "distribution" in r.unit for r in rows)


def test_rounds_refuse_loads_that_cannot_alternate() -> None:
    config = {"name": "sse", "global": {"rounds": 2}, "load": {"tools": ["sse"]}}
    with pytest.raises(benchconfig.BenchConfigError, match="rounds"):
        harness.Scenario(config, timing=True, rows=[]).run(["li"])
