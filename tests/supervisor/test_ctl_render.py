"""`li-httpd ctl status` as text: a failed reload names the error's place once."""

from __future__ import annotations

from typing import Any

from li_httpd.supervisor.ctl import render_status


def _status(last_reload: dict[str, Any]) -> dict[str, Any]:
    return {"version": "0.1.0", "pid": 1, "uptime_s": 1.0, "config_file": "/etc/gw.toml",
            "config_hash": "abc", "generation": 0, "listen": ["http://127.0.0.1:8080"],
            "control_socket": "/run/li-httpd/control.sock", "last_reload": last_reload,
            "workers": [], "upstreams": []}


def _reload_line(last_reload: dict[str, Any]) -> str:
    text = render_status(_status(last_reload))
    return next(line for line in text.splitlines() if line.startswith("reload"))


def test_a_file_error_shows_its_location_once() -> None:
    reason = "/etc/gw.toml:12: routes.\"/x\": proxy target 'missing' is not declared"
    line = _reload_line({"result": "failed", "line": 12, "reason": reason})
    assert line == f"reload   failed  {reason}"
    assert line.count("12") == 1


def test_a_failure_outside_the_file_has_no_line_zero() -> None:
    line = _reload_line({"result": "failed", "line": 0,
                         "reason": "cannot listen on 127.0.0.1:80: Permission denied"})
    assert line == "reload   failed  cannot listen on 127.0.0.1:80: Permission denied"


def test_no_reload_yet_shows_nothing_and_success_shows_the_hash() -> None:
    assert "reload" not in render_status(_status({"result": "none"}))
    assert _reload_line({"result": "ok", "config_hash": "9c1e"}) == "reload   ok  config 9c1e"


def test_budgets_show_use_over_limit_and_the_window_end() -> None:
    status = _status({"result": "none"})
    status["budgets"] = [
        {"key": "alice", "tokens": 1200, "tokens_per_minute": 5000,
         "tokens_window_end": 1_800_000_060, "usd": 1.5, "usd_budget": 20.0,
         "usd_window_end": 1_800_057_600},
        {"key": "ci-bot", "tokens": 7, "tokens_per_minute": 100, "tokens_window_end": 60,
         "usd": 0.25, "usd_budget": 0.0, "usd_window_end": 86_400},
    ]
    text = render_status(status)
    assert text.splitlines()[-4:] == [
        "budgets",
        "  key     tokens/min  usd         window ends (UTC)",
        "  alice   1200/5000   1.50/20.00  2027-01-16 00:00:00",
        "  ci-bot  7/100       0.25/-",
    ]
    assert "budgets" not in render_status(_status({"result": "none"}))
    status["budgets_from"] = "redis"
    assert "budgets (from Redis)" in render_status(status).splitlines()
    status["budgets_from"] = "shared memory (Redis unavailable: connection refused)"
    assert ("budgets (this host's own counters, which decide meanwhile: Redis unavailable: "
            "connection refused)") in render_status(status).splitlines()
    status.update(budgets=[], budgets_from="unavailable: Redis did not answer in time")
    assert render_status(status).splitlines()[-1] == (
        "budgets  unavailable: Redis did not answer in time (Redis holds them)")


def test_capped_peers_show_active_over_max_and_queues_their_depth() -> None:
    status = _status({"result": "none"})
    peer = {"pool": "m", "health": "up", "down_for_s": 0.0, "fails": 0, "circuit": "n/a"}
    status["upstreams"] = [{**peer, "peer": "http://a:1", "active": 2, "max_concurrent": 4},
                           {**peer, "peer": "http://b:1", "active": 3, "max_concurrent": 0}]
    status["queues"] = [{"route": "chat", "depth": 7, "max_size": 100}]
    lines = render_status(status).splitlines()
    row_a = next(line for line in lines if "http://a:1" in line)
    row_b = next(line for line in lines if "http://b:1" in line)
    assert " 2/4 " in row_a and " 3 " in row_b and "/0" not in row_b
    assert lines[lines.index("queues") + 2].split() == ["chat", "7/100"]


def test_certificates_show_names_expiry_and_renewal() -> None:
    status = _status({"result": "none"})
    status["certificates"] = [{
        "path": "/c/dev.crt", "source": "manual", "subject": "CN=gw.test",
        "issuer": "CN=gw.test", "names": ["gw.test", "127.0.0.1"],
        "not_after": "2027-03-02T22:00:00Z", "days_left": 89, "expires_in_s": 7700000,
        "fingerprint": "AB:CD", "next_renewal": "-"}]
    lines = render_status(status).splitlines()
    at = lines.index("certificates")
    assert lines[at + 1].split() == ["source", "subject", "names", "issuer", "expires",
                                     "(UTC)", "next", "renewal"]
    assert lines[at + 2].split() == ["manual", "CN=gw.test", "gw.test,127.0.0.1", "CN=gw.test",
                                     "2027-03-02T22:00:00Z", "(89d", "left)", "-"]
    assert lines[at + 3] == "  /c/dev.crt sha256=AB:CD"


def test_a_certificate_swap_reload_says_so() -> None:
    from li_httpd.supervisor.ctl import render_reload

    assert render_reload({"result": "ok", "detail": "certificate swapped", "generation": 0,
                          "config_hash": "9c"}) == \
        "certificate swapped: generation 0, config 9c"
