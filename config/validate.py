"""Cross-field validation rules of SPEC §3, run on the decoded model.

Field-level rules (types, bounds, header-name syntax, peer URL syntax, ...) are enforced
by the decoder through the schema in :mod:`.model`; the rules here relate several parts
of the config. Each rule has a stable id, listed with the decoder's ids in
:data:`RULES` (and in docs/configuration.md); each has a reject case under
tests/config_reject/. Only :func:`_check_static_root`, :func:`_check_manual_cert` and
:func:`_check_client_auth` look at the filesystem, because those rules are about files.
The ``generated_*`` rules (the ``[leak_censor] generated_file``) are listed here but
checked by the loader (:mod:`.censorgen`), because that file's path is relative to the
config file's directory, which the model does not know.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography import x509

from . import checks
from .acme_paths import ACME_CHALLENGE_PATH
from .locate import KeyPath
from .matching import GLOB, PathPattern, covers, host_matches, pattern_of, split_path
from .model import (
    BUILTIN_STATIC,
    RATE_LIMIT_EXEMPT,
    ApiKey,
    CircuitBreaker,
    Config,
    Match,
    Metrics,
    RateLimit,
    Rng,
    Route,
    RouteCensor,
    RouteFallback,
    RouteTimeouts,
    State,
    Tls,
    TlsLetsEncrypt,
    TlsManual,
    TlsSelfSigned,
    Upstream,
)
from .problems import Problems
from .schema import suggest
from .units import format_duration

MAX_PEERS = 32
SYSTEM_TREES = ("/etc", "/proc", "/sys", "/dev", "/root", "/boot")


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    summary: str


RULES: tuple[Rule, ...] = (
    Rule("toml_syntax", "The file is not valid TOML (including duplicate keys)."),
    Rule("unknown_key", "A key the schema does not know; the message suggests the closest."),
    Rule("type", "A value of the wrong type (string where a number is expected, ...)."),
    Rule("enum", "A value outside the allowed set of an enum field."),
    Rule("size", "A size that is not digits with an optional k/m/g unit."),
    Rule("duration", "A duration without a unit or with an unknown unit."),
    Rule("ceiling", "A value above the schema ceiling (limits may only be tightened)."),
    Rule("minimum", "A value below the schema minimum."),
    Rule("required", "A required key is missing."),
    Rule("no_routes", "A config without any route (it would answer every request with "
                      "404); the message shows how to add one."),
    Rule("routes_mixed", "The easy [routes] form mixed with canonical [[route]] tables."),
    Rule("route_syntax", "An easy route key or target that cannot be read unambiguously."),
    Rule("duplicate_route", "Two easy route keys that mean the same match."),
    Rule("route_target", "A route needs exactly one of proxy or static."),
    Rule("unknown_target", "A proxy: target that is not a declared upstream, or a static: "
                           "target that is neither declared nor built in."),
    Rule("name", "Upstream and static names: letters, digits, '_' and '-'."),
    Rule("route_name", "Route names: letters, digits, '_' and '-'."),
    Rule("duplicate_name", "Two routes with the same name."),
    Rule("duplicate_priority", "Two routes with the same priority (order would be a guess)."),
    Rule("route_shadowed", "A route an earlier route fully covers: it could never match."),
    Rule("path_normalized", "Config paths must be in normal form: no '..', '//', %-escapes "
                            "or '\\', and the pattern must fit its match type."),
    Rule("max_depth", "max_depth only on prefix_strip/glob_rest, and required for them on "
                      "a public listener."),
    Rule("host", "Host values: a lowercase name; suffix values start with '.'."),
    Rule("method", "Methods: GET HEAD POST PUT PATCH DELETE OPTIONS or '*' alone; "
                   "CONNECT and TRACE are refused."),
    Rule("header_name", "Header names are lowercase RFC 9110 tokens; literals are plain."),
    Rule("header_policy", "Header policies cannot name x-upstream-*, x-route-*, hop-by-hop "
                          "or framing headers; inject values are literals (no CR, LF, NUL, "
                          "'$'); required headers must be allowed."),
    Rule("peer_count", "An upstream has 1 to 32 peers."),
    Rule("peer_url", "Peers are literal http(s)://host:port origins: no userinfo, path, "
                     "query, fragment or '$'."),
    Rule("duplicate_peer", "The same peer twice in one upstream."),
    Rule("ca_file", "An upstream's ca_file must be a readable file, and the pool has an "
                    "https:// peer for it to verify."),
    Rule("health_check", "Health probe paths are origin-form paths on the peer (one "
                         "leading '/', no scheme, host, '//', dot segments, %-escapes, "
                         "spaces or control characters); timeout is shorter than interval."),
    Rule("static_root", "Static roots are absolute, canonical, existing directories, not / "
                        "nor a system tree (/etc, /proc, /sys, /dev, /root, /boot), and "
                        "neither contain nor lie inside the log directory, log files, "
                        "certificate directory, TLS key or control socket."),
    Rule("listen", "Listen addresses are IP:PORT, [IPv6]:PORT or :PORT, each used once."),
    Rule("public_tls", "A public (non-loopback) listener requires TLS."),
    Rule("self_signed_public", "self_signed on a public listener requires "
                               "server.tls.self_signed.dev = true."),
    Rule("lets_encrypt", "lets_encrypt needs a valid email, domains that are route host "
                         "names (not IP addresses), and environment = staging or "
                         "production, or a directory_url (then no environment)."),
    Rule("tls_mode_settings", "[server.tls.manual], [server.tls.self_signed] and "
                              "[server.tls.lets_encrypt] are only set with their mode "
                              "(another mode would ignore them); min_protocol, "
                              "session_tickets and ticket_rotation need TLS on, and "
                              "cert_dir mode self_signed or lets_encrypt."),
    Rule("acme_directory", "directory_url is an https:// URL without userinfo, query or "
                           "fragment."),
    Rule("acme_ca_bundle", "lets_encrypt ca_bundle must be a readable file."),
    Rule("acme_challenge_port", "The HTTP-01 listener (lets_encrypt http01_bind) does not "
                             "share a server.listen or metrics listener's port on the same "
                             "host or all interfaces."),
    Rule("acme_reserved", "With lets_encrypt, no route may match "
                          "/.well-known/acme-challenge/."),
    Rule("manual_cert", "manual TLS: cert and key readable, the certificate parseable and "
                        "currently valid (a warning when it expires within 30 days)."),
    Rule("client_auth", "client_auth = optional or required needs TLS and client_ca; "
                        "client_ca, client_identity and [auth] client_cert entries need "
                 "client_auth."),
    Rule("client_ca", "client_ca is a readable PEM file of at least one CA certificate."),
    Rule("session_tickets", "ticket_rotation is only set when session_tickets is on."),
    Rule("client_cert_key", "rate_limit.key = client_cert needs server.tls.client_auth "
                            "= optional or required."),
    Rule("public_rate_limit", "Every route on a public listener has a rate limit (its own "
                              "or [defaults.rate_limit]), except the built-in healthcheck "
                              "(no upstream call, a constant answer)."),
    Rule("ip_key", "rate_limit.key = ip requires allow_ip_key = true, and allow_ip_key "
                   "is set only with key = ip."),
    Rule("heartbeat", "A non-zero timeouts.heartbeat_interval is shorter than the "
                      "stream_idle_timeout it applies with (else a stalled stream would "
                      "end before its first heartbeat)."),
    Rule("early_stream_head", "timeouts.early_stream_head needs a non-zero "
                              "heartbeat_interval (a committed stream must show it is alive)."),
    Rule("fallback", "fallback.chain names declared upstreams, each once, other than the "
                     "route's own pool, on a proxy route; fallback.on is not empty; on and "
                     "statuses only with a chain, statuses only with \"status\" in on."),
    Rule("queue", "A route's [route.queue] needs a proxy route."),
    Rule("proxy_only", "A static route sets none of the proxy-only route settings (its own "
                       "timeouts, leak_censor, headers.egress, headers.response, "
                       "request_buffering, usage_accounting, inject_stream_usage)."),
    Rule("model", "Model names (and owned_by): letters, digits and . _ : / @ + -, at most "
                  "128, starting with a letter or digit."),
    Rule("model_pool", "Every [models] entry's pool is a declared upstream."),
    Rule("model_routing", "model_routing needs a proxy route and a [models] catalog."),
    Rule("key_models", "A key's models are [models] names."),
    Rule("unpriced_budget", "A key with a usd_budget may use at least one [models] entry "
                            "with an input or output price (a warning: requests for an "
                            "unpriced model cost $0 against it)."),
    Rule("auth", "Keys: unique ids, hashes and client certificates, each entry exactly one "
                 "of sha256 and client_cert; a route with auth = api_key needs a sha256 "
                 "key, one with auth = client_cert a client_cert entry; budget_window "
                 "only with a usd_budget; accept_x_api_key only where an API key can be "
                 "read (sha256 keys declared, the route's auth not client_cert)."),
    Rule("rng_profile", "production refuses rng.mode = prng unless allow_insecure_rng; "
                        "mode = bad only under the exploit profile; seed only with prng or "
                        "sim, allow_insecure_rng only with prng, bad_pattern only with "
                        "bad."),
    Rule("expose_upstream_errors", "expose_upstream_errors is refused under production."),
    Rule("audit_required", "A public listener requires the audit log."),
    Rule("censor_disabled", "Warning: under production the leak censor is off and "
                            "ack_disable_censor is not set."),
    Rule("censor_off", "A [defaults.leak_censor] or [route.leak_censor] with enabled = "
                       "false sets no scrubbing setting (only deny_headers, which still "
                       "applies)."),
    Rule("censor_generated", "include_generated needs leak_censor.generated_file, and a "
                             "generated_file needs a route that includes it."),
    Rule("generated_file", "leak_censor.generated_file (relative to the config file's "
                           "directory) must be a readable file."),
    Rule("generated_format", "The generated file must be one written by `li-httpd "
                             "setup-censor` (its header keys, format version, sources)."),
    Rule("generated_edited", "The generated file's content_sha256 must match its content: "
                             "it is regenerated, never edited by hand."),
    Rule("generated_stale", "Every source the generated file records must be unchanged, "
                            "and no new file may have appeared in a source directory "
                            "(out of date: run setup-censor again)."),
    Rule("generated_path", "Every path in the generated file is a supported JSON path."),
    Rule("detector", "Detector ids must be built-in ids."),
    Rule("json_path", "JSON deny paths use the $.a.b / $.items[*].field / $..field subset."),
    Rule("metrics_listener", "The metrics listener is loopback (unless allow_non_loopback) "
                             "and differs from the main listeners; listen, path and "
                             "allow_non_loopback only with enabled = true."),
    Rule("passive_health", "fail_timeout and health_failures only with max_fails > 0 "
                           "(max_fails = 0 turns passive health off)."),
    Rule("saturation", "saturated_status only on a pool where some peer has a "
                       "max_concurrent cap (else it is never saturated)."),
    Rule("circuit_breaker", "An enabled circuit_breaker counts at least one kind of "
                            "failure (failures is not empty); a disabled one sets nothing "
                            "but enabled = false."),
    Rule("state_url", "[state] url is redis://[USER@]HOST:PORT[/DB] or rediss://...; never "
                      "with a password (use password_file or password_env)."),
    Rule("state", "[state] backend = redis needs url; every other [state] setting "
                  "only with backend = redis; ca_file only with rediss:// "
                  "and readable; password_file readable, or password_env set (not both); "
                  "key_prefix is 1-64 printable ASCII characters without spaces."),
    Rule("value", "A value that fails a field-specific check (e.g. a non-5xx retry status)."),
)

_RULE_IDS = frozenset(rule.id for rule in RULES)


def validate(config: Config, problems: Problems, broken: Iterable[KeyPath] = ()) -> None:
    """Run every cross-field rule, appending to ``problems``.

    ``broken``: key paths that already have an error and hold a stand-in value (see
    :class:`~.schema.Decoder`). A rule that reads any of them is skipped: its verdict
    would be about a value the user did not write. The others still run, so that one
    pass reports every error that does not depend on another.
    """
    broken = tuple(broken)
    for check, reads in _CHECKS:
        if not any(_overlaps(path, read) for path in broken for read in reads):
            check(config, problems)
    unknown = {p.rule for p in problems.items} - _RULE_IDS
    if unknown:
        raise AssertionError(f"undocumented rule ids: {sorted(unknown)}")


def _overlaps(path: KeyPath, read: KeyPath) -> bool:
    """True when one path lies within the other."""
    shorter = min(len(path), len(read))
    return path[:shorter] == read[:shorter]


def is_public(config: Config) -> bool:
    return any(not checks.is_loopback(a) for a in config.server.listen)


def _set_keys(section: object, unset: object,
              names: Iterable[str] | None = None) -> list[str]:
    """The keys of ``section`` that differ from ``unset`` (the same section as the schema
    fills it when the file writes nothing): the ones the file sets. ``names``: only these
    (default: every field). For the rules that refuse a key its section's switch ignores."""
    keys = names if names is not None else (
        f.name for f in dataclasses.fields(section))  # type: ignore[arg-type]
    return [key for key in keys if getattr(section, key) != getattr(unset, key)]


