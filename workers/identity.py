"""Who is calling: API-key authentication and the rate-limit key of a request (pure).

API keys are configured as SHA-256 digests with an id (``[auth] keys``). A request's
``Authorization: Bearer <token>`` is hashed and looked up; the digest comparison uses
:func:`hmac.compare_digest`. Raw tokens are never stored or logged; only the key id
leaves this module. An ``[auth] keys`` entry may instead name a verified client
certificate identity (``client_cert``): on a route with ``auth = "client_cert"`` the
connection's identity is looked up (:meth:`KeyRing.certified`) and the entry's id is the
caller, so models, token and dollar budgets, rate limits and the audit record work as
for an API key. The identity comes from a certificate the TLS handshake verified, so an
exact lookup is enough (it is no secret to compare in constant time).

The rate-limit key is an enum (SPEC §7): ``api_key`` (the authenticated key id, else
one shared "anonymous" key), ``agent_id`` (an authenticated key's well-formed
``x-agent-id``, when the route's ingress allows that header) or ``ip`` (the client
address); ``client_cert`` (the connection's verified client-certificate identity, see
:mod:`.client_cert`) is decided in admission, which refuses a request without one.
Nothing a client can invent unauthenticated gets a budget of its own: an
unknown bearer token or a self-declared agent id would otherwise buy a fresh allowance
per value. Keys are folded with the route name into a 64-bit keyed hash, the identity
used by the shared rate-limit table.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

from li_httpd.config.model import ApiKey

from .http1 import Header

_BEARER = re.compile(rb"(?i:bearer) +([\x21-\x7e]{1,4096})")  # scheme: any case
_RAW_KEY = re.compile(rb"[\x21-\x7e]{1,4096}")
_AGENT_ID = re.compile(rb"[A-Za-z0-9._:@/-]{1,128}")
ANONYMOUS = b"anonymous"


@dataclass(frozen=True, slots=True)
class Caller:
    key_id: str | None
    """The authenticated API key's id, or None."""
    presented: bool
    """A bearer token was presented (used for the 401 error detail)."""


class KeyRing:
    """The configured API keys, indexed by the first 8 bytes of their digest.

    A lookup hashes the presented token, finds the candidates sharing its digest's
    prefix and compares full digests with :func:`hmac.compare_digest`. What timing can
    reveal is limited to the prefix of the digest of a token the caller chose, which
    says nothing about any configured key.
    """

    __slots__ = ("_by_certificate", "_by_prefix")

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._by_prefix: dict[bytes, list[tuple[bytes, str]]] = {}
        self._by_certificate: dict[str, str] = {}
        for key in keys:
            if key.client_cert:
                self._by_certificate[key.client_cert] = key.id
                continue
            digest = bytes.fromhex(key.sha256)
            self._by_prefix.setdefault(digest[:8], []).append((digest, key.id))

    def __bool__(self) -> bool:
        return bool(self._by_prefix) or bool(self._by_certificate)

    def certified(self, client_cert: str) -> Caller:
        """The entry naming this verified client-certificate identity (key_id None: an
        unknown client)."""
        return Caller(self._by_certificate.get(client_cert), True)

    def identify(self, headers: Iterable[Header], x_api_key: bool = False) -> Caller:
        """The caller's key from ``Authorization: Bearer``, or (``x_api_key``: the route
        accepts it, as Anthropic's SDKs send it) from ``x-api-key`` when no Authorization
        header is present."""
        fallback: bytes | None = None
        for name, value in headers:
            if name == b"authorization":
                found = _BEARER.fullmatch(value)
                if found is None:
                    return Caller(None, True)
                return self._lookup(found.group(1))
            if x_api_key and name == b"x-api-key":
                fallback = value
        if fallback is not None:
            if not _RAW_KEY.fullmatch(fallback):
                return Caller(None, True)
            return self._lookup(fallback)
        return Caller(None, False)

    def _lookup(self, token: bytes) -> Caller:
        digest = hashlib.sha256(token).digest()
        for candidate, key_id in self._by_prefix.get(digest[:8], ()):
            if hmac.compare_digest(candidate, digest):
                return Caller(key_id, True)
        return Caller(None, True)


def limit_key_value(kind: str, caller: Caller, headers: Iterable[Header],
                    client_ip: str, *, agent_header_allowed: bool = True) -> bytes:
    """The value a rate limit counts by, per the route's ``rate_limit.key``."""
    if kind == "ip":
        return b"ip:" + client_ip.encode()
    if caller.key_id is None:
        return ANONYMOUS
    key = b"id:" + caller.key_id.encode()
    if kind == "agent_id" and agent_header_allowed:
        for name, value in headers:
            if name == b"x-agent-id" and _AGENT_ID.fullmatch(value):
                return key + b"/agent:" + value
    return key


def key_hash(route: bytes, value: bytes, secret: bytes = b"") -> int:
    """A non-zero 63-bit identity for (route, key value) (it is stored in a signed
    64-bit field of the shared table), keyed with the shared state's secret."""
    digest = hashlib.blake2b(route + b"\0" + value, digest_size=8, key=secret).digest()
    return (int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF) or 1


def hash_key(raw: str) -> str:
    """What ``li-httpd hash-key`` prints: the SHA-256 hex digest of a raw key."""
    return hashlib.sha256(raw.encode()).hexdigest()
