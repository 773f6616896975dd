"""Field-level checks: pure predicates that return an error message or None.

These back the ``check=`` of schema fields (see :mod:`.schema`) and the cross-field
rules in :mod:`.validate`. Nothing here touches the filesystem or the network.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from .paths import PathError, normalize_path

TOKEN_RE = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[a-z0-9-]+(\.[a-z0-9-]+)+")
_JSON_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
JSON_PATH_RE = re.compile(rf"\$(?:(?:\.{_JSON_NAME}|\.\*|\.\.{_JSON_NAME})(?:\[\*\])?)+")
"""JSON deny paths: ``$`` then steps ``.name``, ``.*`` (any member or element) or
``..name`` (a member ``name`` at this level or any deeper one), each optionally followed
by ``[*]`` (any element or member). Compiled by :mod:`li_httpd.workers.json_redact`."""

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
    "proxy-connection", "proxy-authenticate", "proxy-authorization",
})
"""RFC 9110 §7.6.1 connection-specific fields plus the legacy Proxy-Connection."""

GATEWAY_MANAGED = frozenset({"host", "content-length", "transfer-encoding", "expect"})
"""Framing and routing fields the gateway always sets itself."""

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
"""Methods a route may name. CONNECT (tunnels) and TRACE (echoes credentials) are refused."""

DETECTOR_IDS: tuple[str, ...] = (
    "openai_sk", "anthropic_key", "aws_access_key", "github_token", "jwt_bearer",
    "pem_private", "slack_token", "google_api_key", "stripe_key",
)
"""Built-in secret detectors, shared by the leak censor and log redaction."""

CENSOR_ONLY_DETECTORS: tuple[str, ...] = ("generic_high_entropy",)
"""Detectors the leak censor may enable (never by default, never for logs): they trade
false positives for recall."""


def header_name(value: Any) -> str | None:
    if not isinstance(value, str) or not TOKEN_RE.fullmatch(value):
        return f"{value!r} is not a lowercase header field name (RFC 9110 token)"
    return None


def header_toward_upstream(value: Any) -> str | None:
    """Names a client or a route may send to the upstream."""
    problem = header_name(value)
    if problem:
        return problem
    name = str(value)
    if name.startswith(("x-upstream-", "x-route-")):
        return f"{name!r}: x-upstream-* and x-route-* are reserved to the gateway"
    if name in HOP_BY_HOP or name.startswith("proxy-"):
        return f"{name!r} is a hop-by-hop header; the gateway handles it and never forwards it"
    if name in GATEWAY_MANAGED:
        return f"{name!r} is set by the gateway itself and cannot be listed"
    return None


def header_toward_client(value: Any) -> str | None:
    """Names an upstream response may pass back to the client."""
    problem = header_name(value)
    if problem:
        return problem
    name = str(value)
    if name in HOP_BY_HOP or name.startswith("proxy-") or name in GATEWAY_MANAGED:
        return f"{name!r} is a framing or hop-by-hop header; the gateway sets it itself"
    return None


def each(check: Any) -> Any:
    """Lift a per-item check to a tuple of items."""

    def check_all(values: Any) -> str | None:
        for item in values:
            problem: str | None = check(item)
            if problem:
                return problem
        return None

    return check_all


def literal_value(value: Any) -> str | None:
    """Injected header values are literals: no variables, no line breaks, printable."""
    if not isinstance(value, str):
        return "header values must be strings"
    if any(c in value for c in "\r\n\0"):
        return "header values cannot contain CR, LF or NUL"
    if "$" in value:
        return "header values are literals; '$' (variable syntax) is refused"
    if any(ord(c) < 0x20 and c != "\t" for c in value) or "\x7f" in value:
        return "header values cannot contain control characters"
    if len(value) > 4096:
        return "header values are limited to 4096 characters"
    return None


def inject_map(value: Any) -> str | None:
    for name, literal in value.items():
        problem = header_toward_upstream(name) or literal_value(literal)
        if problem:
            return problem
    return None


def identifier(value: Any) -> str | None:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        return (f"{value!r} is not a valid name: use letters, digits, '_' and '-' "
                "(at most 64, starting with a letter or digit)")
    return None


def model_name(value: Any) -> str | None:
    if not isinstance(value, str) or not MODEL_RE.fullmatch(value):
        return (f"{value!r} is not a valid model name: letters, digits and . _ : / @ + - "
                "(at most 128, starting with a letter or digit)")
    return None


def sha256_hex(value: Any) -> str | None:
    if not isinstance(value, str) or not SHA256_RE.fullmatch(value):
        return ("expected a SHA-256 digest as 64 lowercase hex digits "
                "(print one with `li-httpd hash-key`)")
    return None


def sha256_hex_or_empty(value: Any) -> str | None:
    """An API key's digest, or "" for an entry that names a client certificate."""
    return None if value == "" else sha256_hex(value)


