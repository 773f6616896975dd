"""Configs that must validate, and the explain-config fixed point (SPEC §2, §3).

For every tests/config_accept/*.toml (``@NAME@`` placeholders filled from ``config_env``):
``validate-config`` exits 0 printing ``ok``; ``explain-config`` output validates and
explains to itself byte for byte, in-process and through the CLI; and the canonical
text decodes to the same typed config as the original.
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from li_httpd.config import explain, load, load_text
from li_httpd.config.loader import EMBEDDED_NAME, embedded_default

HERE = Path(__file__).parent
ACCEPT_FILES = sorted(HERE.glob("*.toml"))


@pytest.fixture(scope="module")
def written(config_env: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("config_accept")
    out = {}
    for path in ACCEPT_FILES:
        target = directory / path.name
        target.write_text(config_env.fill(path.read_text(encoding="utf-8")), encoding="utf-8")
        out[path.name] = target
    return out


def _cli_round_trip(cli: Any, config_file: Path) -> dict[str, Any]:
    validate = cli("validate-config", "-c", str(config_file))
    first = cli("explain-config", "-c", str(config_file))
    canonical_file = config_file.with_suffix(".explained.toml")
    canonical_file.write_text(first.stdout, encoding="utf-8")
    validate_canonical = cli("validate-config", "-c", str(canonical_file))
    second = cli("explain-config", "-c", str(canonical_file))
    return {"validate": validate, "first": first, "validate_canonical": validate_canonical,
            "second": second}


@pytest.fixture(scope="module")
def cli_runs(cli: Any, written: dict[str, Path]) -> dict[str, dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        jobs = {name: pool.submit(_cli_round_trip, cli, path) for name, path in written.items()}
        return {name: job.result() for name, job in jobs.items()}


def test_accept_files_exist() -> None:
    names = {p.name for p in ACCEPT_FILES}
    assert {"spec_easy.toml", "spec_canonical.toml"} <= names


@pytest.mark.parametrize("path", ACCEPT_FILES, ids=lambda p: p.stem)
def test_explain_is_a_fixed_point(path: Path, written: dict[str, Path]) -> None:
    text = written[path.name].read_text(encoding="utf-8")
    loaded = load_text(text, str(written[path.name]))
    canonical = loaded.canonical
    assert canonical == explain(loaded.config)
    again = load_text(canonical, "canonical.toml")
    assert again.config == loaded.config
    assert again.canonical == canonical
    assert again.hash == loaded.hash
    # The canonical text is in canonical form: no easy-form [routes] left.
    assert "\n[routes]" not in canonical and "\nroutes = " not in canonical


@pytest.mark.parametrize("path", ACCEPT_FILES, ids=lambda p: p.stem)
def test_accept_through_cli(path: Path, written: dict[str, Path],
                            cli_runs: dict[str, dict[str, subprocess.CompletedProcess[str]]]
                            ) -> None:
    runs = cli_runs[path.name]
    loaded = load_text(written[path.name].read_text(encoding="utf-8"), str(written[path.name]))
    validate = runs["validate"]
    assert validate.returncode == 0, validate.stderr
    assert validate.stdout == f"ok: {written[path.name]}\n"
    assert validate.stderr.splitlines() == [w.render(str(written[path.name]))
                                            for w in loaded.warnings]
    first, second = runs["first"], runs["second"]
    assert first.returncode == 0, first.stderr
    assert first.stdout == loaded.canonical
    assert runs["validate_canonical"].returncode == 0, runs["validate_canonical"].stderr
    assert runs["validate_canonical"].stdout == \
        f"ok: {written[path.name].with_suffix('.explained.toml')}\n"
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout


def test_spec_canonical_example_keeps_its_values(written: dict[str, Path]) -> None:
    loaded = load_text(written["spec_canonical.toml"].read_text(encoding="utf-8"), "c.toml")
    (route,) = loaded.config.route
    assert route.name == "post_v1_wildcard"
    assert route.priority == 40
    assert route.match.methods == ("POST",)
    assert (route.match.host.kind, route.match.host.value) == ("exact", "api.example.com")
    assert (route.match.path.kind, route.match.path.value) == ("prefix", "/v1/")
    assert [(h.name, h.equals) for h in route.match.headers] == [("x-model", "gpt-4")]
    assert route.headers.ingress.require == ("traceparent",)
    assert dict(route.headers.egress.inject) == {"via": "li-httpd/1"}
    assert route.headers.response.allow == ("content-type", "cache-control", "retry-after",
                                            "x-request-id")
    limit = route.rate_limit
    assert limit is not None
    assert (limit.requests_per_sec, limit.burst, limit.concurrent_streams) == (60, 30, 100)
    assert limit.bytes_in_per_sec == 1024 * 1024
    timers = route.timeouts
    assert (timers.stream_max_duration, timers.stream_idle_timeout, timers.ttfb_timeout,
            timers.heartbeat_interval) == (600_000, 120_000, 60_000, 15_000)


def test_partial_log_sink_keeps_its_own_defaults(written: dict[str, Path]) -> None:
    """[log.audit] enabled = false keeps audit's own path and format (a partial section
    is merged over that section's defaults, not over the generic sink defaults)."""
    text = written["insecure_rng_acknowledged.toml"].read_text(encoding="utf-8")
    log = load_text(text, "x.toml").config.log
    assert (log.audit.enabled, log.audit.path, log.audit.format) == (False, "audit.jsonl",
                                                                     "json")
    assert (log.error.path, log.error.level) == ("/var/log/li-httpd/errors.log", "warn")
    assert (log.access.path, log.access.level) == ("access.log", "info")


def test_embedded_dev_default_is_used_without_a_file(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.delenv("LI_HTTPD_CONFIG", raising=False)
    monkeypatch.setattr("li_httpd.config.loader.DEFAULT_PATH", str(tmp_path / "absent.toml"))
    loaded = load()
    assert loaded.filename == EMBEDDED_NAME
    assert loaded.config.server.profile == "dev"
    assert loaded.warnings == ()
    assert load_text(loaded.canonical, "c").canonical == loaded.canonical
    assert loaded.canonical == load_text(embedded_default(), "x").canonical


def test_env_var_selects_the_file(monkeypatch: pytest.MonkeyPatch,
                                  written: dict[str, Path]) -> None:
    monkeypatch.setenv("LI_HTTPD_CONFIG", str(written["list_form.toml"]))
    assert load().filename == str(written["list_form.toml"])
