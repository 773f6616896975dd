"""HAProxy, Caddy and Portkey as benchmark peers: their configs rendered from a scenario,
their absence handled, and the ratio table's per-peer columns."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from li_httpd.ops.bench import benchconfig, harness, peers, render_peers, report
from li_httpd.ops.bench.procs import Server

PEERS_2 = ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]


def _config(name: str, *sets: tuple[str, Any]) -> dict[str, Any]:
    return benchconfig.scenario_config(name, benchconfig.load_profile("full"), list(sets))


def _tool(name: str) -> str:
    """The peer's executable, or skip (a failure where CI requires external programs)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("LI_HTTPD_REQUIRE_EXTERNAL") == "1":
            pytest.fail(f"{name} not installed (bash ops/setup-system)")
        pytest.skip(f"{name} not installed")
    return path


def _code(text: str) -> str:
    """The config without its comments, so an assertion cannot match an explanation."""
    return "\n".join(line.split("#", 1)[0].rstrip() for line in text.splitlines())


def test_haproxy_config_follows_the_scenario(tmp_path: Path) -> None:
    sse = _code(render_peers.gateway_haproxy(_config("sse_streams_light", ("global.workers", 3)),
                                             tmp_path, 8080, PEERS_2))
    assert re.search(r"^\s+nbthread 3$", sse, re.MULTILINE)
    assert "bind 127.0.0.1:8080" in sse
    servers = re.findall(r"^\s+server s\d+ (\S+) pool-max-conn (\d+)$", sse, re.MULTILINE)
    assert servers == [("127.0.0.1:9001", "64"), ("127.0.0.1:9002", "64")]
    assert "balance roundrobin" in sse and "http-reuse always" in sse
    assert "option http-no-delay" in sse
    assert "compression" not in sse and not re.search(r"^\s*log\b", sse, re.MULTILINE)
    plain = _code(render_peers.gateway_haproxy(_config("proxy_small"), tmp_path, 8080,
                                               PEERS_2[:1]))
    assert "http-no-delay" not in plain
    assert re.search(r"^\s+nbthread 2$", plain, re.MULTILINE)
    least = render_peers.gateway_haproxy(_config("proxy_small", ("server.balance", "least_conn")),
                                         tmp_path, 8080, PEERS_2)
    assert "balance leastconn" in least


def test_caddy_config_follows_the_scenario(tmp_path: Path) -> None:
    config = _config("sse_streams_light", ("global.workers", 3))
    sse = _code(render_peers.gateway_caddy(config, tmp_path, 8080, PEERS_2))
    assert "http://127.0.0.1:8080 {" in sse
    assert "reverse_proxy 127.0.0.1:9001 127.0.0.1:9002 {" in sse
    assert "flush_interval -1" in sse and "lb_policy round_robin" in sse
    assert "keepalive_idle_conns_per_host 64" in sse
    assert "admin off" in sse and "auto_https off" in sse
    assert not re.search(r"^\s*log\b", sse, re.MULTILINE)
    assert render_peers.caddy_env(config, tmp_path)["GOMAXPROCS"] == "3"
    assert render_peers.caddy_env(config, tmp_path)["HOME"] == str(tmp_path)
    plain = _code(render_peers.gateway_caddy(_config("keepalive_off"), tmp_path, 8080,
                                             PEERS_2[:1]))
    assert "flush_interval" not in plain
    assert render_peers.caddy_env(_config("keepalive_off"), tmp_path)["GOMAXPROCS"] == "2"


def test_static_scenarios_are_not_rendered(tmp_path: Path) -> None:
    config = _config("static_small")
    with pytest.raises(ValueError, match="reverse proxy only"):
        render_peers.gateway_haproxy(config, tmp_path, 8080, [])
    reason = peers.server("caddy", config, tmp_path, 8080, [])
    assert isinstance(reason, str) and reason.startswith("unavailable:")


