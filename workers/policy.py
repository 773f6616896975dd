"""Header policy for one route, compiled at config load (pure, no I/O).

Three allowlists (SPEC §3 ``[route.headers.*]``):

- *ingress*: client headers the gateway accepts at all; ``require`` names must be present
  (else 400). Everything else the client sent is dropped.
- *egress*: accepted headers that are forwarded to the upstream, plus literal ``inject``
  headers. Hop-by-hop headers, headers named by the client's ``Connection`` header,
  framing headers and ``x-upstream-*`` / ``x-route-*`` never reach the upstream: the
  config validator refuses such names, and :meth:`HeaderPolicy.egress` additionally
  filters them at request time.
- *response*: upstream response headers passed to the client. Framing, ``date`` and
  hop-by-hop headers are always set by the gateway itself.

``x-request-id`` is the gateway's: it keeps a client's id only when ingress allows it
and it is well-formed (:func:`request_id_from`), and always sends its id upstream.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from li_httpd.config import checks
from li_httpd.config.model import RouteHeaders

from .http1 import Header

_FORBIDDEN_UPSTREAM = frozenset(n.encode() for n in (*checks.HOP_BY_HOP,
                                                     *checks.GATEWAY_MANAGED,
                                                     "x-request-id"))
_GATEWAY_RESPONSE = frozenset(n.encode() for n in (*checks.HOP_BY_HOP,
                                                   *checks.GATEWAY_MANAGED,
                                                   "date", "x-request-id"))
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def _forbidden_upstream(name: bytes) -> bool:
    return (name in _FORBIDDEN_UPSTREAM or name.startswith((b"x-upstream-", b"x-route-",
                                                            b"proxy-")))


class HeaderPolicy:
    """One route's compiled header policy."""

    __slots__ = ("accepts_agent_id", "accepts_request_id", "forward", "inject",
                 "inject_names", "require", "response_allow")

    def __init__(self, headers: RouteHeaders, deny_response: Iterable[str] = ()) -> None:
        """``deny_response``: response headers removed even when allowed (the censor's
        ``deny_headers``)."""
        ingress = frozenset(n.encode() for n in headers.ingress.allow)
        egress = frozenset(n.encode() for n in headers.egress.allow)
        self.accepts_request_id = b"x-request-id" in ingress
        self.accepts_agent_id = b"x-agent-id" in ingress
        self.require = tuple(n.encode() for n in headers.ingress.require)
        self.inject_names = frozenset(n.encode() for n in headers.egress.inject)
        self.forward = frozenset(n for n in ingress & egress
                                 if not _forbidden_upstream(n) and n not in self.inject_names)
        self.inject: tuple[Header, ...] = tuple(
            (n.encode(), v.encode()) for n, v in headers.egress.inject.items())
        self.response_allow = frozenset(n.encode() for n in headers.response.allow) \
            - _GATEWAY_RESPONSE - frozenset(n.lower().encode() for n in deny_response)

    def missing_required(self, headers: Iterable[Header]) -> bytes | None:
        """The first required header the request lacks, or None."""
        if not self.require:
            return None
        present = {name for name, _ in headers}
        for name in self.require:
            if name not in present:
                return name
        return None

    def egress(self, headers: Iterable[Header],
               connection_tokens: tuple[bytes, ...]) -> list[Header]:
        """Client headers to forward upstream (before the gateway's own and injected)."""
        forward = self.forward
        if connection_tokens:
            return [h for h in headers if h[0] in forward and h[0] not in connection_tokens]
        return [h for h in headers if h[0] in forward]

    def response(self, headers: Iterable[Header],
                 connection_tokens: tuple[bytes, ...]) -> list[Header]:
        """Upstream response headers to pass to the client."""
        allow = self.response_allow
        if connection_tokens:
            return [h for h in headers if h[0] in allow and h[0] not in connection_tokens]
        return [h for h in headers if h[0] in allow]


def request_id_from(headers: Iterable[Header]) -> bytes | None:
    """A well-formed client ``x-request-id`` (the caller checks the policy allows it)."""
    for name, value in headers:
        if name == b"x-request-id":
            return value if _REQUEST_ID.fullmatch(value) else None
    return None
