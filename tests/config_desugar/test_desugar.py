"""Desugaring goldens: NAME.toml (easy form) -> NAME.expected.toml (explain-config output).

The goldens were generated once with ``li-httpd explain-config`` and reviewed against
SPEC §3 (route names, priorities, path types, header literals, peers, defaults); the
semantic tests below pin the parts that matter so a regenerated golden cannot quietly
change them. ``@NAME@`` placeholders are filled from ``config_env`` on both sides.
"""

from __future__ import annotations

import os
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from li_httpd.config import load_text

HERE = Path(__file__).parent
INPUTS = sorted(p for p in HERE.glob("*.toml") if not p.name.endswith(".expected.toml"))


def _golden(path: Path) -> Path:
    return path.with_name(path.stem + ".expected.toml")


def _filled(config_env: Any, path: Path) -> str:
    return str(config_env.fill(path.read_text(encoding="utf-8")))


def _routes(config_env: Any, name: str) -> list[dict[str, Any]]:
    data = tomllib.loads(_filled(config_env, _golden(HERE / f"{name}.toml")))
    return list(data["route"])


def test_every_input_has_a_golden() -> None:
    assert len(INPUTS) >= 4
    for path in INPUTS:
        assert _golden(path).is_file(), f"missing {_golden(path).name}"
    for golden in HERE.glob("*.expected.toml"):
        assert golden.with_name(golden.name.replace(".expected", "")).is_file()


@pytest.mark.parametrize("path", INPUTS, ids=lambda p: p.stem)
def test_explain_equals_golden(path: Path, config_env: Any) -> None:
    loaded = load_text(_filled(config_env, path), path.name)
    assert loaded.canonical == _filled(config_env, _golden(path))


@pytest.mark.parametrize("path", INPUTS, ids=lambda p: p.stem)
def test_golden_explains_to_itself(path: Path, config_env: Any) -> None:
    golden = _filled(config_env, _golden(path))
    again = load_text(golden, _golden(path).name)
    assert again.canonical == golden
    assert again.config == load_text(_filled(config_env, path), path.name).config


@pytest.fixture(scope="module")
def cli_outputs(cli: Any, config_env: Any, tmp_path_factory: pytest.TempPathFactory
                ) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("config_desugar")
    files = {}
    for path in INPUTS:
        files[path.name] = directory / path.name
        files[path.name].write_text(_filled(config_env, path), encoding="utf-8")
        golden = directory / _golden(path).name
        golden.write_text(_filled(config_env, _golden(path)), encoding="utf-8")
        files[golden.name] = golden
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        jobs = {name: pool.submit(cli, "explain-config", "-c", str(file))
                for name, file in files.items()}
        return {name: job.result() for name, job in jobs.items()}


@pytest.mark.parametrize("path", INPUTS, ids=lambda p: p.stem)
def test_cli_explain_equals_golden(path: Path, config_env: Any,
                                   cli_outputs: dict[str, Any]) -> None:
    golden = _filled(config_env, _golden(path))
    for name in (path.name, _golden(path).name):
        result = cli_outputs[name]
        assert result.returncode == 0, result.stderr
        assert result.stdout == golden, name


# -- what the goldens must say (SPEC §3) ---------------------------------------------------


def test_path_sugar_golden(config_env: Any) -> None:
    routes = _routes(config_env, "path_sugar")
    table = [(r["name"], r["priority"], r["match"]["methods"], r["match"]["path"]["type"],
              r["match"]["path"]["value"]) for r in routes]
    assert table == [
        ("get_exact", 10, ["GET"], "exact", "/exact"),
        ("get_dir_wildcard", 20, ["GET"], "prefix", "/dir/"),
        ("get_star_wildcard", 30, ["GET"], "prefix", "/star/"),
        ("get_strip_rest", 40, ["GET"], "prefix_strip", "/strip/"),
        ("get_u_wildcard_profile", 50, ["GET"], "glob_one", "/u/*/profile"),
        ("get_u_wildcard_files_rest", 60, ["GET"], "glob_rest", "/u/*/files/**"),
        ("post_put_multi", 70, ["POST", "PUT"], "exact", "/multi"),
        ("any_any_method", 80, ["*"], "exact", "/any-method"),
        ("any_no_method", 90, ["*"], "exact", "/no-method"),
        ("patch_wildcard", 100, ["PATCH"], "prefix", "/"),
        ("delete_wildcard", 110, ["DELETE"], "prefix", "/"),
        ("options_rest", 120, ["OPTIONS"], "prefix_strip", "/"),
    ]
    for route in routes:
        assert route["match"]["host"] == {"type": "any", "value": ""}
        assert route["match"]["headers"] == []
        assert route["proxy"] == "p"
        assert route["auth"] == "none"
        assert "max_depth" not in route["match"]["path"]


