"""Admission: may this request go to its handler? (no sockets, no awaits)

:func:`admit` takes a parsed request head and the worker's context and returns either
:class:`Admitted` (the route plan, paths, caller and the stream slot it holds) or
:class:`Reject` (the status, headers and message the gateway answers with itself). The
steps, in order, each able to refuse:

1. body size: a declared ``Content-Length`` over ``max_body`` → 413 (connection closes);
2. path: normalization (no encoded ``/``, ``..``, NUL …) → 400;
3. route: no route → 404, path matches but method does not → 405 with ``Allow``;
4. header policy: a ``require``\\ d ingress header is missing → 400;
   the client's ``x-request-id`` is kept when ingress allows it and it is well-formed;
5. auth: ``auth = "api_key"`` without a valid bearer key → 401 + ``WWW-Authenticate``;
   ``auth = "client_cert"`` without a verified client certificate identity → 403, with
   one that no ``[auth] keys`` entry names → 403 (an unknown client);
   a route whose rate limit is keyed by ``client_cert`` without a verified client
   certificate identity on the connection → 403;
6. limits: the route's GCRA rate and concurrent-stream cap in shared memory → 429 +
   ``Retry-After``. An admitted request holds a stream slot until the connection actor
   releases it (:meth:`Admitted.release`). With ``[state] backend = "redis"`` this step
   needs a round trip: :func:`admit` returns :class:`Limited` instead, the connection
   actor awaits the Redis decision (:mod:`.shared_limits`) and :func:`settle` turns it
   into Admitted or Reject (429, or 503 under ``on_backend_error = "deny"``).

The only state touched is the shared-memory limit table (step 6), which is why this runs
once per request and the result is never recomputed; and a memo of recent route
resolutions (steps 2 and 3): when no route has header literals, the normalized path and
the route depend on the raw method, host and path alone, which a gateway sees the same
few of over and over. The memo is bounded in entries (it starts over after
:data:`RESOLVED_MAX`, so random paths cost one insert each) and in size (only heads whose
host and path together fit in :data:`RESOLVED_KEY_MAX` bytes are remembered: a client
sending 30 KiB Host headers cannot pin memory), and it holds only successful lookups.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from li_httpd.config import Found, PathError, normalize_path
from li_httpd.config.matching import normalize_host
from li_httpd.shm import gcra

from .context import RoutePlan, WorkerContext
from .exchange import ByteMeter
from .http1 import Header, RequestHead
from .identity import Caller, key_hash, limit_key_value
from .policy import request_id_from
from .shared_limits import RemoteVerdict, key_digest

RejectReason = Literal["body_too_large", "bad_path", "no_route", "method_not_allowed",
                       "missing_header", "no_key", "bad_key", "no_client_cert",
                       "unknown_client", "rate",
                       "streams", "table_full", "backend_down"]

_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE",
                                    "OPTIONS")}
_NOBODY = Caller(None, False)
RESOLVED_MAX = 4096
RESOLVED_KEY_MAX = 256
_LIMIT_MESSAGES: dict[str, str] = {
    "rate": "rate limit exceeded",
    "streams": "too many concurrent streams for this key",
    "table_full": "rate limit state is full; retry shortly"}
_NO_CLIENT_CERT = "a verified client certificate with an identity is required"
_CHALLENGE = b'Bearer realm="li-httpd"'
_CHALLENGE_INVALID = b'Bearer realm="li-httpd", error="invalid_token"'


class Reject(NamedTuple):
    status: int
    reason: RejectReason
    request_id: bytes
    message: str | None = None
    headers: tuple[Header, ...] = ()
    keep_alive: bool = True
    """False when the connection must close whatever the request said (413)."""
    plan: RoutePlan | None = None
    """The matched route, when the refusal came after routing (for the log)."""
    caller: Caller | None = None


class Admitted(NamedTuple):
    plan: RoutePlan
    path: str
    """The normalized request path."""
    upstream_path: str
    """What the route forwards (``prefix_strip`` removed) or the static file path."""
    request_id: bytes
    caller: Caller
    stream_entry: int | None
    """The shared limit-table entry whose stream count this request holds, if limited."""
    meter: ByteMeter | None
    """Where request-body bytes are charged, if the route meters them."""
    lease: bytes = b""
    """The stream lease held in Redis (backend = redis), if any."""

    def release(self, ctx: WorkerContext) -> None:
        """Give back the stream slot (exactly once, when the request has ended)."""
        if self.stream_entry is not None:
            ctx.shared.release_stream(self.stream_entry)
        if self.lease and ctx.remote is not None:
            ctx.remote.release(self.lease)


class Limited(NamedTuple):
    """Admitted up to the limit step, which the Redis backend decides (see :func:`settle`)."""

    plan: RoutePlan
    path: str
    upstream_path: str
    request_id: bytes
    caller: Caller
    key: int
    """The key's hash in the local table (body bytes, the ``local`` fallback)."""
    digest: bytes
    """The key's name in Redis (the same on every host)."""