def _route_path(index: int, *rest: str | int) -> KeyPath:
    return ("route", index, *rest)


# -- routes ---------------------------------------------------------------------------------


def _check_targets(config: Config, problems: Problems) -> None:
    for index, route in enumerate(config.route):
        if (route.proxy is None) == (route.static is None):
            problems.error(_route_path(index), "route_target",
                           "a route needs exactly one of proxy = \"<upstream>\" or "
                           "static = \"<name>\"")
            continue
        if route.proxy is not None and route.proxy not in config.upstreams:
            hint = suggest(route.proxy, config.upstreams)
            problems.error(_route_path(index, "proxy"), "unknown_target",
                           f"proxy target {route.proxy!r} is not a declared "
                           f"[upstreams.{route.proxy}]{hint}")
        if route.static is not None and route.static not in config.static \
                and route.static not in BUILTIN_STATIC:
            hint = suggest(route.static, [*config.static, *BUILTIN_STATIC])
            problems.error(_route_path(index, "static"), "unknown_target",
                           f"static target {route.static!r} is neither a declared "
                           f"[static.{route.static}] nor a built-in responder "
                           f"({', '.join(BUILTIN_STATIC)}){hint}")


_FALLBACK_DEFAULTS = RouteFallback()


def _check_fallbacks(config: Config, problems: Problems) -> None:
    for index, route in enumerate(config.route):
        fallback = route.fallback
        if not fallback.chain:
            # No pool to fall back to: when to fall back would be accepted and ignored.
            for key in _set_keys(fallback, _FALLBACK_DEFAULTS, ("on", "statuses")):
                problems.error(_route_path(index, "fallback", key), "fallback",
                               f"fallback.{key} is set but fallback.chain is empty; "
                               "name the pools to try in chain, or remove it")
            continue
        if "status" not in fallback.on and fallback.statuses != _FALLBACK_DEFAULTS.statuses:
            problems.error(_route_path(index, "fallback", "statuses"), "fallback",
                           "fallback.statuses is set but \"status\" is not in fallback.on "
                           "(no status moves on); add it to on, or remove statuses")
        if route.proxy is None:
            problems.error(_route_path(index, "fallback", "chain"), "fallback",
                           "fallback.chain needs a proxy route (this route has no "
                           "upstream to fall back from)")
            continue
        seen = {route.proxy}
        for position, name in enumerate(fallback.chain):
            where = _route_path(index, "fallback", "chain", position)
            if name not in config.upstreams:
                problems.error(where, "fallback", f"fallback pool {name!r} is not a "
                               f"declared [upstreams.{name}]"
                               f"{suggest(name, config.upstreams)}")
            elif name in seen:
                problems.error(where, "fallback",
                               f"fallback pool {name!r} is the route's own pool"
                               if name == route.proxy else
                               f"fallback pool {name!r} appears twice in the chain")
            seen.add(name)
        if not fallback.on:
            problems.error(_route_path(index, "fallback", "on"), "fallback",
                           "fallback.on is empty: the chain would never be used; name at "
                           "least one of connect, status, ttfb_timeout, reset")


