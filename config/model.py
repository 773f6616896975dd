"""The canonical config model: frozen dataclasses, one per TOML section.

Every field declares its documentation, default, bounds (the schema ceiling a user may
only tighten below) and checks with :func:`~.schema.setting`. This module is the single
source of truth for the config schema: the decoder, ``explain-config`` and
docs/configuration.md are all derived from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from . import checks
from .schema import setting
from .units import Millis, Size

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

Profile = Literal["production", "dev", "exploit"]
TlsMode = Literal["off", "manual", "self_signed", "lets_encrypt"]
RngMode = Literal["os", "prng", "sim", "bad"]
Balance = Literal["round_robin", "least_conn"]
LimitKey = Literal["api_key", "agent_id", "ip", "client_cert"]
ClientAuth = Literal["off", "optional", "required"]
ClientIdentity = Literal["subject_cn", "san_dns", "san_uri", "san_email", "fingerprint"]
AuthMode = Literal["api_key", "client_cert", "none"]
OnDetect = Literal["redact", "block_502", "abort_stream"]
OversizeJson = Literal["stream", "block", "pass"]
LogLevel = Literal["trace", "debug", "info", "warn", "error"]
LogFormat = Literal["human", "json"]
HostKind = Literal["any", "exact", "suffix"]
PathKind = Literal["exact", "prefix", "prefix_strip", "glob_one", "glob_rest"]
StateBackend = Literal["local", "redis"]
OnBackendError = Literal["local", "allow", "deny"]


def _empty_map() -> Mapping[str, str]:
    return MappingProxyType({})


# -- [server] -------------------------------------------------------------------------------


HEALTH_FAILURES = ("connect", "reset", "malformed", "5xx", "ttfb_timeout")
"""What can count against a peer's passive health (``[upstreams.NAME] health_failures``)."""
HEALTH_FAILURE_DEFAULT = ("connect", "reset", "malformed", "5xx")
FALLBACK_TRIGGERS = ("connect", "reset", "status", "ttfb_timeout")
"""What `[route.fallback] on` may name (workers.retry.FallbackTrigger)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsManual:
    cert: str = setting("", doc="PEM certificate chain file (leaf first).")
    key: str = setting("", doc="PEM private key file for `cert`.")


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSelfSigned:
    dev: bool = setting(False, doc="Required to use a self-signed certificate on a "
                                   "non-loopback listener (development only).")
    valid_days: int = setting(90, doc="Validity of the generated certificate.",
                              minimum=1, maximum=365)


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsLetsEncrypt:
    email: str = setting("", doc="ACME account contact; required.", check=checks.email,
                         check_rule="lets_encrypt")
    domains: tuple[str, ...] = setting((), doc="Certificate names; each must be the host "
                                               "of some route.",
                                       check=checks.each(checks.host_value),
                                       check_rule="lets_encrypt")
    environment: Literal["staging", "production"] | None = setting(
        None, doc="Let's Encrypt environment: `staging` or `production`; required unless "
                  "`directory_url` is set (then it must not be).")
    directory_url: str = setting("", doc="ACME directory of another CA (a private ACME "
                                 "server, or pebble for tests), an https:// URL; \"\" = "
                                 "Let's Encrypt's, chosen by `environment`.",
                                 check=checks.acme_directory_url, check_rule="acme_directory")
    ca_bundle: str = setting("", doc="PEM file of the CA certificates that verify the ACME "
                             "server's HTTPS; \"\" = the system store.")
    while_missing: Literal["wait", "self_signed"] = setting(
        "wait", doc="Before the first certificate is issued: `wait` (TLS handshakes are "
                    "refused until it arrives) or `self_signed` (a temporary self-signed "
                    "certificate is served).")
    renew_before: Millis = setting(Millis(30 * DAY), doc="Renew when less time than this "
                                   "is left on the certificate.",
                                   minimum=DAY, maximum=60 * DAY)
    http01_bind: str = setting("0.0.0.0:80", doc="Listener for the HTTP-01 challenge.",
                               check=checks.listen_address, check_rule="listen")


@dataclass(frozen=True, slots=True, kw_only=True)
class Tls:
    mode: TlsMode = setting("off", doc="`off` (loopback listeners only), `manual`, "
                                       "`self_signed` or `lets_encrypt`.")
    min_protocol: Literal["1.2", "1.3"] = setting("1.3", doc="Lowest TLS version accepted.")
    cert_dir: str = setting("/var/lib/li-httpd/certs", doc="Directory (created 0700) for "
                            "generated and ACME certificates.")
    manual: TlsManual = setting(doc="Used when mode = manual.", factory=TlsManual)
    self_signed: TlsSelfSigned = setting(doc="Used when mode = self_signed.",
                                         factory=TlsSelfSigned)
    lets_encrypt: TlsLetsEncrypt = setting(doc="Used when mode = lets_encrypt.",
                                           factory=TlsLetsEncrypt)
    client_auth: ClientAuth = setting("off", doc="Client certificates (mTLS): `off`, "
                                      "`optional` (a client without one is served; one "
                                      "that presents an untrusted or expired certificate "
                                      "fails the handshake) or `required`. Needs "
                                      "`client_ca`.")
    client_ca: str = setting("", doc="PEM file of the CA certificates that client "
                             "certificates must chain to; set exactly when `client_auth` "
                             "is not `off`.")
    client_identity: ClientIdentity = setting("subject_cn", doc="What names a verified "
                                              "client: `subject_cn`, the first `san_dns`, "
                                              "`san_uri` or `san_email` entry, or "
                                              "`fingerprint` (SHA-256 of the certificate). "
                                              "No fallback: a certificate without that "
                                              "field has no identity.")
    session_tickets: bool = setting(True, doc="TLS session resumption with tickets (a "
                                    "returning client skips the full handshake). The "
                                    "ticket keys are made with each worker generation and "
                                    "shared by its workers; `false` issues no tickets.")
    ticket_rotation: Millis = setting(Millis(12 * HOUR), doc="How often new ticket keys "
                                      "are made (a new worker generation with the same "
                                      "config; the old one drains): a stolen key decrypts "
                                      "at most this much traffic. Only with "
                                      "`session_tickets`.", minimum=HOUR, maximum=7 * DAY)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rng:
    mode: RngMode = setting("os", doc="`os` (the kernel CSPRNG), `prng` (seeded, "
                                      "reproducible), `sim` (test schedules), `bad` "
                                      "(exploit profile only).")
    seed: int = setting(0, doc="Seed for `prng` and `sim`.", minimum=0, maximum=2**63 - 1)
    allow_insecure_rng: bool = setting(False, doc="Allow `prng` under the production "
                                                  "profile (predictable secrets).")
    bad_pattern: Literal["constant", "repeat", "short_cycle", "partial_fill"] = setting(
        "constant", doc="Failure pattern for mode = bad.")


@dataclass(frozen=True, slots=True, kw_only=True)
class Server:
    listen: tuple[str, ...] = setting(("127.0.0.1:8080",),
                                      doc="Listen addresses (IP:PORT, [IPv6]:PORT, :PORT). "
                                          "A non-loopback address is public and needs TLS.",
                                      check=checks.each(checks.listen_address),
                                      check_rule="listen")
    host: str | None = setting(None, doc="Default Host for routes that do not name one; "
                                         "unset = any host.",
                               check=checks.host_value, check_rule="host")
    profile: Profile = setting("production", doc="`production` (strict), `dev` or "
                                                 "`exploit` (test harness only).")
    workers: int | Literal["auto"] = setting("auto", doc="Worker processes; `auto` = "
                                             "number of CPU cores.", minimum=1, maximum=64)
    shutdown_timeout: Millis = setting(Millis(30 * SECOND), doc="Graceful stop: how long "
                                       "in-flight requests and streams may take to finish.",
                                       minimum=0, maximum=HOUR)
    control_socket: str = setting("auto", doc="Unix socket for `li-httpd ctl`; `auto` = "
                                  "`control.sock` in `$RUNTIME_DIRECTORY` under systemd, "
                                  "`/run/li-httpd` as root, else `$XDG_RUNTIME_DIR/li-httpd` "
                                  "or `<tmp>/li-httpd-<uid>`.")
    expose_upstream_errors: bool = setting(False, doc="Pass upstream 4xx/5xx bodies through "
                                           "unchanged; false answers the gateway's JSON "
                                           "error with the same status (Retry-After "
                                           "kept). Default true under `dev`; refused "
                                           "under production.")
    tls: Tls = setting(doc="TLS termination.", factory=Tls)
    rng: Rng = setting(doc="Randomness source.", factory=Rng)


# -- [limits] -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    max_body: Size = setting(Size(1 * MiB), doc="Largest request body (413 above).",
                             minimum=0, maximum=256 * MiB)
    max_request_line: Size = setting(Size(8 * KiB), doc="Longest request line (414 above).",
                                     minimum=256, maximum=64 * KiB)
    max_header_bytes: Size = setting(Size(32 * KiB), doc="Largest header block "
                                     "(431 above).", minimum=1 * KiB, maximum=256 * KiB)
    max_headers: int = setting(100, doc="Most header fields in a request (431 above).",
                               minimum=8, maximum=500)
    max_chunk_extension: Size = setting(Size(256), doc="Longest chunk extension in a "
                                        "chunked body (400 above).", minimum=0, maximum=4 * KiB)
    header_timeout: Millis = setting(Millis(10 * SECOND), doc="Time to receive a whole "
                                     "request head (408 after).",
                                     minimum=100, maximum=2 * MINUTE)
    body_timeout: Millis = setting(Millis(30 * SECOND), doc="Longest pause between body "
                                   "reads (408 after).", minimum=100, maximum=10 * MINUTE)
    keepalive_timeout: Millis = setting(Millis(60 * SECOND), doc="Idle time before a "
                                        "keep-alive connection is closed.",
                                        minimum=0, maximum=10 * MINUTE)
    keepalive_requests: int = setting(1000, doc="Requests served on one connection before "
                                      "it is closed.", minimum=1, maximum=1_000_000)
    send_timeout: Millis = setting(Millis(60 * SECOND), doc="Longest time a client may "
                                   "leave a response write blocked.",
                                   minimum=100, maximum=10 * MINUTE)
    max_connections: int = setting(4096, doc="Client connections per worker; further "
                                   "connections wait in the listen backlog.",
                                   minimum=1, maximum=65536)
    max_rate_keys: int = setting(65536, doc="Rate-limit keys tracked at once (shared "
                                 "memory is sized from this).", minimum=16, maximum=1 << 20)


# -- [state] ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class State:
    backend: StateBackend = setting("local", doc="Where per-key limits live: `local` = "
                                    "this host's shared memory (exact across its "
                                    "workers); `redis` = a Redis or Valkey server shared "
                                    "by several gateway instances.")
    url: str = setting("", doc="With backend = redis: `redis://HOST:PORT[/DB]` or "
                       "`rediss://...` (TLS), optionally with a user name "
                       "(`redis://USER@HOST:PORT`); never a password (see password_file, "
                       "password_env).", check=checks.redis_url, check_rule="state_url")
    ca_file: str = setting("", doc="rediss:// only: CA certificates (PEM) the server's "
                           "certificate must chain to; empty = the system store.")
    password_file: str = setting("", doc="File whose content (trailing newline removed) "
                                 "is the Redis password.")
    password_env: str = setting("", doc="Environment variable holding the Redis password.")
    key_prefix: str = setting("li-httpd:", doc="Prefix of every Redis key the gateway "
                              "writes (several deployments may share one server).",
                              check=checks.redis_key_prefix, check_rule="state")
    timeout: Millis = setting(Millis(50), doc="Longest a request waits for one Redis "
                              "decision (connect included); past it the decision follows "
                              "on_backend_error.", minimum=1, maximum=SECOND)
    retry_after: Millis = setting(Millis(1 * SECOND), doc="After a failed call, how long "
                                  "the backend counts as down (no call is made) before "
                                  "one request probes it again.", minimum=100,
                                  maximum=MINUTE)
    pool_size: int = setting(4, doc="Redis connections per worker; requests take them "
                             "in turn, and concurrent ones share a connection "
                             "(pipelined).", minimum=1, maximum=64)
    lease_time: Millis = setting(Millis(30 * SECOND), doc="A stream slot held in Redis "
                                 "expires this long after its holder last renewed it "
                                 "(holders renew every third of it), so a host that dies "
                                 "frees its slots within it.", minimum=3 * SECOND,
                                 maximum=10 * MINUTE)
    on_backend_error: OnBackendError = setting("local", doc="When Redis fails or is down: "
                                               "`local` (this host's shared memory: limits "
                                               "become per host), `allow` (admit) or `deny` "
                                               "(503). The default for every kind below.")
    limits_on_error: OnBackendError | None = setting(None, doc="on_backend_error for rate "
                                                     "limits and stream caps; unset = "
                                                     "on_backend_error.")
    budgets_on_error: OnBackendError | None = setting(None, doc="on_backend_error for API "
                                                      "keys' token and dollar budgets; "
                                                      "unset = on_backend_error.")


# -- [upstreams.NAME] ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Peer:
    url: str = setting(doc="Literal origin http(s)://host:port.", check=checks.peer_url,
                       check_rule="peer_url")
    weight: int = setting(1, doc="Share of traffic relative to the other peers.",
                          minimum=1, maximum=100)
    max_concurrent: int | None = setting(None, doc="Requests in flight to this peer at "
                                         "once, counted across all workers; 0 = no cap. "
                                         "Unset: the pool's `max_concurrent`.",
                                         minimum=0, maximum=100_000)


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheck:
    ready: str = setting(doc="Path probed on each peer (origin-form, e.g. `/ready` or "
                         "`/health`): a success means the peer can serve now (its model "
                         "is loaded). Only ready peers get traffic.",
                         check=checks.probe_path, check_rule="health_check")
    live: str = setting("", doc="Path probed to tell a peer whose process is up but not "
                        "ready (e.g. `/live`), shown in status and metrics only; \"\" = "
                        "not probed.", check=checks.probe_path_or_empty,
                        check_rule="health_check")
    interval: Millis = setting(Millis(5 * SECOND), doc="Time between two probes of a "
                               "peer.", minimum=100, maximum=10 * MINUTE)
    timeout: Millis = setting(Millis(2 * SECOND), doc="Longest a probe may take (connect "
                              "to status line); must be shorter than `interval`.",
                              minimum=10, maximum=MINUTE)
    rise: int = setting(2, doc="Consecutive successful `ready` probes that make a "
                        "not-ready peer ready again.", minimum=1, maximum=100)
    fall: int = setting(2, doc="Consecutive failed `ready` probes that take a ready peer "
                        "out of rotation.", minimum=1, maximum=100)
    success_statuses: tuple[int, ...] = setting((), doc="Statuses that count as a "
                                                "success; [] = any 2xx.",
                                                check=checks.each(
                                                    lambda s: None if 100 <= s <= 599 else
                                                    f"{s} is not an HTTP status"))


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreaker:
    enabled: bool = setting(True, doc="Stop sending traffic to a peer whose recent "
                            "requests mostly fail, counted across all workers.")
    window: Millis = setting(Millis(10 * SECOND), doc="Sliding window over which the error "
                             "rate is counted.", minimum=SECOND, maximum=10 * MINUTE)
    min_requests: int = setting(10, doc="Results within `window` needed before the error "
                                "rate can open the circuit.", minimum=1, maximum=100_000)
    error_percent: int = setting(50, doc="Error rate (percent of the results in `window`) "
                                 "at or above which the circuit opens.", minimum=1,
                                 maximum=100)
    open_duration: Millis = setting(Millis(15 * SECOND), doc="How long an open circuit "
                                    "sends the peer nothing before probing it again "
                                    "(half-open).", minimum=SECOND, maximum=HOUR)
    half_open_probes: int = setting(1, doc="Requests let through at once, across all "
                                    "workers, while half-open; one success closes the "
                                    "circuit, one failure opens it again.", minimum=1,
                                    maximum=100)
    probe_timeout: Millis = setting(Millis(30 * SECOND), doc="A half-open probe that has "
                                    "no response head after this long frees its place "
                                    "for another probe.", minimum=SECOND, maximum=HOUR)
    failures: tuple[str, ...] = setting(
        HEALTH_FAILURE_DEFAULT, doc="Results that count as errors: `connect`, `reset`, "
        "`malformed` (as in `health_failures`), `5xx` (any 500-599 status the peer "
        "answered), `ttfb_timeout` (off by default: a slow model is not a dead one). Every "
        "other response is a success (4xx and 429 included).",
        check=checks.each(lambda kind: None if kind in HEALTH_FAILURES else
                           f"{kind!r} is not one of {', '.join(HEALTH_FAILURES)}"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Upstream:
    peers: tuple[Peer, ...] = setting(doc="1 to 32 peers. Easy form: a list of URL strings.",
                                      style="inline")
    balance: Balance = setting("round_robin", doc="`round_robin` or `least_conn` "
                               "(counted across all workers).")
    max_concurrent: int = setting(0, doc="Default per-peer cap on requests in flight, "
                                  "counted across all workers (a peer's own "
                                  "`max_concurrent` overrides it); 0 = no cap. When every "
                                  "usable peer is at its cap the gateway answers "
                                  "`saturated_status` itself, without contacting a peer.",
                                  minimum=0, maximum=100_000)
    saturated_status: Literal[429, 503] = setting(503, doc="The status of the gateway's "
                                                  "answer when every usable peer is at its "
                                                  "`max_concurrent` cap: 503 or 429 (with "
                                                  "`Retry-After: 1`).")
    max_fails: int = setting(3, doc="Failures within `fail_timeout` that mark a peer down "
                             "(0 = never).", minimum=0, maximum=100)
    fail_timeout: Millis = setting(Millis(10 * SECOND), doc="Failure window, and how long "
                                   "a failed peer is skipped.", minimum=SECOND, maximum=HOUR)
    connect_timeout: Millis = setting(Millis(5 * SECOND), doc="TCP connect timeout.",
                                      minimum=10, maximum=MINUTE)
    read_timeout: Millis = setting(Millis(5 * MINUTE), doc="Longest gap between two "
                                   "reads of a response body with a Content-Length (a "
                                   "route's [route.timeouts] govern the response head and "
                                   "streamed bodies).", minimum=100, maximum=HOUR)
    keepalive: int = setting(32, doc="Idle keep-alive connections kept per peer per "
                             "worker.", minimum=0, maximum=1024)
    keepalive_timeout: Millis = setting(Millis(60 * SECOND), doc="Idle time before a "
                                        "pooled connection is closed.",
                                        minimum=SECOND, maximum=10 * MINUTE)
    max_retries: int = setting(1, doc="Further peers tried after a failure, when replay "
                               "is safe.", minimum=0, maximum=5)
    ca_file: str = setting("", doc="PEM CA bundle that verifies https peers; \"\" = the "
                           "system trust store.")
    retry_statuses: tuple[int, ...] = setting((502, 503, 504), doc="Upstream statuses that "
                                              "count as failures and may be retried.",
                                              check=checks.each(
                                                  lambda s: None if 500 <= s <= 599 else
                                                  f"{s} is not a 5xx status"))
    health_failures: tuple[str, ...] = setting(
        HEALTH_FAILURE_DEFAULT, doc="Failures that count toward `max_fails`: `connect` "
        "(refused, unreachable, connect timeout, TLS), `reset` (the connection failed "
        "before a response), `malformed` (an invalid response), `5xx` (a status in "
        "`retry_statuses`), `ttfb_timeout` (no response head within the route's first-byte "
        "timeout). Off by default: a slow model is not a dead one.",
        check=checks.each(lambda kind: None if kind in HEALTH_FAILURES else
                           f"{kind!r} is not one of {', '.join(HEALTH_FAILURES)}"))
    health_check: HealthCheck | None = setting(None, doc="Active health: probe every "
                                               "peer's `ready` path and send traffic only "
                                               "to ready peers; unset = every peer counts "
                                               "as ready.")
    circuit_breaker: CircuitBreaker = setting(doc="Per-peer circuit breaker (on by "
                                              "default).", factory=CircuitBreaker)


# -- [models."NAME"] ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelPrice:
    input: float = setting(0.0, doc="USD per million input tokens (those not read from the "
                           "provider's prompt cache).", minimum=0, maximum=100_000)
    output: float = setting(0.0, doc="USD per million output tokens.", minimum=0,
                            maximum=100_000)
    cache_read: float = setting(0.0, doc="USD per million input tokens read from the "
                                "prompt cache.", minimum=0, maximum=100_000)
    cache_write: float = setting(0.0, doc="USD per million input tokens written to the "
                                 "prompt cache.", minimum=0, maximum=100_000)


@dataclass(frozen=True, slots=True, kw_only=True)
class Model:
    pool: str = setting(doc="Upstream pool that serves this model: a route with "
                        "`model_routing = true` sends the model's requests there.")
    owned_by: str = setting("li-httpd", doc="`owned_by` of the model in `GET /v1/models`.",
                            check=checks.model_name, check_rule="model")
    price: ModelPrice = setting(doc="Prices (USD per million tokens) for the cost in audit "
                                "records, metrics and dollar budgets.", factory=ModelPrice,
                                style="inline")
    default_max_tokens: int = setting(4096, doc="Output tokens a budget reserves for a "
                                      "request of this model that sets no `max_tokens`, "
                                      "`max_completion_tokens` or `max_output_tokens`.",
                                      minimum=1, maximum=10_000_000)


# -- [static.NAME] ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StaticRoot:
    root: str = setting(doc="Absolute, canonical, existing directory (not / nor a "
                            "system tree).")
    index: str = setting("index.html", doc="File served for a directory path; \"\" = none "
                         "(there is never a directory listing).")


# -- [auth] -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKey:
    id: str = setting(doc="Key id shown in logs and metrics.", check=checks.identifier,
                      check_rule="auth")
    sha256: str = setting("", doc="SHA-256 of the raw key, hex (`li-httpd hash-key`). Set "
                          "exactly one of `sha256` and `client_cert`.",
                          check=checks.sha256_hex_or_empty, check_rule="auth")
    client_cert: str = setting("", doc="Instead of an API key: the identity of a verified "
                               "client certificate, as `[server.tls] client_identity` "
                               "computes it (e.g. the subject CN, a SAN URI, or "
                               "`sha256:<hex>` for `fingerprint`). Used by routes with "
                               "`auth = \"client_cert\"`.",
                               check=checks.client_cert_identity, check_rule="auth")
    models: tuple[str, ...] = setting((), doc="Models (`[models]` names) this key may use; "
                                      "[] = every model. Another model: 403.")
    tokens_per_minute: int = setting(0, doc="Token budget (input + output) per minute, "
                                     "reserved before each call; 0 = none.", minimum=0,
                                     maximum=1_000_000_000)
    usd_budget: float = setting(0.0, doc="Dollar budget per `budget_window` (priced from "
                                "`[models]`), reserved before each call; 0 = none.",
                                minimum=0, maximum=1_000_000_000)
    budget_window: Millis = setting(Millis(DAY), doc="The dollar budget's window (fixed "
                                    "windows from the Unix epoch).", minimum=MINUTE,
                                    maximum=31 * DAY)


@dataclass(frozen=True, slots=True, kw_only=True)
class Auth:
    keys: tuple[ApiKey, ...] = setting((), doc="Accepted API keys (`Authorization: Bearer`; "
                                       "only hashes are stored) and client certificates "
                                       "(`client_cert`), each with its own limits.",
                                       style="inline")


# -- [log] --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSink:
    enabled: bool = setting(True, doc="Write this sink.")
    path: str = setting(doc="File name under `log.dir` (or an absolute path).")
    level: LogLevel = setting("info", doc="Lowest level written.")
    format: LogFormat = setting("human", doc="`human` lines or `json` lines.")


def _access_sink() -> LogSink:
    return LogSink(path="access.log")


def _error_sink() -> LogSink:
    return LogSink(path="error.log", level="warn")


def _audit_sink() -> LogSink:
    return LogSink(path="audit.jsonl", format="json")


@dataclass(frozen=True, slots=True, kw_only=True)
class StderrSink:
    enabled: bool = setting(True, doc="Write human lines to stderr.")
    level: LogLevel = setting("info", doc="Lowest level written.")
    color: Literal["auto", "always", "never"] = setting("auto", doc="Colour; `auto` = only "
                                                        "on a terminal.")


@dataclass(frozen=True, slots=True, kw_only=True)
class Rotation:
    max_size: Size = setting(Size(100 * MiB), doc="Rotate a file above this size.",
                             minimum=64 * KiB, maximum=10 * GiB)
    max_age: Millis = setting(Millis(7 * DAY), doc="Rotate a file older than this.",
                              minimum=MINUTE, maximum=365 * DAY)
    max_backups: int = setting(10, doc="Rotated files kept per sink.", minimum=0, maximum=1000)
    compress: bool = setting(True, doc="gzip rotated files (off the event loop).")


@dataclass(frozen=True, slots=True, kw_only=True)
class Redact:
    headers: tuple[str, ...] = setting((), doc="Header names redacted in every sink, in "
                                       "addition to authorization, cookie, set-cookie and "
                                       "proxy-authorization (always redacted).",
                                       check=checks.each(checks.header_name),
                                       check_rule="header_name")
    patterns: tuple[str, ...] = setting(checks.DETECTOR_IDS, doc="Secret detectors applied "
                                        "to every logged value.",
                                        check=checks.each(checks.detector_id),
                                        check_rule="detector")


@dataclass(frozen=True, slots=True, kw_only=True)
class Log:
    dir: str | None = setting(None, doc="Directory for log files (created 0750); default "
                              "/var/log/li-httpd, or ./logs under the dev profile.")
    level: LogLevel = setting("info", doc="Default level.")
    queue_size: int = setting(8192, doc="Log records buffered per worker; on overload the "
                              "oldest diagnostics are dropped and counted.",
                              minimum=64, maximum=1_000_000)
    access: LogSink = setting(doc="One line per request.", factory=_access_sink)
    error: LogSink = setting(doc="Errors and warnings.", factory=_error_sink)
    audit: LogSink = setting(doc="JSONL audit record per proxied request.",
                             factory=_audit_sink)
    stderr: StderrSink = setting(doc="Human-readable stderr.", factory=StderrSink)
    rotation: Rotation = setting(doc="Rotation of every file sink.", factory=Rotation)
    redact: Redact = setting(doc="Extra redaction (redaction is always on).", factory=Redact)


# -- [metrics] ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Metrics:
    enabled: bool = setting(False, doc="Serve Prometheus metrics on a separate listener.")
    listen: str = setting("127.0.0.1:9464", doc="Metrics listener.",
                          check=checks.listen_address, check_rule="listen")
    path: str = setting("/metrics", doc="Path of the metrics endpoint.",
                        check=checks.config_path, check_rule="path_normalized")
    allow_non_loopback: bool = setting(False, doc="Allow a non-loopback metrics listener.")


# -- leak censor ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LeakCensorGlobal:
    enabled: bool = setting(False, doc="Master switch: false = no route scrubs bodies "
                            "(the response header allowlist still applies).")
    ack_disable_censor: bool = setting(False, doc="Silence the production warning when the "
                                       "censor is off.")
    generated_file: str = setting("", doc="`leak_censor.generated.toml` written by "
                                  "`li-httpd setup-censor` (a relative path is relative to "
                                  "this config file's directory); refused when edited by "
                                  "hand or older than its sources. Routes with "
                                  "include_generated add its paths.")


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteCensor:
    enabled: bool = setting(True, doc="Scrub this route when the master switch is on.")
    on_detect: OnDetect = setting("redact", doc="`redact`, `block_502` or `abort_stream`.")
    max_scrub_bytes: Size = setting(Size(1 * MiB), doc="Largest response body read whole "
                                    "before its head goes out (JSON bodies; every body "
                                    "under `block_502`); whole JSON bodies over 64 KiB "
                                    "are rewritten off the event loop.",
                                    minimum=4 * KiB, maximum=16 * MiB)
    oversize_json: OversizeJson = setting("stream", doc="A JSON body over "
                                          "`max_scrub_bytes` on a route with deny paths: "
                                          "`stream` rewrites it as it streams (bounded "
                                          "memory, re-chunked), `block` answers 502, "
                                          "`pass` applies the detectors only.")
    patterns: tuple[str, ...] = setting(checks.DETECTOR_IDS, doc="Detectors applied to "
                                        "every chunk and SSE event; "
                                        "`generic_high_entropy` is opt-in.",
                                        check=checks.each(checks.censor_detector_id),
                                        check_rule="detector")
    json_deny_paths: tuple[str, ...] = setting((), doc="JSON fields replaced by "
                                               "\"[REDACTED]\", e.g. $.api_key, "
                                               "$.users[*].password, $..secret (any "
                                               "depth).",
                                               check=checks.each(checks.json_path),
                                               check_rule="json_path")
    deny_headers: tuple[str, ...] = setting((), doc="Response headers always removed.",
                                            check=checks.each(checks.header_name),
                                            check_rule="header_name")
    include_generated: bool = setting(False, doc="Add the `$..name` paths of "
                                      "`leak_censor.generated_file` to `json_deny_paths`.")


# -- route sections -----------------------------------------------------------------------------

DEFAULT_INGRESS = ("authorization", "content-type", "accept", "user-agent", "traceparent",
                   "tracestate", "x-request-id", "x-agent-id", "x-model", "idempotency-key",
                   "anthropic-version", "anthropic-beta")
DEFAULT_EGRESS = ("content-type", "accept", "user-agent", "traceparent", "tracestate",
                  "x-request-id", "x-model", "idempotency-key", "anthropic-version",
                  "anthropic-beta")
DEFAULT_RESPONSE = ("content-type", "content-encoding", "cache-control", "retry-after",
                    "x-request-id", "etag", "last-modified", "vary", "location")


@dataclass(frozen=True, slots=True, kw_only=True)
class Ingress:
    allow: tuple[str, ...] = setting(DEFAULT_INGRESS, doc="Client headers accepted; "
                                     "others are dropped.",
                                     check=checks.each(checks.header_toward_upstream),
                                     check_rule="header_policy")
    require: tuple[str, ...] = setting((), doc="Headers that must be present (400 if "
                                       "missing).",
                                       check=checks.each(checks.header_toward_upstream),
                                       check_rule="header_policy")


@dataclass(frozen=True, slots=True, kw_only=True)
class Egress:
    allow: tuple[str, ...] = setting(DEFAULT_EGRESS, doc="Accepted headers forwarded to "
                                     "the upstream.",
                                     check=checks.each(checks.header_toward_upstream),
                                     check_rule="header_policy")
    inject: Mapping[str, str] = setting(doc="Literal headers added toward the upstream.",
                                        factory=_empty_map, check=checks.inject_map,
                                        check_rule="header_policy")


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseHeaders:
    allow: tuple[str, ...] = setting(DEFAULT_RESPONSE, doc="Upstream response headers "
                                     "passed to the client.",
                                     check=checks.each(checks.header_toward_client),
                                     check_rule="header_policy")


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteHeaders:
    ingress: Ingress = setting(doc="Client to gateway allowlist.", factory=Ingress,
                               inherit=True)
    egress: Egress = setting(doc="Gateway to upstream allowlist and literal injections.",
                             factory=Egress, inherit=True)
    response: ResponseHeaders = setting(doc="Upstream to client allowlist.",
                                        factory=ResponseHeaders, inherit=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    key: LimitKey = setting("api_key", doc="`api_key` (Authorization: Bearer, hashed), "
                            "`agent_id` (x-agent-id), `ip` (needs allow_ip_key) or "
                            "`client_cert` (the verified client certificate's identity, "
                            "see server.tls.client_identity; a request without one is "
                            "refused with 403).")
    allow_ip_key: bool = setting(False, doc="Permit key = ip (clients behind one NAT share "
                                 "a limit).")
    requests_per_sec: int = setting(10, doc="Sustained request rate per key.", minimum=1,
                                    maximum=100_000)
    burst: int = setting(20, doc="Requests admitted at one instant; over any window of t "
                         "seconds at most burst + requests_per_sec × t.", minimum=1,
                         maximum=100_000)
    concurrent_streams: int = setting(32, doc="Responses in flight at once per key.",
                                      minimum=1, maximum=100_000)
    bytes_in_per_sec: Size = setting(Size(8 * MiB), doc="Request body bytes per second "
                                     "per key.", minimum=1 * KiB, maximum=1 * GiB)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteTimeouts:
    ttfb_timeout: Millis = setting(Millis(60 * SECOND), doc="Longest wait for the upstream's "
                                   "response head (504 when it passes).", minimum=SECOND,
                                   maximum=HOUR, inherit=True)
    stream_idle_timeout: Millis = setting(Millis(120 * SECOND), doc="Longest gap between "
                                          "two reads of a response body of unknown length "
                                          "(chunked or ended by close: a stream; stall "
                                          "detector).", minimum=SECOND, maximum=HOUR,
                                          inherit=True)
    stream_max_duration: Millis = setting(Millis(600 * SECOND), doc="Longest relay of one "
                                          "response body.", minimum=SECOND, maximum=DAY,
                                          inherit=True)
    heartbeat_interval: Millis = setting(Millis(15 * SECOND), doc="While an event stream "
                                         "(text/event-stream) is silent, an SSE comment "
                                         "goes to the client this often; 0 = never. "
                                         "Shorter than `stream_idle_timeout`.",
                                         minimum=0, maximum=HOUR, inherit=True)
    early_stream_head: bool = setting(False, doc="For a request that asks for a stream "
                                      "(`\"stream\": true` in its JSON body, or `Accept: "
                                      "text/event-stream`), send the event-stream head "
                                      "(200) at once and heartbeats while the upstream "
                                      "prepares its answer, so that clients and load "
                                      "balancers with short read timeouts keep waiting. "
                                      "A failure before the upstream's stream starts then "
                                      "arrives as the terminal SSE error event, carrying "
                                      "the upstream's status. Needs `heartbeat_interval`.",
                                      inherit=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteFallback:
    chain: tuple[str, ...] = setting((), doc="Upstream pools tried in this order when the "
                                     "route's own `proxy` pool fails before any response "
                                     "byte reached the client, and only for a request "
                                     "whose body can be sent again (no body, or one read "
                                     "whole under `request_buffering`). Declared pools, "
                                     "each once, not the route's own.")
    on: tuple[str, ...] = setting(
        ("connect", "status", "ttfb_timeout"), doc="Failures that move on to the next "
        "pool: `connect` (refused, unreachable, TLS, or every peer of the pool down), "
        "`status` (a response head with a status in `statuses`), `ttfb_timeout` (no "
        "response head within the route's first-byte timeout), `reset` (the connection "
        "failed after the request was sent; a non-idempotent request may then run "
        "twice, so it is off by default).",
        check=checks.each(lambda kind: None if kind in FALLBACK_TRIGGERS else
                           f"{kind!r} is not one of {', '.join(FALLBACK_TRIGGERS)}"))
    statuses: tuple[int, ...] = setting((429, 500, 502, 503, 504), doc="Upstream statuses "
                                        "that move on to the next pool (with `status` in "
                                        "`on`): 429 or a 5xx.",
                                        check=checks.each(
                                            lambda s: None if s == 429 or 500 <= s <= 599
                                            else f"{s} is neither 429 nor a 5xx status"))


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteQueue:
    max_size: int = setting(100, doc="Requests that may wait at once, across all workers; "
                            "one more is answered 503 at once.", minimum=1, maximum=10_000)
    max_wait: Millis = setting(Millis(30 * SECOND), doc="Longest wait of one request "
                               "before it is answered 503.", minimum=100, maximum=10 * MINUTE)


@dataclass(frozen=True, slots=True, kw_only=True)
class HostMatch:
    kind: HostKind = setting("any", doc="`any`, `exact` or `suffix` (value starts with '.').",
                             key="type")
    value: str = setting("", doc="Host name (lowercase).")


@dataclass(frozen=True, slots=True, kw_only=True)
class PathMatch:
    kind: PathKind = setting(doc="`exact`, `prefix`, `prefix_strip`, `glob_one` or "
                                 "`glob_rest`.", key="type")
    value: str = setting(doc="Normalized path pattern.")
    max_depth: int | None = setting(None, doc="Most segments a prefix_strip/glob_rest may "
                                    "match beyond its prefix.", minimum=1, maximum=64)


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderLiteral:
    name: str = setting(doc="Lowercase header name.", check=checks.header_name,
                        check_rule="header_name")
    equals: str = setting(doc="Exact value.", check=checks.literal_value,
                          check_rule="header_name")


@dataclass(frozen=True, slots=True, kw_only=True)
class Match:
    methods: tuple[str, ...] = setting(("*",), doc="Methods; [\"*\"] = any. GET also "
                                       "matches HEAD.",
                                       check=checks.each(checks.method_name),
                                       check_rule="method")
    host: HostMatch = setting(doc="Host match.", factory=HostMatch)
    path: PathMatch = setting(doc="Path match.")
    headers: tuple[HeaderLiteral, ...] = setting((), doc="Header literals, all required.",
                                                 style="inline")


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    name: str = setting(doc="Unique route name (logs, metrics).", check=checks.identifier,
                        check_rule="route_name")
    priority: int = setting(doc="Lower runs first; the easy form uses file order.",
                            minimum=1, maximum=1_000_000)
    match: Match = setting(doc="What the route matches.", style="dotted")
    proxy: str | None = setting(None, doc="Upstream pool name.")
    static: str | None = setting(None, doc="Static root name or built-in responder "
                                 "(`healthcheck`).")
    auth: AuthMode = setting("none", doc="`api_key` requires a key from [auth]; "
                             "`client_cert` requires a verified client certificate named "
                             "by an [auth] entry's `client_cert`; default for proxy routes: "
                             "`api_key` when [auth] has a `sha256` key, else `client_cert` "
                             "when it has a `client_cert` entry, else `none`.")
    headers: RouteHeaders = setting(doc="Header policy.", factory=RouteHeaders)
    rate_limit: RateLimit | None = setting(None, doc="Per-key limits; required on public "
                                           "listeners.", inherit=True)
    leak_censor: RouteCensor = setting(doc="Body scrubbing policy.", factory=RouteCensor,
                                       inherit=True)
    timeouts: RouteTimeouts = setting(doc="Proxy routes: upstream response timers and SSE "
                                      "heartbeats.", factory=RouteTimeouts)
    model_routing: bool = setting(False, doc="Proxy routes: send a request to the pool of "
                                  "the model it names (`x-model` header, else the JSON "
                                  "body's top-level `model`) from `[models]`; an unknown "
                                  "model gets 404 `model_not_found`; a request naming no "
                                  "model goes to `proxy`.")
    accept_x_api_key: bool = setting(False, doc="With `auth = \"api_key\"`, also take the "
                                     "key from `x-api-key` (where Anthropic's SDKs send "
                                     "it) when the request has no Authorization header. "
                                     "Never forwarded upstream.", inherit=True)
    usage_accounting: bool = setting(True, doc="Proxy routes: read token usage from the "
                                     "responses that pass (never changing a byte) into "
                                     "audit records, metrics and budgets.", inherit=True)
    inject_stream_usage: bool = setting(False, doc="Add `\"stream_options\": "
                                        "{\"include_usage\": true}` to OpenAI streaming "
                                        "chat and completion requests that lack it, so their "
                                        "streams report usage. The one setting that changes "
                                        "request bytes.", inherit=True)
    fallback: RouteFallback = setting(doc="Proxy routes: other pools tried before the "
                                      "first response byte.", factory=RouteFallback)
    queue: RouteQueue | None = setting(None, doc="Proxy routes: while the pool has no "
                                       "usable peer (all down or all at their "
                                       "`max_concurrent` cap), requests wait here in arrival "
                                       "order, across all workers, instead of getting a 503 "
                                       "at once (scale-to-zero and cold starts). Off unless "
                                       "set.")
    request_buffering: bool = setting(True, doc="Proxy routes: read the whole request "
                                      "body (at most `limits.max_body`) before an upstream "
                                      "connection is taken, so a slow client holds no "
                                      "upstream connection and the body can be retried on "
                                      "another peer. `false`: the first 64 KiB are read, "
                                      "the rest streams through (never retried).",
                                      inherit=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Defaults:
    headers: RouteHeaders = setting(doc="Header policy for routes without their own.",
                                    factory=RouteHeaders)
    rate_limit: RateLimit | None = setting(None, doc="Rate limit for routes without their "
                                           "own.")
    leak_censor: RouteCensor = setting(doc="Censor policy for routes without their own.",
                                       factory=RouteCensor)
    timeouts: RouteTimeouts = setting(doc="Timers for routes; a route's own "
                                      "[route.timeouts] overrides them key by key.",
                                      factory=RouteTimeouts)
    request_buffering: bool = setting(True, doc="`request_buffering` for routes that do "
                                      "not set their own.")
    accept_x_api_key: bool = setting(False, doc="`accept_x_api_key` for routes that do "
                                     "not set their own.")
    usage_accounting: bool = setting(True, doc="`usage_accounting` for routes that do not "
                                     "set their own.")
    inject_stream_usage: bool = setting(False, doc="`inject_stream_usage` for routes that "
                                        "do not set their own.")


def _empty_upstreams() -> Mapping[str, Upstream]:
    return MappingProxyType({})


def _empty_models() -> Mapping[str, Model]:
    return MappingProxyType({})


def _empty_static() -> Mapping[str, StaticRoot]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    server: Server = setting(doc="Listeners, process model, TLS, randomness.", factory=Server)
    limits: Limits = setting(doc="Request limits and client timeouts.", factory=Limits)
    upstreams: Mapping[str, Upstream] = setting(doc="Upstream pools by name.",
                                                factory=_empty_upstreams,
                                                key_check=checks.identifier,
                                                check_rule="name")
    models: Mapping[str, Model] = setting(doc="Model catalog: what `GET /v1/models` lists, "
                                          "where `model_routing` routes, prices.",
                                          factory=_empty_models,
                                          key_check=checks.model_name,
                                          check_rule="model")
    static: Mapping[str, StaticRoot] = setting(doc="Static roots by name.",
                                               factory=_empty_static,
                                               key_check=checks.identifier,
                                               check_rule="name")
    state: State = setting(doc="Where per-key limits are kept (this host or Redis).",
                           factory=State)
    auth: Auth = setting(doc="API keys.", factory=Auth)
    log: Log = setting(doc="Logging.", factory=Log)
    metrics: Metrics = setting(doc="Prometheus metrics.", factory=Metrics)
    leak_censor: LeakCensorGlobal = setting(doc="Leak censor master switch.",
                                            factory=LeakCensorGlobal)
    defaults: Defaults = setting(doc="Route defaults.", factory=Defaults)
    route: tuple[Route, ...] = setting((), doc="Routes (canonical form); see [routes] for "
                                       "the easy form.")

BUILTIN_STATIC = ("healthcheck", "models")
"""Built-in responders a route may name as ``static:<name>``."""

RATE_LIMIT_EXEMPT = ("healthcheck",)
"""Built-in responders ``[defaults.rate_limit]`` does not apply to (a route's own
``[route.rate_limit]`` still does): they make no upstream call and answer a constant, so
a limit only turns a load balancer's probes into 429s."""