def test_spec_easy_golden(config_env: Any) -> None:
    data = tomllib.loads(_filled(config_env, _golden(HERE / "spec_easy.toml")))
    routes = data["route"]
    assert [(r["name"], r["priority"], r["match"]["path"]["type"], r.get("proxy"),
             r.get("static")) for r in routes] == [
        ("get_health", 10, "exact", None, "healthcheck"),
        ("get_files_rest", 20, "prefix_strip", None, "site"),
        ("post_v1_chat_completions", 30, "exact", "inference_pool", None),
        ("post_v1_wildcard_x_model_gpt_4", 40, "prefix", "pool_gpt4", None),
        ("post_v1_wildcard", 50, "prefix", "inference_pool", None),
    ]
    assert routes[3]["match"]["headers"] == [{"name": "x-model", "equals": "gpt-4"}]
    for route in routes:
        assert route["match"]["host"] == {"type": "exact", "value": "api.example.com"}
        assert "rate_limit" not in route  # loopback listener: no rate limit required
    pool = data["upstreams"]["inference_pool"]
    assert pool["peers"] == [{"url": "http://10.0.0.1:8000", "weight": 1},
                             {"url": "http://10.0.0.2:8000", "weight": 1}]
    assert pool["balance"] == "least_conn"
    assert data["upstreams"]["pool_gpt4"]["balance"] == "round_robin"
    assert data["limits"]["max_body"] == "1m"
    assert data["server"]["profile"] == "production"
    assert data["log"]["dir"] == "/var/log/li-httpd"
    assert data["server"]["tls"]["mode"] == "off"


def test_list_public_auth_golden(config_env: Any) -> None:
    data = tomllib.loads(_filled(config_env, _golden(HERE / "list_public_auth.toml")))
    routes = data["route"]
    assert [(r["name"], r["auth"]) for r in routes] == [
        ("get_health", "none"),
        ("post_v1_chat_completions_x_model_gpt_4_x_tier_pro", "api_key"),
        ("post_v1_wildcard", "api_key"),
        ("get_a_b", "api_key"),
        ("get_a_b_2", "api_key"),
    ]
    assert routes[1]["match"]["headers"] == [{"name": "x-model", "equals": "gpt-4"},
                                             {"name": "x-tier", "equals": "pro"}]
    for route in routes:
        assert route["match"]["host"] == {"type": "any", "value": ""}
    # The built-in healthcheck does not inherit [defaults.rate_limit]; every other does.
    assert "rate_limit" not in routes[0]
    for route in routes[1:]:
        assert route["rate_limit"] == data["defaults"]["rate_limit"]
    assert data["defaults"]["rate_limit"]["key"] == "agent_id"
    assert data["defaults"]["rate_limit"]["requests_per_sec"] == 25
    assert data["defaults"]["timeouts"]["stream_idle_timeout"] == "30s"
    for route in routes:
        assert route["timeouts"] == data["defaults"]["timeouts"]
    assert data["upstreams"]["llm"]["peers"] == [{"url": "http://10.0.0.1:8000", "weight": 1},
                                                 {"url": "http://10.0.0.2:8000", "weight": 5}]
    assert data["log"]["dir"] == "./logs"


def test_canonical_fill_golden(config_env: Any) -> None:
    data = tomllib.loads(_filled(config_env, _golden(HERE / "canonical_fill.toml")))
    routes = data["route"]
    assert [(r["name"], r["priority"], r["match"]["host"]) for r in routes] == [
        ("get_head_status", 10, {"type": "exact", "value": "api.example.com"}),
        ("any_users_wildcard_x_b_2_x_a_1", 20, {"type": "exact", "value": "api.example.com"}),
        ("explicit", 30, {"type": "suffix", "value": ".example.org"}),
    ]
    assert routes[2]["match"]["path"] == {"type": "prefix_strip", "value": "/x/", "max_depth": 3}
    defaults = data["defaults"]["headers"]
    assert routes[0]["headers"] == defaults
    assert routes[1]["headers"] == defaults
    assert routes[2]["headers"]["egress"] == {"allow": ["accept"], "inject": {}}
    assert routes[2]["headers"]["ingress"] == defaults["ingress"]


def test_units_and_sections_golden(config_env: Any) -> None:
    data = tomllib.loads(_filled(config_env, _golden(HERE / "units_and_sections.toml")))
    limits = data["limits"]
    assert (limits["max_body"], limits["max_request_line"]) == ("1m", "4k")
    assert (limits["header_timeout"], limits["body_timeout"], limits["keepalive_timeout"]) == (
        "2m", "1500ms", "0ms")
    assert data["server"]["shutdown_timeout"] == "90s"
    assert data["upstreams"]["p"]["fail_timeout"] == "1m"
    log = data["log"]
    assert log["error"] == {"enabled": True, "path": "error.log", "level": "error",
                            "format": "human"}
    assert log["audit"] == {"enabled": True, "path": "/srv/audit/audit.jsonl", "level": "info",
                            "format": "json"}
    assert log["rotation"]["max_size"] == "1g" and log["rotation"]["max_age"] == "2d"


CLIENT_KEYS = """
[server]
listen = "127.0.0.1:8443"
profile = "dev"

[server.tls]
mode = "self_signed"
client_auth = "required"
client_ca = "@CLIENT_CA@"

[auth]
keys = [{ id = "alice", client_cert = "alice" }@MORE@]

[upstreams.p]
peers = ["http://127.0.0.1:9"]

[routes]
"GET /health" = "static:healthcheck"
"/v1/*" = "proxy:p"
"""
BEARER = ', { id = "b", sha256 = "' + "ab" * 32 + '" }'


@pytest.mark.parametrize(("extra", "proxy_auth"), [("", "client_cert"), (BEARER, "api_key")],
                         ids=["only_certificates", "with_a_bearer_key"])
def test_default_auth_follows_the_kind_of_keys(config_env: Any, extra: str,
                                                proxy_auth: str) -> None:
    config = load_text(config_env.fill(CLIENT_KEYS.replace("@MORE@", extra)), "c.toml").config
    assert [route.auth for route in config.route] == ["none", proxy_auth]