def _check_queues(config: Config, problems: Problems) -> None:
    for index, route in enumerate(config.route):
        if route.queue is not None and route.proxy is None:
            problems.error(_route_path(index, "queue"), "queue",
                           "[route.queue] needs a proxy route (this route has no upstream "
                           "to wait for)")


_PROXY_ONLY: tuple[tuple[str, ...], ...] = (
    ("timeouts",), ("leak_censor",), ("headers", "egress"), ("headers", "response"),
    ("request_buffering",), ("usage_accounting",), ("inject_stream_usage",))
"""Route settings only a proxy route reads (upstream timers, the response censor and
header allowlists, request body handling, usage): a static route that sets its own would
have them accepted and ignored. [defaults] values are not refused: they are for the
proxy routes."""


def _check_proxy_only(config: Config, problems: Problems) -> None:
    for index, route in enumerate(config.route):
        if route.proxy is not None or route.static is None:
            continue
        for name in _PROXY_ONLY:
            dotted = ".".join(name)
            own, inherited = _section(route, dotted), _section(config.defaults, dotted)
            if own == inherited:
                continue
            where = _route_path(index, *name)
            if dataclasses.is_dataclass(own) and not isinstance(own, type):
                # [route.timeouts] overrides [defaults.timeouts] key by key; the other
                # sections are whole (an own section starts from the schema defaults).
                # `leak_censor.enabled = false` states what a static route gets anyway
                # (nothing scrubbed), so it misleads nobody and is kept.
                base = inherited if name == ("timeouts",) else type(own)()
                changed = [f.name for f in dataclasses.fields(own)
                           if getattr(own, f.name) != getattr(base, f.name)
                           and (f.name, getattr(own, f.name)) != ("enabled", False)]
                if not changed:
                    continue
                where = (*where, changed[0])
                dotted = f"{dotted}.{changed[0]}"
            problems.error(where, "proxy_only",
                           f"{dotted} is set on route {route.name!r}, a static route: it "
                           "applies to proxy routes only (an upstream's request and "
                           "response); remove it")


def _check_models(config: Config, problems: Problems) -> None:
    for name, model in config.models.items():
        if model.pool not in config.upstreams:
            problems.error(("models", name, "pool"), "model_pool",
                           f"model {name!r}: pool {model.pool!r} is not a declared "
                           f"[upstreams.{model.pool}]{suggest(model.pool, config.upstreams)}")
    for index, route in enumerate(config.route):
        if route.model_routing and (route.proxy is None or not config.models):
            problems.error(_route_path(index, "model_routing"), "model_routing",
                           "model_routing needs a proxy route (its pool serves requests "
                           "that name no model) and models in [models]")
    for index, key in enumerate(config.auth.keys):
        for position, name in enumerate(key.models):
            if name not in config.models:
                problems.error(("auth", "keys", index, "models", position), "key_models",
                               f"key {key.id!r}: model {name!r} is not in [models]"
                               f"{suggest(name, config.models)}")
        usable = key.models or tuple(config.models)
        if key.usd_budget and not any(
                name in config.models and (config.models[name].price.input
                                           or config.models[name].price.output)
                for name in usable):
            problems.warning(("auth", "keys", index, "usd_budget"), "unpriced_budget",
                             f"key {key.id!r} has a usd_budget but no model it may use has "
                             "a price ([models.NAME] price.input/output): its requests cost "
                             "$0 and the dollar budget is never spent")


def _check_has_routes(config: Config, problems: Problems) -> None:
    if config.route:
        return
    problems.error(("routes",), "no_routes",
                   "the config has no routes: every request would get 404; add a [routes] "
                   "table, e.g. [routes] \"GET /health\" = \"static:healthcheck\" and "
                   "\"/v1/*\" = \"proxy:<upstream>\" with an [upstreams.<upstream>] "
                   "peers = [\"http://127.0.0.1:8000\"]",
                   anchors=(("routes",), ("route",)))


def _check_names_and_priorities(config: Config, problems: Problems) -> None:
    names: dict[str, int] = {}
    priorities: dict[int, int] = {}
    for index, route in enumerate(config.route):
        if route.name in names:
            problems.error(_route_path(index, "name"), "duplicate_name",
                           f"route name {route.name!r} is already used by route "
                           f"{names[route.name]}")
        names.setdefault(route.name, index)
        if route.priority in priorities:
            problems.error(_route_path(index, "priority"), "duplicate_priority",
                           f"priority {route.priority} is already used by route "
                           f"{priorities[route.priority]}; ties would make the order a guess")
        priorities.setdefault(route.priority, index)