def admit(head: RequestHead, client_ip: str, request_id: bytes,
          ctx: WorkerContext, client_cert: str | None = None
          ) -> Admitted | Limited | Reject:
    """Run the admission steps for ``head``; ``request_id`` is the gateway's fresh id,
    which a client's allowed ``x-request-id`` may replace; ``client_cert`` is the
    connection's verified client-certificate identity. See the module docstring."""
    if head.content_length is not None and head.content_length > ctx.limits.max_body:
        return Reject(413, "body_too_large", request_id, keep_alive=False)
    raw = (head.method, head.host, head.path)
    resolved = ctx.resolved.get(raw)
    if resolved is None:
        try:
            path = normalize_path(head.path.decode("latin-1"))
        except PathError as exc:
            return Reject(400, "bad_path", request_id, f"invalid path: {exc}")
        host = normalize_host(head.host.decode("latin-1")) if head.host else ""
        method = _METHODS.get(head.method) or head.method.decode("latin-1")
        router = ctx.router
        headers = ({n.decode("latin-1"): v.decode("latin-1") for n, v in head.headers}
                   if router.needs_headers else {})
        result = router.lookup(method, host, path, headers)
        if not isinstance(result, Found):
            if result.allow:
                return Reject(result.status, "method_not_allowed", request_id,
                              headers=((b"allow", ", ".join(result.allow).encode()),))
            return Reject(result.status, "no_route", request_id)
        if not router.needs_headers and \
                len(head.path) + len(head.host or b"") <= RESOLVED_KEY_MAX:
            if len(ctx.resolved) >= RESOLVED_MAX:
                ctx.resolved.clear()
            ctx.resolved[raw] = (path, result)
    else:
        path, result = resolved
    plan = ctx.plans[result.route.name]
    policy = plan.policy
    missing = policy.missing_required(head.headers)
    if missing is not None:
        return Reject(400, "missing_header", request_id,
                      f"missing required header {missing.decode()}", plan=plan)
    if policy.accepts_request_id:
        request_id = request_id_from(head.headers) or request_id
    if plan.requires_cert:
        if client_cert is None:
            return Reject(403, "no_client_cert", request_id, _NO_CLIENT_CERT, plan=plan)
        caller = ctx.keyring.certified(client_cert)
        if caller.key_id is None:
            return Reject(403, "unknown_client", request_id,
                          "this client certificate is not an accepted client", plan=plan,
                          caller=caller)
    elif ctx.keyring:
        caller = ctx.keyring.identify(head.headers, plan.x_api_key)
    else:
        caller = _NOBODY
    if plan.requires_key and caller.key_id is None:
        if caller.presented:
            return Reject(401, "bad_key", request_id, "a valid API key is required",
                          ((b"www-authenticate", _CHALLENGE_INVALID),), plan=plan,
                          caller=caller)
        return Reject(401, "no_key", request_id, "an API key is required",
                      ((b"www-authenticate", _CHALLENGE),), plan=plan, caller=caller)
    limit = plan.limit
    if limit is None:
        return Admitted(plan, path, result.upstream_path, request_id, caller, None, None)
    if limit.key_kind == "client_cert":
        if client_cert is None:  # never one shared bucket for every unnamed client
            return Reject(403, "no_client_cert", request_id, _NO_CLIENT_CERT, plan=plan,
                          caller=caller)
        value = b"cert:" + client_cert.encode()
    else:
        value = limit_key_value(limit.key_kind, caller, head.headers, client_ip,
                                agent_header_allowed=policy.accepts_agent_id)
    key = key_hash(plan.name_bytes, value, ctx.shared.key_secret)
    if ctx.remote is not None:
        return Limited(plan, path, result.upstream_path, request_id, caller, key,
                       key_digest(plan.name_bytes, value))
    return _admit_local(plan, path, result.upstream_path, request_id, caller, key, ctx)


def _admit_local(plan: RoutePlan, path: str, upstream_path: str, request_id: bytes,
                 caller: Caller, key: int, ctx: WorkerContext) -> Admitted | Reject:
    limit = plan.limit
    assert limit is not None
    admission = ctx.shared.admit(key, limit.rate, limit.max_streams)
    if not admission.allowed:
        return _limited(admission.reason or "rate", admission.retry_after_ns, request_id,
                        plan, caller)
    return Admitted(plan, path, upstream_path, request_id, caller, admission.index,
                    ByteMeter(admission.index, key, limit.byte_rate))


def _limited(reason: Literal["rate", "streams", "table_full"], retry_after_ns: int,
             request_id: bytes, plan: RoutePlan, caller: Caller) -> Reject:
    retry = b"%d" % gcra.retry_after_seconds(retry_after_ns)
    return Reject(429, reason, request_id, _LIMIT_MESSAGES[reason],
                  ((b"retry-after", retry),), plan=plan, caller=caller)


def settle(pending: Limited, verdict: RemoteVerdict, ctx: WorkerContext) -> Admitted | Reject:
    """The limit step of ``pending`` as the Redis backend decided it, or as its
    ``on_backend_error`` policy says when it could not: ``local`` = the shared-memory
    limits of this host, ``allow`` = admitted, ``deny`` = 503."""
    plan = pending.plan
    limit = plan.limit
    assert limit is not None
    fallback = verdict.fallback
    if fallback == "local":
        return _admit_local(plan, pending.path, pending.upstream_path, pending.request_id,
                            pending.caller, pending.key, ctx)
    if fallback == "deny":
        return Reject(503, "backend_down", pending.request_id,
                      "rate limit state is unavailable; retry shortly",
                      ((b"retry-after", b"1"),), plan=plan, caller=pending.caller)
    if not fallback and not verdict.allowed:
        return _limited(verdict.reason or "rate", verdict.retry_after_ns,
                        pending.request_id, plan, pending.caller)
    # Admitted by Redis (or by the allow policy): the local entry meters body bytes.
    index = ctx.shared.hold_entry(pending.key)
    return Admitted(plan, pending.path, pending.upstream_path, pending.request_id,
                    pending.caller, index if index >= 0 else None,
                    ByteMeter(index, pending.key, limit.byte_rate) if index >= 0 else None,
                    verdict.lease)


__all__ = ["Admitted", "Limited", "Reject", "RejectReason", "admit", "settle"]