def test_haproxy_accepts_every_rendered_config(tmp_path: Path) -> None:
    haproxy = _tool("haproxy")
    for name in ("proxy_small", "keepalive_off", "sse_streams_light"):
        conf = tmp_path / f"{name}.cfg"
        conf.write_text(render_peers.gateway_haproxy(_config(name), tmp_path, 8080, PEERS_2))
        checked = subprocess.run([haproxy, "-c", "-f", str(conf)], capture_output=True,
                                 text=True, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_caddy_accepts_every_rendered_config(tmp_path: Path) -> None:
    caddy = _tool("caddy")
    for name in ("proxy_small", "keepalive_off", "sse_streams_light"):
        config = _config(name)
        conf = tmp_path / f"{name}.Caddyfile"
        conf.write_text(render_peers.gateway_caddy(config, tmp_path, 8080, PEERS_2))
        checked = subprocess.run([caddy, "validate", "--adapter", "caddyfile", "--config",
                                  str(conf)], capture_output=True, text=True, check=False,
                                 env={**os.environ, **render_peers.caddy_env(config, tmp_path)})
        assert checked.returncode == 0, checked.stdout[-1000:] + checked.stderr[-1000:]


def test_portkey_gets_its_routing_headers_and_one_upstream(tmp_path: Path) -> None:
    headers = peers.client_headers("portkey", ["http://127.0.0.1:9001"])
    assert "x-portkey-provider: openai" in headers
    assert "x-portkey-custom-host: http://127.0.0.1:9001/v1" in headers
    assert peers.client_headers("nginx", ["http://127.0.0.1:9001"]) == []
    spec = {"path": "/v1/chat/completions", "headers": {"connection": "close"}}
    merged = harness._with_headers(spec, headers)
    assert merged["headers"]["connection"] == "close"
    assert merged["headers"]["x-portkey-provider"] == "openai"
    assert spec["headers"] == {"connection": "close"}  # the scenario's own is not changed
    reason = peers.server("portkey", _config("openai_chat"), tmp_path, 8080, PEERS_2)
    assert isinstance(reason, str) and "one upstream" in reason


def test_missing_peer_is_unavailable_and_fails_only_when_required(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers.shutil, "which", lambda _name: None)
    assert peers.missing("caddy") == "unavailable: caddy not installed (bash ops/setup-system)"
    assert peers.missing("li") is None

    class NoUpstreams:
        def __init__(self, *_args: object) -> None:
            self.origins: list[str] = []

        def start(self) -> None: ...

        def stop(self) -> None: ...

    monkeypatch.setattr(harness, "Upstreams", NoUpstreams)
    for required, failed in (("0", False), ("1", True)):
        monkeypatch.setenv("LI_HTTPD_REQUIRE_EXTERNAL", required)
        rows: list[report.Row] = []
        scenario = harness.Scenario(_config("proxy_small"), timing=False, rows=rows)
        scenario.run(["haproxy", "caddy"])
        assert scenario.failed is failed
        assert {(r.lang, r.metric) for r in rows} == {("haproxy", "status"), ("caddy", "status")}


def test_compare_table_has_a_column_and_a_ratio_per_peer() -> None:
    rows = [report.Row("proxy_small", lang, "default", 2, "rps", value, "req/s")
            for lang, value in (("nginx", "1000"), ("haproxy", "800"), ("li", "400"))]
    rows.append(report.Row("proxy_small", "caddy", "-", 2, "status", "", "unavailable: x"))
    lines = report.compare_table(rows).splitlines()
    header = lines[0].split()
    assert header[3:9] == ["nginx", "li", "haproxy", "caddy", "litellm", "li/nginx"]
    assert header[9:] == ["li/haproxy", "li/caddy", "li/litellm"]
    values = lines[1].split()
    assert values[3:6] == ["1000.00", "400.00", "800.00"]
    assert values[6] == "n/a"  # caddy could not run
    assert values[-2:] == ["0.40", "0.50"]  # li/nginx, li/haproxy
    assert "proxy_small: caddy unavailable: x" in lines
    # A run without the new peers keeps the table it always had.
    old = report.compare_table(rows[:1] + rows[2:3]).splitlines()[0].split()
    assert old[3:] == ["nginx", "li", "litellm", "li/nginx", "li/litellm"]


def test_li_variants_get_ratios_against_the_peers_one_measurement() -> None:
    rows = [report.Row("sse", "nginx", "default", 2, "cpu_us_per_event", "30", "us"),
            report.Row("sse", "li", "compiled", 2, "cpu_us_per_event", "75", "us"),
            report.Row("sse", "li", "interp", 2, "cpu_us_per_event", "90", "us")]
    lines = report.compare_table(rows).splitlines()
    compiled = next(line for line in lines if " compiled " in line).split()
    interp = next(line for line in lines if " interp " in line).split()
    assert compiled[3:5] == ["30.00", "75.00"] and compiled[-1] == "2.50"
    assert interp[3:5] == ["30.00", "90.00"] and interp[-1] == "3.00"


def test_a_peer_that_cannot_start_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(lang: str, *_args: object) -> Server:
        return Server(lang, ["sh", "-c", "echo starting; echo '[ALERT] cannot bind'; exit 1"],
                      1, tmp_path / "broken.log")

    monkeypatch.setattr(peers, "server", broken)
    reason = harness._gateway("haproxy", _config("proxy_small"), tmp_path, ["http://x:1"])
    assert isinstance(reason, str)
    assert reason.startswith("unavailable: failed to start: haproxy: exited with status 1")
    assert reason.endswith("([ALERT] cannot bind)")