CLIENT_IDENTITY_MAX = 256
"""The longest client-certificate identity (workers/client_cert.py computes them)."""


def client_cert_identity(value: Any) -> str | None:
    """"" (an API-key entry) or what workers/client_cert.py can yield: printable, at most
    :data:`CLIENT_IDENTITY_MAX` characters (an entry it could never match is a typo)."""
    if value == "":
        return None
    if not isinstance(value, str) or len(value) > CLIENT_IDENTITY_MAX \
            or not value.isprintable():
        return (f"expected a client certificate identity: printable, at most "
                f"{CLIENT_IDENTITY_MAX} characters")
    return None


def email(value: Any) -> str | None:
    if value and not EMAIL_RE.fullmatch(str(value)):
        return f"{value!r} is not a valid e-mail address"
    return None


def json_path(value: Any) -> str | None:
    if not isinstance(value, str) or not JSON_PATH_RE.fullmatch(value):
        return (f"{value!r} is not a supported JSON path: use $.field, $.a.b, $.items[*].field, "
                "$.obj.* or $..field (any depth)")
    return None


def detector_id(value: Any) -> str | None:
    if value not in DETECTOR_IDS:
        return f"{value!r} is not a built-in detector; known: {', '.join(DETECTOR_IDS)}"
    return None


def censor_detector_id(value: Any) -> str | None:
    if value not in DETECTOR_IDS and value not in CENSOR_ONLY_DETECTORS:
        known = ", ".join(DETECTOR_IDS + CENSOR_ONLY_DETECTORS)
        return f"{value!r} is not a built-in detector; known: {known}"
    return None


def method_name(value: Any) -> str | None:
    if value == "*":
        return None
    if value in ("CONNECT", "TRACE"):
        return f"{value} is refused by li-httpd (no tunnels, no request echo)"
    if value not in METHODS:
        return f"{value!r} is not a supported method; use one of {', '.join(METHODS)} or '*'"
    return None


def host_value(value: Any) -> str | None:
    if not isinstance(value, str) or not HOSTNAME_RE.fullmatch(value):
        return f"{value!r} is not a lowercase host name"
    return None


def config_path(value: Any) -> str | None:
    """A path written in the config must already be in normal form."""
    if not isinstance(value, str):
        return "paths must be strings"
    try:
        normal = normalize_path(value)
    except PathError as exc:
        return f"path {value!r} is not allowed: {exc}"
    if "%" in value:
        return f"path {value!r} contains a %-escape; write the decoded form"
    if normal != value:
        return f"path {value!r} is not normalized (normal form {normal!r})"
    return None


_QUERY_RE = re.compile(r"[A-Za-z0-9._~!&'()*+,;=:@/?-]*")


def probe_path(value: Any) -> str | None:
    """A health probe target: an origin-form path (optionally with a query) on the peer
    itself; never a URL, an authority, a dot segment or anything needing an escape."""
    if not isinstance(value, str) or not value:
        return "probe paths must be non-empty strings"
    if len(value) > 1024:
        return "probe paths are limited to 1024 characters"
    if not value.startswith("/") or value.startswith("//"):
        return (f"probe path {value!r} must be a path on the peer starting with one '/' "
                "(no scheme or host)")
    if any(ord(c) <= 0x20 or ord(c) >= 0x7f for c in value):
        return f"probe path {value!r} contains a space, control or non-ASCII character"
    if any(c in value for c in "#$\\"):
        return f"probe path {value!r} cannot contain '#', '$' or '\\'"
    path, _, query = value.partition("?")
    problem = config_path(path)
    if problem:
        return problem
    if not _QUERY_RE.fullmatch(query):
        return f"probe path {value!r} has a query with characters that need escaping"
    return None


def probe_path_or_empty(value: Any) -> str | None:
    return None if value == "" else probe_path(value)