def _path_shape_problem(match: Match) -> str | None:
    path = match.path
    problem = checks.config_path(path.value)
    if problem:
        return problem
    segments, _ = split_path(path.value)
    if any("*" in s and s not in ("*", "**") for s in segments):
        return f"{path.value!r}: '*' must be a whole segment"
    globs = [s for s in segments if s == "*"]
    rest = [s for s in segments if s == "**"]
    if path.kind in ("exact", "prefix", "prefix_strip") and (globs or rest):
        return f"{path.kind} paths cannot contain '*'; use glob_one or glob_rest"
    if path.kind in ("prefix", "prefix_strip") and not path.value.endswith("/"):
        return f"{path.kind} values end with '/' (e.g. \"/v1/\")"
    if path.kind == "glob_one" and (not globs or rest):
        return "glob_one values contain at least one '*' segment and no '**'"
    if path.kind == "glob_rest" and (not path.value.endswith("/**") or len(rest) != 1):
        return "glob_rest values end with '/**' (and use '**' only there)"
    return None


def _check_matches(config: Config, problems: Problems) -> None:
    public = is_public(config)
    for index, route in enumerate(config.route):
        match = route.match
        problem = _path_shape_problem(match)
        if problem:
            problems.error(_route_path(index, "match", "path"), "path_normalized", problem)
        depth_kinds = ("prefix_strip", "glob_rest")
        if match.path.max_depth is not None and match.path.kind not in depth_kinds:
            problems.error(_route_path(index, "match", "path"), "max_depth",
                           "max_depth applies only to prefix_strip and glob_rest")
        if public and match.path.kind in depth_kinds and match.path.max_depth is None:
            problems.error(_route_path(index, "match", "path"), "max_depth",
                           f"{match.path.kind} on a public listener needs max_depth "
                           "(write the route in canonical form with match.path.max_depth)")
        host = match.host
        if host.kind == "any" and host.value:
            problems.error(_route_path(index, "match", "host"), "host",
                           "host type 'any' takes no value")
        elif host.kind == "exact" and checks.host_value(host.value):
            problems.error(_route_path(index, "match", "host"), "host",
                           f"{host.value!r} is not a lowercase host name")
        elif host.kind == "suffix" and (not host.value.startswith(".")
                                        or checks.host_value(host.value[1:])):
            problems.error(_route_path(index, "match", "host"), "host",
                           f"suffix {host.value!r} must look like \".example.com\"")
        if "*" in match.methods and len(match.methods) > 1:
            problems.error(_route_path(index, "match", "methods"), "method",
                           "'*' already means any method; do not combine it")
        if len(set(match.methods)) != len(match.methods):
            problems.error(_route_path(index, "match", "methods"), "method",
                           "a method is listed twice")
        names = [lit.name for lit in match.headers]
        if len(set(names)) != len(names):
            problems.error(_route_path(index, "match", "headers"), "header_name",
                           "a header literal names the same header twice")


def _check_shadowing(config: Config, problems: Problems) -> None:
    ordered = sorted(enumerate(config.route), key=lambda item: item[1].priority)
    for position, (index, route) in enumerate(ordered):
        if _path_shape_problem(route.match):
            continue
        for _, earlier in ordered[:position]:
            if not _path_shape_problem(earlier.match) and covers(earlier.match, route.match):
                problems.error(_route_path(index), "route_shadowed",
                               f"route {route.name!r} can never match: route {earlier.name!r} "
                               "comes first and matches every request it would")
                break


def _check_acme_reserved(config: Config, problems: Problems) -> None:
    if config.server.tls.mode != "lets_encrypt":
        return
    reserved = tuple(split_path(ACME_CHALLENGE_PATH)[0])
    for index, route in enumerate(config.route):
        methods = route.match.methods
        if "*" not in methods and "GET" not in methods:
            continue
        hosts = config.server.tls.lets_encrypt.domains or ("",)
        reaches = any(route.match.host.kind == "any" or host_matches(route.match.host, h)
                      for h in hosts)
        if reaches and _reaches_below(pattern_of(route.match.path), reserved):
            problems.error(_route_path(index, "match", "path"), "acme_reserved",
                           f"{ACME_CHALLENGE_PATH} is reserved for ACME HTTP-01 challenges "
                           "while lets_encrypt is on; narrow this route")


def _reaches_below(pattern: PathPattern, prefix: tuple[str, ...]) -> bool:
    """True when ``pattern`` matches some path at or below the directory ``/prefix/``.

    Every path there is the prefix segments plus any (non-empty) segments, so the check
    is on the pattern's shape, not on one sample path: an exact route on one token is as
    reserved as a prefix route over all of them.
    """
    count, need = len(pattern.segments), len(prefix)
    if any(want not in (GLOB, have) for want, have in zip(pattern.segments, prefix,
                                                           strict=False)):
        return False
    if pattern.tail == "end":
        return count > need
    if pattern.tail == "slash":
        return count >= need
    return count >= need or pattern.max_depth is None or need - count <= pattern.max_depth


# -- upstreams and static -------------------------------------------------------------------


_BREAKER_DEFAULTS = CircuitBreaker()
_UPSTREAM_DEFAULTS = Upstream(peers=())


def _check_upstreams(config: Config, problems: Problems) -> None:
    for name, pool in config.upstreams.items():
        breaker = pool.circuit_breaker
        if breaker.enabled and not breaker.failures:
            problems.error(("upstreams", name, "circuit_breaker", "failures"),
                           "circuit_breaker", "circuit_breaker.failures is empty: the "
                           "circuit would never open; name at least one of "
                           "connect, reset, malformed, 5xx, ttfb_timeout (or set "
                           "enabled = false)")
        if not breaker.enabled:
            # The breaker's state is never made: its tuning would be accepted and ignored.
            for key in _set_keys(breaker, _BREAKER_DEFAULTS):
                if key != "enabled":
                    problems.error(("upstreams", name, "circuit_breaker", key),
                                   "circuit_breaker",
                                   f"circuit_breaker.{key} is set but enabled = false; "
                                   "set enabled = true or remove it")
        # Settings another setting switches off: accepted, they would be ignored.
        if pool.max_fails == 0:
            for key in _set_keys(pool, _UPSTREAM_DEFAULTS, ("fail_timeout",
                                                            "health_failures")):
                problems.error(("upstreams", name, key), "passive_health",
                               f"{key} is set but max_fails = 0 (passive health is off: "
                               "no peer is ever marked down); remove it or set max_fails")
        capped = pool.max_concurrent > 0 or any(peer.max_concurrent for peer in pool.peers)
        if not capped and pool.saturated_status != _UPSTREAM_DEFAULTS.saturated_status:
            problems.error(("upstreams", name, "saturated_status"), "saturation",
                           "saturated_status is set but no peer has a max_concurrent cap "
                           "(the pool is never saturated); set max_concurrent or remove it")
        count = len(pool.peers)
        if not 1 <= count <= MAX_PEERS:
            problems.error(("upstreams", name, "peers"), "peer_count",
                           f"an upstream has 1 to {MAX_PEERS} peers, not {count}")
        if pool.ca_file and not (os.path.isfile(pool.ca_file)
                                 and os.access(pool.ca_file, os.R_OK)):
            problems.error(("upstreams", name, "ca_file"), "ca_file",
                           f"ca_file {pool.ca_file!r} is not a readable file")
        if pool.ca_file and pool.peers and not any(
                peer.url.lower().startswith("https://") for peer in pool.peers):
            # Nothing would be verified: every peer is spoken to in clear text.
            problems.error(("upstreams", name, "ca_file"), "ca_file",
                           "ca_file is set but no peer is https:// (nothing is verified "
                           "over http); use https:// peers or remove ca_file")
        probe = pool.health_check
        if probe is not None and probe.timeout >= probe.interval:
            problems.error(("upstreams", name, "health_check", "timeout"), "health_check",
                           f"health_check.timeout ({probe.timeout} ms) must be shorter than "
                           f"its interval ({probe.interval} ms)")
        seen: set[str] = set()
        for position, peer in enumerate(pool.peers):
            key = peer.url.rstrip("/").lower()
            if key in seen:
                problems.error(("upstreams", name, "peers", position), "duplicate_peer",
                               f"peer {peer.url!r} is listed twice")
            seen.add(key)


