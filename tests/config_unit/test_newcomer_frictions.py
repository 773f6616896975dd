"""Config behaviour a new user runs into first: every independent error in one pass,
the built-in healthcheck outside [defaults.rate_limit], and warnings that point at a
line the file really has."""

from __future__ import annotations

import pytest
from li_httpd.config import ConfigError, load_text

PUBLIC_TLS_OFF = '[server]\nlisten = "0.0.0.0:8443"\nprofile = "dev"\n'


def _errors(text: str) -> list[tuple[int, str]]:
    with pytest.raises(ConfigError) as caught:
        load_text(text, "f.toml")
    return [(p.line, p.rule) for p in caught.value.errors]


# -- one pass: a field error does not hide the cross-checks -------------------------------


def test_a_field_error_does_not_hide_tls_and_unknown_upstream() -> None:
    text = (PUBLIC_TLS_OFF +                                   # 1-3
            '\n[limits]\nmax_body = "1x"\n'                    # 5-6: size error
            '\n[upstreams.inference]\npeers = ["http://10.0.0.1:8000"]\n'
            '\n[defaults.rate_limit]\nrequests_per_sec = 5\n'
            '\n[routes]\n"POST /v1/*" = "proxy:inferense"\n')  # 15: unknown upstream
    assert _errors(text) == [(2, "public_tls"), (6, "size"), (15, "unknown_target")]


def test_a_route_error_skips_only_the_rules_about_routes() -> None:
    """A route that cannot be decoded leaves the routes unknown: rules about routes wait
    for the fix, the listener rules do not."""
    text = (PUBLIC_TLS_OFF +
            '\n[upstreams.p]\npeers = ["http://10.0.0.1:8000"]\n'
            '\n[[route]]\nname = "api"\npriority = "high"\n'
            'match.path = { type = "prefix", value = "/api/" }\nproxy = "nowhere"\n')
    assert _errors(text) == [(2, "public_tls"), (10, "type")]


def test_a_misspelt_key_skips_the_rules_that_read_its_section() -> None:
    """`mdoe` leaves server.tls.mode at its default "off": a public_tls error would be
    about a value the user did not write."""
    text = (PUBLIC_TLS_OFF + '\n[server.tls]\nmdoe = "self_signed"\n'
            '\n[routes]\n"GET /health" = "static:healthcheck"\n')
    assert _errors(text) == [(6, "unknown_key")]


def test_a_broken_value_stands_in_with_its_default_but_is_still_an_error() -> None:
    text = ('[server]\nlisten = "127.0.0.1:8080"\nprofile = "dev"\nworkers = "many"\n'
            '\n[routes]\n"GET /health" = "static:healthcheck"\n')
    assert _errors(text) == [(4, "enum")]


def test_a_route_syntax_error_keeps_other_rules() -> None:
    text = (PUBLIC_TLS_OFF + '\n[routes]\n"GET /health" = "static:healthcheck"\n'
            '"FETCH /x" = "static:healthcheck"\n')
    assert _errors(text) == [(2, "public_tls"), (7, "route_syntax")]


# -- routes are required ------------------------------------------------------------------


def test_a_config_without_routes_is_an_error_with_a_hint() -> None:
    with pytest.raises(ConfigError) as caught:
        load_text('[server]\nlisten = "127.0.0.1:8080"\nprofile = "dev"\n', "f.toml")
    (problem,) = caught.value.errors
    assert problem.rule == "no_routes" and problem.line == 0
    assert '[routes] "GET /health" = "static:healthcheck"' in problem.message
    assert problem.render("f.toml").startswith("f.toml: routes: the config has no routes")


# -- the healthcheck and [defaults.rate_limit] ---------------------------------------------

PUBLIC = ('[server]\nlisten = ":443"\nprofile = "dev"\n[server.tls]\nmode = "self_signed"\n'
          '[server.tls.self_signed]\ndev = true\n'
          '[upstreams.p]\npeers = ["http://10.0.0.1:8000"]\n'
          '[defaults.rate_limit]\nrequests_per_sec = 5\n')


def test_the_healthcheck_does_not_inherit_the_default_rate_limit() -> None:
    loaded = load_text(PUBLIC + '[routes]\n"GET /health" = "static:healthcheck"\n'
                                '"/v1/*" = "proxy:p"\n', "f.toml")
    health, proxied = loaded.config.route
    assert health.rate_limit is None
    assert proxied.rate_limit is not None and proxied.rate_limit.requests_per_sec == 5
    assert "# no rate limit: the built-in healthcheck is exempt from [defaults.rate_limit]" \
        in loaded.canonical
    again = load_text(loaded.canonical, "canonical.toml")
    assert again.config == loaded.config and again.canonical == loaded.canonical


def test_a_healthcheck_with_its_own_rate_limit_keeps_it() -> None:
    text = PUBLIC + ('[[route]]\nname = "health"\npriority = 10\n'
                     'match.path = { type = "exact", value = "/health" }\n'
                     'static = "healthcheck"\n[route.rate_limit]\nrequests_per_sec = 3\n')
    (route,) = load_text(text, "f.toml").config.route
    assert route.rate_limit is not None and route.rate_limit.requests_per_sec == 3
    assert "exempt" not in load_text(text, "f.toml").canonical


def test_a_public_healthcheck_needs_no_rate_limit_but_a_proxy_route_does() -> None:
    no_default = PUBLIC.replace("[defaults.rate_limit]\nrequests_per_sec = 5\n", "")
    load_text(no_default + '[routes]\n"GET /health" = "static:healthcheck"\n', "f.toml")
    assert [rule for _, rule in _errors(no_default + '[routes]\n"/v1/*" = "proxy:p"\n')] \
        == ["public_rate_limit"]


# -- the production censor warning points at a real line -----------------------------------


@pytest.mark.parametrize(("text", "line", "path"), [
    ('[server]\nlisten = "127.0.0.1:8080"\nprofile = "production"\n', 3, "server.profile"),
    ('[server]\nlisten = "127.0.0.1:8080"\n[leak_censor]\nenabled = false\n', 4,
     "leak_censor.enabled"),
    ('[server]\nlisten = "127.0.0.1:8080"\n', 0, "server.profile"),
], ids=["profile", "switch", "defaults"])
def test_the_censor_warning_points_at_a_written_key_or_at_none(text: str, line: int,
                                                                path: str) -> None:
    loaded = load_text(text + '[routes]\n"GET /health" = "static:healthcheck"\n', "f.toml")
    (warning,) = loaded.warnings
    assert (warning.rule, warning.line, warning.display_path) == ("censor_disabled", line,
                                                                   path)
    rendered = warning.render("f.toml")
    if line:
        assert rendered.startswith(f"f.toml:{line}: {path}: warning: ")
    else:
        assert rendered.startswith("f.toml: server.profile: warning: ")
        assert 'the default "production" applies' in rendered