def split_host_port(address: str) -> tuple[str, int] | None:
    """``"127.0.0.1:8080"``, ``"[::1]:8080"`` or ``":443"`` (all interfaces)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or len(port_text) > 5:
        return None
    port = int(port_text)
    if not 0 <= port <= 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        return host, port
    if host == "":
        return "0.0.0.0", port
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return None if host != "localhost" else ("127.0.0.1", port)
    return host, port


def listen_address(value: Any) -> str | None:
    if not isinstance(value, str) or split_host_port(value) is None:
        return (f"{value!r} is not a listen address: write IP:PORT, [IPv6]:PORT or :PORT "
                "(all interfaces)")
    return None


def same_socket_address(first: str, second: str) -> bool:
    """Whether two listen addresses cannot both be bound as the master binds them: the
    same (non-zero) port, the same address family and the same host or one of them all
    interfaces. Different hosts of one family, or IPv4 beside IPv6 (bound
    IPV6_V6ONLY), share a port fine; port 0 is a fresh port each time."""
    a, b = split_host_port(first), split_host_port(second)
    if a is None or b is None or a[1] != b[1] or a[1] == 0:
        return False
    host_a, host_b = ipaddress.ip_address(a[0]), ipaddress.ip_address(b[0])
    return host_a.version == host_b.version and (
        host_a == host_b or host_a.is_unspecified or host_b.is_unspecified)


def is_loopback(address: str) -> bool:
    parsed = split_host_port(address)
    if parsed is None:
        return False
    return ipaddress.ip_address(parsed[0]).is_loopback


def acme_directory_url(value: Any) -> str | None:
    """An ACME directory is fetched over HTTPS (RFC 8555 section 6.1): ``https://host[:port]
    /path``, without userinfo, query or fragment."""
    if not value:
        return None
    if not isinstance(value, str) or any(c.isspace() or ord(c) < 0x20 for c in value):
        return f"directory_url {value!r} is not a URL"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError as exc:
        return f"directory_url {value!r} is not a valid URL: {exc}"
    if parts.scheme != "https":
        return f"directory_url {value!r} must start with https:// (ACME runs over HTTPS)"
    if not parts.hostname or "@" in parts.netloc:
        return f"directory_url {value!r} needs a host and no userinfo"
    if parts.query or parts.fragment or "?" in value or "#" in value:
        return f"directory_url {value!r} must not contain a query or fragment"
    return None


def peer_url(value: Any) -> str | None:
    """Upstream peers are literal ``http(s)://host:port`` origins and nothing else."""
    if not isinstance(value, str):
        return "peer URLs must be strings"
    if "$" in value or "{" in value:
        return f"peer {value!r}: variables are not allowed; peers are literal origins"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        return f"peer {value!r} is not a valid URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"peer {value!r} must start with http:// or https://"
    if "@" in parts.netloc:
        return f"peer {value!r} must not contain userinfo (user:password@)"
    if parts.query or "?" in value:
        return f"peer {value!r} must not contain a query"
    if parts.fragment or "#" in value:
        return f"peer {value!r} must not contain a fragment"
    if parts.path not in ("", "/"):
        return f"peer {value!r} must be an origin without a path"
    if port is None:
        return f"peer {value!r} must name its port explicitly (http://host:port)"
    host = parts.hostname or ""
    if not host:
        return f"peer {value!r} has no host"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host_value(host):
            return f"peer {value!r} has an invalid host {host!r}"
    return None


class RedisUrl(NamedTuple):
    """A parsed ``[state] url``."""

    tls: bool
    host: str
    port: int
    db: int
    username: str


def parse_redis_url(value: str) -> RedisUrl | str:
    """``redis://[USER@]HOST:PORT[/DB]`` or ``rediss://...``, or why not (a message).
    A password in the URL is refused: it would sit in the config file, in
    ``explain-config`` output and in logs; it comes from password_file or password_env."""
    # Up to the last "@" anywhere, not only before the first "/": a password may hold a
    # "/" (base64 ones do), and no "@" belongs after the host (the path is a number).
    userinfo = value.partition("://")[2].rpartition("@")[0]
    if ":" in userinfo:  # checked first: no later message may echo the password
        return ("a Redis URL with a password: never put the password in the config; set "
                "[state] password_file or password_env (a user name alone, "
                "redis://USER@HOST:PORT, is fine)")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        return f"{value!r} is not a valid URL: {exc}"
    if parts.scheme not in ("redis", "rediss"):
        return f"{value!r} must start with redis:// or rediss://"
    if parts.query or parts.fragment or "?" in value or "#" in value:
        return f"{value!r} must not contain a query or fragment"
    if port is None:
        return f"{value!r} must name its port explicitly (redis://host:6379)"
    host = parts.hostname or ""
    if not host:
        return f"{value!r} has no host"
    db_text = parts.path.removeprefix("/")
    if db_text and (not db_text.isdigit() or int(db_text) > 15):
        return f"{value!r}: the path is a database number 0-15 (redis://host:port/0)"
    return RedisUrl(parts.scheme == "rediss", host, port, int(db_text or "0"),
                    parts.username or "")


def redis_url(value: Any) -> str | None:
    if not isinstance(value, str):
        return "the Redis URL must be a string"
    if not value:
        return None  # backend = local; the state rule requires it for redis
    parsed = parse_redis_url(value)
    return parsed if isinstance(parsed, str) else None


def redis_key_prefix(value: Any) -> str | None:
    if not isinstance(value, str) or not value or len(value) > 64 or any(
            ord(c) <= 0x20 or ord(c) >= 0x7F for c in value):
        return "key_prefix is 1 to 64 printable ASCII characters without spaces"
    return None