def _check_static_root(config: Config, problems: Problems) -> None:
    for name, static in config.static.items():
        path: KeyPath = ("static", name, "root")
        if name in BUILTIN_STATIC:
            problems.error(("static", name), "name",
                           f"{name!r} is a built-in responder; choose another name")
        root = static.root
        if not os.path.isabs(root):
            problems.error(path, "static_root", f"root {root!r} must be an absolute path")
            continue
        if root != "/" and root.endswith("/"):
            problems.error(path, "static_root", f"write root {root!r} without a trailing '/'")
            continue
        real = os.path.realpath(root)
        if real != root:
            problems.error(path, "static_root",
                           f"root {root!r} is not canonical (it resolves to {real!r}); "
                           "write the resolved path")
            continue
        if real == "/" or any(real == t or real.startswith(t + "/") for t in SYSTEM_TREES):
            problems.error(path, "static_root",
                           f"root {root!r} exposes a system tree; serve a dedicated directory")
            continue
        if not os.path.isdir(real):
            problems.error(path, "static_root", f"root {root!r} is not an existing directory")
        for what, private in _private_paths(config):
            if _within(private, real) or _within(real, private):
                problems.error(path, "static_root",
                               f"root {root!r} would serve {what} ({private}); serve a "
                               "directory that holds only public files")
                break
        if static.index and ("/" in static.index or static.index in (".", "..")):
            problems.error(("static", name, "index"), "static_root",
                           "index is a plain file name")


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _private_paths(config: Config) -> list[tuple[str, str]]:
    """Files the gateway writes or keeps secret, as absolute canonical paths: a static
    root must neither contain them nor lie inside them (the workers can read them, so
    their file modes would not stop a static route from serving them)."""
    private: list[tuple[str, str]] = []
    log = config.log
    if log.dir:
        private.append(("the log directory", log.dir))
    for sink in (log.access, log.error, log.audit):
        if os.path.isabs(sink.path):
            private.append(("a log file", sink.path))
    tls = config.server.tls
    if tls.mode in ("self_signed", "lets_encrypt"):
        private.append(("the certificate directory", tls.cert_dir))
    if tls.mode == "manual" and tls.manual.key:
        private.append(("the TLS private key", tls.manual.key))
    if config.server.control_socket != "auto":
        private.append(("the control socket", config.server.control_socket))
    return [(what, os.path.realpath(os.path.abspath(path))) for what, path in private]


# -- listeners, TLS, profile ------------------------------------------------------------------


_METRICS_DEFAULTS = Metrics()


def _check_listeners(config: Config, problems: Problems) -> None:
    seen: dict[tuple[str, int], int] = {}
    for position, address in enumerate(config.server.listen):
        parsed = checks.split_host_port(address)
        if parsed is None:
            continue
        if parsed in seen:
            problems.error(("server", "listen", position), "listen",
                           f"{address!r} is listed twice")
        seen[parsed] = position
    if not config.server.listen:
        problems.error(("server", "listen"), "listen", "at least one listen address is needed")
    tls = config.server.tls
    public = [a for a in config.server.listen if not checks.is_loopback(a)]
    if public and tls.mode == "off":
        problems.error(("server", "listen"), "public_tls",
                       f"{public[0]!r} is a public listener and TLS is off; set "
                       "[server.tls] mode (manual, self_signed with dev = true, or "
                       "lets_encrypt) or listen on 127.0.0.1")
    if public and tls.mode == "self_signed" and not tls.self_signed.dev:
        problems.error(("server", "tls", "mode"), "self_signed_public",
                       "a self-signed certificate on a public listener needs "
                       "[server.tls.self_signed] dev = true (development only)")
    metrics = config.metrics
    if not metrics.enabled:
        # No metrics listener is bound: these would be accepted and ignored.
        for key in _set_keys(metrics, _METRICS_DEFAULTS, ("listen", "path",
                                                           "allow_non_loopback")):
            problems.error(("metrics", key), "metrics_listener",
                           f"{key} is set but [metrics] enabled = false; set enabled = "
                           "true or remove it")
    if metrics.enabled:
        if not checks.is_loopback(metrics.listen) and not metrics.allow_non_loopback:
            problems.error(("metrics", "listen"), "metrics_listener",
                           f"{metrics.listen!r} is not loopback; set allow_non_loopback = "
                           "true to expose metrics beyond this host")
        if any(checks.same_socket_address(metrics.listen, a) for a in config.server.listen):
            problems.error(("metrics", "listen"), "metrics_listener",
                           "the metrics listener must use a port of its own")


def _check_mode_settings(config: Config, problems: Problems) -> None:
    tls = config.server.tls
    sections: tuple[tuple[str, object, object], ...] = (
        ("manual", tls.manual, TlsManual()), ("self_signed", tls.self_signed, TlsSelfSigned()),
        ("lets_encrypt", tls.lets_encrypt, TlsLetsEncrypt()))
    for mode, section, unused in sections:
        if tls.mode == mode:
            continue
        for field in dataclasses.fields(unused):  # type: ignore[arg-type]
            if getattr(section, field.name) != getattr(unused, field.name):
                problems.error(("server", "tls", mode, field.name), "tls_mode_settings",
                               f"{mode}.{field.name} is set but mode = {tls.mode!r} does "
                               f"not use it; set mode = \"{mode}\" or remove "
                               f"[server.tls.{mode}]")


_TLS_MODE_KEYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("min_protocol", ("manual", "self_signed", "lets_encrypt")),
    ("session_tickets", ("manual", "self_signed", "lets_encrypt")),
    ("ticket_rotation", ("manual", "self_signed", "lets_encrypt")),
    ("cert_dir", ("self_signed", "lets_encrypt")),
)
"""[server.tls] keys read only under some modes: with another mode they would be
accepted and ignored (a ``min_protocol`` with TLS off protects nothing)."""


