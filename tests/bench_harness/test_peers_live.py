"""The peers for real: each installed one is started by the harness in front of the mock
upstream(s) and must pass the scenario's [verify] (``--profile ci`` for one scenario),
over TLS too.

HAProxy and Caddy are skipped when not installed, and fail under
``LI_HTTPD_REQUIRE_EXTERNAL=1`` (CI installs them); Portkey, optional like LiteLLM, is
skipped unless ``ops/bench/portkey/setup`` has run.
"""

from __future__ import annotations

import os

import pytest
from li_httpd.ops.bench import benchconfig, harness, peers, report


def _verified(scenario_name: str, lang: str) -> list[report.Row]:
    reason = peers.missing(lang)
    if reason:
        if lang in peers.SYSTEM and os.environ.get("LI_HTTPD_REQUIRE_EXTERNAL") == "1":
            pytest.fail(f"{lang} {reason}")
        pytest.skip(f"{lang} {reason}")
    config = benchconfig.scenario_config(scenario_name, benchconfig.load_profile("ci"), [])
    rows: list[report.Row] = []
    scenario = harness.Scenario(config, timing=False, rows=rows)
    scenario.run([lang])
    assert not scenario.failed, rows
    return rows


@pytest.mark.parametrize("lang", ["haproxy", "caddy"])
def test_proxy_peer_relays_a_stream_from_two_mock_upstreams(lang: str) -> None:
    rows = _verified("sse_streams_light", lang)
    assert report.Row("sse_streams_light", lang, "verify", 2, "verify_passed", "1",
                      "bool") in rows


@pytest.mark.parametrize("lang", ["nginx", "haproxy", "caddy", "li"])
def test_every_proxy_serves_the_tls_scenario_with_its_certificate(lang: str) -> None:
    # verify goes over https and checks the chain against the run's throwaway CA.
    rows = _verified("tls_handshake", lang)
    assert report.Row("tls_handshake", lang, "verify", 2, "verify_passed", "1",
                      "bool") in rows


def test_portkey_relays_a_chat_completion_to_the_mock() -> None:
    rows = _verified("openai_chat", "portkey")
    assert report.Row("openai_chat", "portkey", "verify", 2, "verify_passed", "1",
                      "bool") in rows