def _check_tls_keys(config: Config, problems: Problems) -> None:
    tls = config.server.tls
    defaults = Tls()
    for name, modes in _TLS_MODE_KEYS:
        if tls.mode not in modes and getattr(tls, name) != getattr(defaults, name):
            problems.error(("server", "tls", name), "tls_mode_settings",
                           f"{name} is set but mode = {tls.mode!r} does not use it (only "
                           f"{' or '.join(repr(m) for m in modes)} does); remove it")


def _check_lets_encrypt(config: Config, problems: Problems) -> None:
    tls = config.server.tls
    if tls.mode != "lets_encrypt":
        return
    le = tls.lets_encrypt
    base: KeyPath = ("server", "tls", "lets_encrypt")
    if not le.email:
        problems.error((*base, "email"), "lets_encrypt", "lets_encrypt needs an account email")
    if le.directory_url and le.environment is not None:
        problems.error((*base, "environment"), "lets_encrypt",
                       "environment picks a Let's Encrypt directory; with directory_url set "
                       "it must not be set")
    if not le.directory_url and le.environment is None:
        problems.error((*base, "environment"), "lets_encrypt",
                       "lets_encrypt needs environment = \"staging\" or \"production\" "
                       "(or a directory_url)")
    if le.ca_bundle and not (os.path.isfile(le.ca_bundle) and os.access(le.ca_bundle, os.R_OK)):
        problems.error((*base, "ca_bundle"), "acme_ca_bundle",
                       f"ca_bundle {le.ca_bundle!r} is not a readable file")
    if not le.domains:
        problems.error((*base, "domains"), "lets_encrypt", "lets_encrypt needs domains")
    _check_http01_port(config, problems)
    for position, domain in enumerate(le.domains):
        if _is_ip_address(domain):
            # The certificate request names DNS identifiers; the CA refuses an address
            # there, so every attempt would fail and the actor retry forever.
            problems.error((*base, "domains", position), "lets_encrypt",
                           f"domain {domain!r} is an IP address; lets_encrypt certificates "
                           "name DNS names only")
            continue
        if not any(r.match.host.kind != "any" and host_matches(r.match.host, domain)
                   for r in config.route):
            problems.error((*base, "domains", position), "lets_encrypt",
                           f"domain {domain!r} is not the host of any route; certificates "
                           "are only requested for names this gateway serves")


def _check_http01_port(config: Config, problems: Problems) -> None:
    """The challenge listener is bound beside the others at start: an address they hold
    would fail there ("cannot listen"), or be taken for the same socket when it is the
    very same address, so it is refused here, where the file is named."""
    bind = config.server.tls.lets_encrypt.http01_bind
    taken = [(address, "server.listen") for address in config.server.listen]
    if config.metrics.enabled:
        taken.append((config.metrics.listen, "the metrics listener"))
    for address, what in taken:
        if checks.same_socket_address(bind, address):
            port = address.rpartition(":")[2]
            problems.error(("server", "tls", "lets_encrypt", "http01_bind"), "acme_challenge_port",
                           f"http01_bind port {port} is also {what}'s ({address!r}); "
                           "the HTTP-01 listener cannot share it (give it another port, "
                           "usually 80, or another address)")
            return


def _is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return False
    return True


def _check_manual_cert(config: Config, problems: Problems) -> None:
    tls = config.server.tls
    if tls.mode != "manual":
        return
    base: KeyPath = ("server", "tls", "manual")
    for field in ("cert", "key"):
        path = getattr(tls.manual, field)
        if not path:
            problems.error((*base, field), "manual_cert", f"manual TLS needs {field} = \"...\"")
        elif not os.access(path, os.R_OK) or not os.path.isfile(path):
            problems.error((*base, field), "manual_cert", f"{path!r} is not a readable file")
    cert_path = tls.manual.cert
    if not cert_path or not os.access(cert_path, os.R_OK):
        return
    try:
        with open(cert_path, "rb") as handle:
            certificate = x509.load_pem_x509_certificate(handle.read())
    except (OSError, ValueError) as exc:
        problems.error((*base, "cert"), "manual_cert",
                       f"{cert_path!r} is not a PEM certificate ({exc})")
        return
    now = datetime.datetime.now(datetime.UTC)
    expires = certificate.not_valid_after_utc
    if expires <= now:
        problems.error((*base, "cert"), "manual_cert",
                       f"certificate {cert_path!r} expired at {expires.isoformat()}")
    elif certificate.not_valid_before_utc > now:
        problems.error((*base, "cert"), "manual_cert",
                       f"certificate {cert_path!r} is not valid before "
                       f"{certificate.not_valid_before_utc.isoformat()}")
    elif expires - now < datetime.timedelta(days=30):
        problems.warning((*base, "cert"), "manual_cert",
                         f"certificate {cert_path!r} expires at {expires.isoformat()}")


def _check_session_tickets(config: Config, problems: Problems) -> None:
    tls = config.server.tls
    if not tls.session_tickets and tls.ticket_rotation != Tls().ticket_rotation:
        problems.error(("server", "tls", "ticket_rotation"), "session_tickets",
                       "ticket_rotation is set but session_tickets = false (no tickets, "
                       "no keys to rotate); remove ticket_rotation")


def _check_client_auth(config: Config, problems: Problems) -> None:
    tls = config.server.tls
    base: KeyPath = ("server", "tls")
    if tls.client_auth == "off":
        if tls.client_ca:
            problems.error((*base, "client_ca"), "client_auth",
                           "client_ca is set but client_auth is off; set client_auth = "
                           "\"optional\" or \"required\", or remove client_ca")
        if tls.client_identity != Tls().client_identity:
            problems.error((*base, "client_identity"), "client_auth",
                           "client_identity is set but client_auth is off (no client "
                           "certificate is asked for); set client_auth = \"optional\" or "
                           "\"required\", or remove client_identity")
        return
    if tls.mode == "off":
        problems.error((*base, "client_auth"), "client_auth",
                       "client certificates need TLS; set [server.tls] mode")
    if not tls.client_ca:
        problems.error((*base, "client_auth"), "client_auth",
                       f"client_auth = {tls.client_auth!r} needs client_ca = \"...\" "
                       "(the CA certificates client certificates must chain to)")
        return
    path = tls.client_ca
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        problems.error((*base, "client_ca"), "client_ca", f"{path!r} is not a readable file")
        return
    try:
        with open(path, "rb") as handle:
            certificates = x509.load_pem_x509_certificates(handle.read())
    except (OSError, ValueError) as exc:
        problems.error((*base, "client_ca"), "client_ca",
                       f"{path!r} holds no PEM CA certificate ({exc})")
        return
    if not any(_is_ca(c) for c in certificates):
        problems.error((*base, "client_ca"), "client_ca",
                       f"{path!r} holds no CA certificate (basicConstraints CA:TRUE)")


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


def _check_profile(config: Config, problems: Problems) -> None:
    server = config.server
    rng = server.rng
    if rng.mode == "prng":
        if server.profile == "production" and not rng.allow_insecure_rng:
            problems.error(("server", "rng", "mode"), "rng_profile",
                           "rng.mode = \"prng\" makes secrets predictable; refused under the "
                           "production profile unless allow_insecure_rng = true")
        elif server.profile != "exploit":
            problems.warning(("server", "rng", "mode"), "rng_profile",
                             "rng.mode = \"prng\": generated secrets are predictable")
    defaults = Rng()
    for name, modes in (("seed", ("prng", "sim")), ("allow_insecure_rng", ("prng",)),
                        ("bad_pattern", ("bad",))):
        if rng.mode not in modes and getattr(rng, name) != getattr(defaults, name):
            problems.error(("server", "rng", name), "rng_profile",
                           f"{name} is set but rng.mode = {rng.mode!r} does not use it "
                           f"(only {' or '.join(repr(m) for m in modes)} does); remove it")
    if rng.mode == "bad" and server.profile != "exploit":
        problems.error(("server", "rng", "mode"), "rng_profile",
                       "rng.mode = \"bad\" exists for the exploit harness only "
                       "(profile = \"exploit\")")
    if server.expose_upstream_errors and server.profile == "production":
        problems.error(("server", "expose_upstream_errors"), "expose_upstream_errors",
                       "upstream error bodies can leak internals; refused under production")
    if is_public(config) and not config.log.audit.enabled:
        problems.error(("log", "audit", "enabled"), "audit_required",
                       "a public listener requires the audit log")
    censor = config.leak_censor
    if server.profile == "production" and not censor.enabled and not censor.ack_disable_censor:
        # Points at the profile line (or the censor switch) when the file writes one;
        # both may be defaults, and then there is no line to point at.
        problems.warning(("server", "profile"), "censor_disabled",
                         "the leak censor is off under production; enable it with "
                         "[leak_censor] enabled = true or set ack_disable_censor = true",
                         anchors=(("server", "profile"), ("leak_censor", "enabled")),
                         unwritten_note="no [server] profile is set, so the default "
                                        "\"production\" applies, and [leak_censor] enabled "
                                        "defaults to false")


# -- policy sections ----------------------------------------------------------------------


def _policy_sections(config: Config) -> list[tuple[KeyPath, Route | None]]:
    """Each distinct policy owner: [defaults] once, then routes with their own sections."""
    return [(("defaults",), None), *((("route", i), r) for i, r in enumerate(config.route))]


def _own(route: Route | None, config: Config, name: str) -> object:
    """The route's own section, or None when it equals [defaults] (checked there once)."""
    if route is None:
        return _section(config.defaults, name)
    value = _section(route, name)
    return None if value == _section(config.defaults, name) else value


def _section(owner: object, name: str) -> object:
    node = owner
    for part in name.split("."):
        node = getattr(node, part)
    return node


def _check_rate_limits(config: Config, problems: Problems) -> None:
    public = is_public(config)
    for base, route in _policy_sections(config):
        limit = _own(route, config, "rate_limit")
        if isinstance(limit, RateLimit) and limit.key == "ip" and not limit.allow_ip_key:
            problems.error((*base, "rate_limit", "key"), "ip_key",
                           "key = \"ip\" merges every client behind one address; set "
                           "allow_ip_key = true to accept that")
        if isinstance(limit, RateLimit) and limit.allow_ip_key and limit.key != "ip":
            problems.error((*base, "rate_limit", "allow_ip_key"), "ip_key",
                           f"allow_ip_key is set but key = {limit.key!r}; it only permits "
                           "key = \"ip\", remove it")
        if isinstance(limit, RateLimit) and limit.key == "client_cert" \
                and config.server.tls.client_auth == "off":
            problems.error((*base, "rate_limit", "key"), "client_cert_key",
                           "key = \"client_cert\" needs client certificates; set "
                           "[server.tls] client_auth and client_ca")
        exempt = route is not None and route.static in RATE_LIMIT_EXEMPT \
            and route.proxy is None
        if route is not None and public and route.rate_limit is None and not exempt:
            problems.error(base, "public_rate_limit",
                           f"route {route.name!r} is on a public listener and has no rate "
                           "limit; add [route.rate_limit] or [defaults.rate_limit]")


def _check_timeouts(config: Config, problems: Problems) -> None:
    for base, route in _policy_sections(config):
        timers = _own(route, config, "timeouts")
        if not isinstance(timers, RouteTimeouts):
            continue
        beat, idle = timers.heartbeat_interval, timers.stream_idle_timeout
        inherited = config.defaults.timeouts
        if route is not None and (beat, idle) == (inherited.heartbeat_interval,
                                                  inherited.stream_idle_timeout):
            continue  # both from [defaults.timeouts]: reported there once
        if beat and beat >= idle:
            # Either key may be the one inherited from [defaults.timeouts]: point at the
            # one this section writes.
            own = (*base, "timeouts")
            problems.error((*own, "heartbeat_interval"), "heartbeat",
                           f"heartbeat_interval ({format_duration(beat)}) must be shorter "
                           f"than stream_idle_timeout ({format_duration(idle)}), or 0 to "
                           "send no heartbeats",
                           anchors=((*own, "heartbeat_interval"),
                                    (*own, "stream_idle_timeout"),
                                    ("defaults", "timeouts", "heartbeat_interval"),
                                    ("defaults", "timeouts", "stream_idle_timeout")))
        if timers.early_stream_head and not beat and (
                route is None or (timers.early_stream_head, beat) != (
                    inherited.early_stream_head, inherited.heartbeat_interval)):
            own = (*base, "timeouts")
            problems.error((*own, "early_stream_head"), "early_stream_head",
                           "early_stream_head commits a stream before the upstream answers "
                           "and needs heartbeat_interval > 0 to keep it alive",
                           anchors=((*own, "early_stream_head"),
                                    ("defaults", "timeouts", "early_stream_head")))


def _check_header_policies(config: Config, problems: Problems) -> None:
    for base, route in _policy_sections(config):
        ingress = _own(route, config, "headers.ingress")
        if ingress is None:
            continue
        allow = getattr(ingress, "allow", ())
        for position, name in enumerate(getattr(ingress, "require", ())):
            if name not in allow:
                problems.error((*base, "headers", "ingress", "require", position),
                               "header_policy",
                               f"required header {name!r} is not in ingress.allow")


_KEY_DEFAULTS = ApiKey(id="-")


def _check_auth(config: Config, problems: Problems) -> None:
    ids: set[str] = set()
    hashes: set[str] = set()
    clients: set[str] = set()
    for position, key in enumerate(config.auth.keys):
        where: KeyPath = ("auth", "keys", position)
        if key.id in ids:
            problems.error(where, "auth", f"key id {key.id!r} repeats")
        ids.add(key.id)
        if bool(key.sha256) == bool(key.client_cert):
            problems.error(where, "auth", f"key {key.id!r}: set exactly one of sha256 (an "
                           "API key) and client_cert (a client certificate identity)")
        if key.sha256 in hashes:
            problems.error(where, "auth", "the same key hash repeats")
        if key.client_cert in clients:
            problems.error(where, "auth", f"client_cert {key.client_cert!r} repeats")
        if not key.usd_budget and key.budget_window != _KEY_DEFAULTS.budget_window:
            problems.error((*where, "budget_window"), "auth",
                           f"key {key.id!r}: budget_window is set but usd_budget = 0 (no "
                           "dollar budget to count); set usd_budget or remove it")
        if key.sha256:
            hashes.add(key.sha256)
        if key.client_cert:
            clients.add(key.client_cert)
    if clients and config.server.tls.client_auth == "off":
        problems.error(("auth", "keys"), "client_auth",
                       "[auth] keys name client certificates (client_cert) but "
                       "[server.tls] client_auth is off: no client would ever present one")
    if config.defaults.accept_x_api_key and not hashes:
        problems.error(("defaults", "accept_x_api_key"), "auth",
                       "accept_x_api_key is set but [auth] declares no API keys (sha256): "
                       "there is no key to take from x-api-key; remove it")
    for index, route in enumerate(config.route):
        if route.accept_x_api_key and not config.defaults.accept_x_api_key and (
                not hashes or route.auth == "client_cert"):
            problems.error(_route_path(index, "accept_x_api_key"), "auth",
                           f"accept_x_api_key is set but route {route.name!r} "
                           + ("has auth = \"client_cert\" (no API key is read)"
                              if hashes else "has no [auth] API key (sha256) to read")
                           + "; remove it")
        if route.auth == "api_key" and not hashes:
            problems.error(_route_path(index, "auth"), "auth",
                           "auth = \"api_key\" but [auth] declares no keys (sha256): "
                           "nobody could ever call this route")
        if route.auth == "client_cert" and not clients:
            problems.error(_route_path(index, "auth"), "auth",
                           "auth = \"client_cert\" but no [auth] key names a client_cert: "
                           "nobody could ever call this route")


_CENSOR_DEFAULTS = RouteCensor()


def _check_censor(config: Config, problems: Problems) -> None:
    for base, route in _policy_sections(config):
        censor = _own(route, config, "leak_censor")
        if isinstance(censor, RouteCensor) and not censor.enabled:
            # A section that is off scrubs nothing, and a route's own section starts from
            # the schema defaults (not from [defaults]), so its scrubbing settings would
            # be accepted and ignored; deny_headers still applies (header policy).
            for key in _set_keys(censor, _CENSOR_DEFAULTS):
                if key not in ("enabled", "deny_headers"):
                    problems.error((*base, "leak_censor", key), "censor_off",
                                   f"leak_censor.{key} is set but this section's enabled "
                                   "= false (nothing is scrubbed here); remove it or set "
                                   "enabled = true")
        if isinstance(censor, RouteCensor) and censor.include_generated \
                and not config.leak_censor.generated_file:
            problems.error((*base, "leak_censor", "include_generated"), "censor_generated",
                           "include_generated needs [leak_censor] generated_file")
    if config.leak_censor.generated_file and config.route \
            and not any(route.leak_censor.include_generated for route in config.route):
        problems.error(("leak_censor", "generated_file"), "censor_generated",
                       "generated_file is set but no route includes it: set "
                       "include_generated = true in [defaults.leak_censor] or a route's "
                       "[route.leak_censor]")


def _check_state(config: Config, problems: Problems) -> None:
    state = config.state
    base: KeyPath = ("state",)
    if state.backend == "local":
        # Every Redis setting, not only the connection: a timeout or a failure policy
        # given with the local backend would be accepted and silently ignored.
        defaults = State()
        for name in (field.name for field in dataclasses.fields(State)):
            if name != "backend" and getattr(state, name) != getattr(defaults, name):
                problems.error((*base, name), "state",
                               f"{name} is set but backend = \"local\"; set backend = "
                               "\"redis\" or remove it")
        return
    if not state.url:
        problems.error((*base, "backend"), "state",
                       "backend = \"redis\" needs url = \"redis://HOST:PORT\"")
        return
    if state.ca_file:
        if not state.url.startswith("rediss://"):
            problems.error((*base, "ca_file"), "state",
                           "ca_file needs a rediss:// (TLS) url")
        elif not os.path.isfile(state.ca_file) or not os.access(state.ca_file, os.R_OK):
            problems.error((*base, "ca_file"), "state",
                           f"{state.ca_file!r} is not a readable file")
    if state.password_file and state.password_env:
        problems.error((*base, "password_env"), "state",
                       "set password_file or password_env, not both")
    elif state.password_file and (not os.path.isfile(state.password_file)
                                  or not os.access(state.password_file, os.R_OK)):
        problems.error((*base, "password_file"), "state",
                       f"{state.password_file!r} is not a readable file")
    elif state.password_env and state.password_env not in os.environ:
        problems.error((*base, "password_env"), "state",
                       f"environment variable {state.password_env} is not set")


# What each rule reads, as key paths of the canonical config. Routes also depend on
# what desugaring filled into them: server.host (their default host) and auth.keys
# (their default auth).
_ROUTES: tuple[KeyPath, ...] = (("route",), ("server", "host"), ("auth", "keys"))
_LISTEN: KeyPath = ("server", "listen")
_TLS: KeyPath = ("server", "tls")
_DEFAULTS: KeyPath = ("defaults",)
# [log] dir is filled from the profile when the file does not set it.
_LOG: tuple[KeyPath, ...] = (("log",), ("server", "profile"))

_CHECKS: tuple[tuple[Callable[[Config, Problems], None], tuple[KeyPath, ...]], ...] = (
    (_check_has_routes, _ROUTES),
    (_check_targets, (*_ROUTES, ("upstreams",), ("static",))),
    (_check_fallbacks, (*_ROUTES, ("upstreams",))),
    (_check_queues, _ROUTES),
    (_check_proxy_only, (*_ROUTES, _DEFAULTS)),
    (_check_models, (*_ROUTES, ("upstreams",), ("models",), ("auth",))),
    (_check_names_and_priorities, _ROUTES),
    (_check_matches, (*_ROUTES, _LISTEN)),
    (_check_shadowing, _ROUTES),
    (_check_acme_reserved, (*_ROUTES, _TLS)),
    (_check_upstreams, (("upstreams",),)),
    (_check_static_root, (("static",), *_LOG, _TLS, ("server", "control_socket"))),
    (_check_listeners, (_LISTEN, _TLS, ("metrics",))),
    (_check_mode_settings, (_TLS,)),
    (_check_tls_keys, (_TLS,)),
    (_check_lets_encrypt, (*_ROUTES, _TLS)),
    (_check_manual_cert, (_TLS,)),
    (_check_client_auth, (_TLS,)),
    (_check_session_tickets, (_TLS,)),
    (_check_profile, (("server",), *_LOG, ("leak_censor",))),
    (_check_rate_limits, (*_ROUTES, _DEFAULTS, _LISTEN, _TLS)),
    (_check_timeouts, (*_ROUTES, _DEFAULTS)),
    (_check_header_policies, (*_ROUTES, _DEFAULTS)),
    (_check_auth, (*_ROUTES, ("auth",), _TLS)),
    (_check_censor, (*_ROUTES, _DEFAULTS, ("leak_censor",))),
    (_check_state, (("state",),)),
)
