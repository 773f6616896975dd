"""Admission as a table: request head + worker context -> Admitted | Reject.

No sockets: the context is compiled from a real config, the heads come from the real
parser, and the limit table is a private shared-memory segment with a virtual clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from li_httpd.config import load_text
from li_httpd.shm import SharedState, layout_for
from li_httpd.workers.admission import Admitted, Reject, admit
from li_httpd.workers.context import WorkerContext
from li_httpd.workers.http1 import ParseLimits, RequestHead, RequestReader


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


CONFIG = f"""
[server]
listen = "127.0.0.1:8080"
profile = "dev"

[limits]
max_body = "1k"

[auth]
keys = [{{ id = "alice", sha256 = "{_digest('sk-alice')}" }}]

[upstreams.pool]
peers = ["http://127.0.0.1:9"]

[[route]]
name = "health"
match.methods = ["GET"]
match.path = {{ type = "exact", value = "/health" }}
static = "healthcheck"

[[route]]
name = "open"
match.methods = ["POST"]
match.path = {{ type = "prefix_strip", value = "/open/" }}
proxy = "pool"
auth = "none"
[route.headers.ingress]
allow = ["content-type", "x-request-id"]

[[route]]
name = "traced"
match.methods = ["POST"]
match.path = {{ type = "exact", value = "/traced" }}
proxy = "pool"
auth = "none"
[route.headers.ingress]
allow = ["content-type", "traceparent"]
require = ["traceparent"]

[[route]]
name = "keyed"
match.methods = ["POST"]
match.path = {{ type = "prefix", value = "/v1/" }}
proxy = "pool"
auth = "api_key"
[route.headers.ingress]
allow = ["authorization", "content-type", "x-request-id"]
[route.rate_limit]
key = "api_key"
requests_per_sec = 1
burst = 2
concurrent_streams = 2
"""


class Clock:
    def __init__(self) -> None:
        self.ns = 1_000_000_000_000

    def __call__(self) -> int:
        return self.ns


def context_for(text: str) -> Iterator[WorkerContext]:
    """A worker context compiled from config ``text``, with a private limit table on a
    virtual clock (for fixtures)."""
    loaded = load_text(text, "admission.toml")
    shared = SharedState.create(layout_for(loaded.config, 1), Clock())
    context = WorkerContext(loaded, shared=shared)
    yield context
    context.close()
    shared.close()


@pytest.fixture
def ctx() -> Iterator[WorkerContext]:
    yield from context_for(CONFIG)


def head(raw: str) -> RequestHead:
    reader = RequestReader(ParseLimits(max_body=1 << 20))
    reader.feed(raw.replace("\n", "\r\n").encode() + b"\r\n")
    event = reader.next_event()
    assert isinstance(event, RequestHead), event
    return event


KEY = "authorization: Bearer sk-alice\n"
CASES = [
    # id, request head, (status, reason) or ("admit", route, upstream path)
    ("healthcheck", "GET /health HTTP/1.1\nhost: a\n", ("admit", "health", "/health")),
    ("prefix_strip", "POST /open/x/y HTTP/1.1\nhost: a\ncontent-length: 2\n",
     ("admit", "open", "/x/y")),
    ("body_too_large", "POST /open/x HTTP/1.1\nhost: a\ncontent-length: 1025\n",
     (413, "body_too_large")),
    ("body_at_the_limit", "POST /open/x HTTP/1.1\nhost: a\ncontent-length: 1024\n",
     ("admit", "open", "/x")),
    ("encoded_slash", "GET /open/a%2Fb HTTP/1.1\nhost: a\n", (400, "bad_path")),
    ("dot_dot", "GET /open/../health HTTP/1.1\nhost: a\n", (400, "bad_path")),
    ("no_route", "GET /nowhere HTTP/1.1\nhost: a\n", (404, "no_route")),
    ("wrong_method", "DELETE /health HTTP/1.1\nhost: a\n", (405, "method_not_allowed")),
    ("missing_required", "POST /traced HTTP/1.1\nhost: a\n", (400, "missing_header")),
    ("required_present", "POST /traced HTTP/1.1\nhost: a\ntraceparent: 00-ab-cd-01\n",
     ("admit", "traced", "/traced")),
    ("no_key", "POST /v1/chat HTTP/1.1\nhost: a\n", (401, "no_key")),
    ("bad_key", "POST /v1/chat HTTP/1.1\nhost: a\nauthorization: Bearer sk-mallory\n",
     (401, "bad_key")),
    ("malformed_authorization", "POST /v1/chat HTTP/1.1\nhost: a\nauthorization: Basic eA==\n",
     (401, "bad_key")),
    ("good_key", "POST /v1/chat HTTP/1.1\nhost: a\n" + KEY, ("admit", "keyed", "/v1/chat")),
]


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_admission_table(ctx: WorkerContext, raw: str,
                         expected: tuple[int, str] | tuple[str, str, str]) -> None:
    verdict = admit(head(raw), "127.0.0.1", b"gw-1", ctx)
    if expected[0] == "admit":
        assert isinstance(verdict, Admitted), verdict
        assert (verdict.plan.route.name, verdict.upstream_path) == expected[1:]
        verdict.release(ctx)
    else:
        assert isinstance(verdict, Reject), verdict
        assert (verdict.status, verdict.reason) == expected


def test_reject_details(ctx: WorkerContext) -> None:
    too_large = admit(head("POST /open/x HTTP/1.1\nhost: a\ncontent-length: 5000\n"),
                      "", b"gw-1", ctx)
    assert isinstance(too_large, Reject) and not too_large.keep_alive
    allow = admit(head("POST /health HTTP/1.1\nhost: a\n"), "", b"gw-1", ctx)
    assert isinstance(allow, Reject) and dict(allow.headers) == {b"allow": b"GET, HEAD"}
    unauthenticated = admit(head("POST /v1/x HTTP/1.1\nhost: a\n"), "", b"gw-1", ctx)
    assert isinstance(unauthenticated, Reject)
    assert dict(unauthenticated.headers) == {b"www-authenticate": b'Bearer realm="li-httpd"'}
    assert unauthenticated.plan is not None and unauthenticated.plan.route.name == "keyed"
    invalid = admit(head("POST /v1/x HTTP/1.1\nhost: a\nauthorization: Bearer nope\n"), "",
                    b"gw-1", ctx)
    assert isinstance(invalid, Reject)
    assert b'error="invalid_token"' in dict(invalid.headers)[b"www-authenticate"]


@pytest.mark.parametrize(("sent", "allowed", "kept"), [
    ("x-request-id: client-7\n", True, b"client-7"),        # allowed and well-formed
    ("x-request-id: bad id!\n", True, b"gw-1"),              # malformed: the gateway's
    ("x-request-id: client-7\n", False, b"gw-1"),            # not allowed by ingress
])
def test_client_request_id(ctx: WorkerContext, sent: str, allowed: bool, kept: bytes) -> None:
    path = "/open/x" if allowed else "/traced"
    raw = f"POST {path} HTTP/1.1\nhost: a\ntraceparent: 00\n{sent}"
    verdict = admit(head(raw), "", b"gw-1", ctx)
    assert verdict.request_id == kept
    # A refusal after routing answers with the id the client will look for.
    refused = admit(head("POST /v1/x HTTP/1.1\nhost: a\nx-request-id: client-8\n"), "",
                    b"gw-2", ctx)
    assert isinstance(refused, Reject) and refused.request_id == b"client-8"


def test_rate_and_stream_limits(ctx: WorkerContext) -> None:
    request = "POST /v1/chat HTTP/1.1\nhost: a\n" + KEY
    first = admit(head(request), "", b"gw-1", ctx)
    second = admit(head(request), "", b"gw-2", ctx)
    assert isinstance(first, Admitted) and isinstance(second, Admitted)
    assert first.caller.key_id == "alice" and first.meter is not None
    # Burst 2 and 2 concurrent streams: the third is refused, by rate first.
    third = admit(head(request), "", b"gw-3", ctx)
    assert isinstance(third, Reject) and third.status == 429
    assert third.reason == "rate" and dict(third.headers)[b"retry-after"] == b"1"
    clock = ctx.shared.clock
    assert isinstance(clock, Clock)
    clock.ns += 5_000_000_000  # the rate has refilled; both streams are still open
    streams = admit(head(request), "", b"gw-4", ctx)
    assert isinstance(streams, Reject) and streams.reason == "streams"
    first.release(ctx)
    again = admit(head(request), "", b"gw-5", ctx)
    assert isinstance(again, Admitted)
    again.release(ctx)
    second.release(ctx)


def test_route_resolutions_are_remembered_within_bounds(
        ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch) -> None:
    from li_httpd.workers import admission
    monkeypatch.setattr(admission, "RESOLVED_MAX", 4)
    for n in range(20):
        raw = f"POST /open/{n}/x HTTP/1.1\nhost: a\n"
        for _ in range(2):  # the second answer comes from the memo and is the same
            verdict = admit(head(raw), "", b"gw", ctx)
            assert isinstance(verdict, Admitted) and verdict.upstream_path == f"/{n}/x"
            assert verdict.path == f"/open/{n}/x"
        assert len(ctx.resolved) <= 4
    # Refusals are not remembered: a bad path stays a 400, a miss a 404, each time.
    for raw, status in (("GET /open/a%2Fb HTTP/1.1\nhost: a\n", 400),
                        ("GET /nowhere HTTP/1.1\nhost: a\n", 404)):
        for _ in range(2):
            verdict = admit(head(raw), "", b"gw", ctx)
            assert isinstance(verdict, Reject) and verdict.status == status
    # Long hosts or paths are resolved every time, never remembered (bounded memory).
    ctx.resolved.clear()
    long = admit(head(f"POST /open/{'p' * 300} HTTP/1.1\nhost: a\n"), "", b"gw", ctx)
    assert isinstance(long, Admitted) and not ctx.resolved
    long_host = admit(head(f"POST /open/x HTTP/1.1\nhost: {'h' * 300}\n"), "", b"gw", ctx)
    assert isinstance(long_host, Admitted) and not ctx.resolved
    # The same raw head with another method or host is resolved on its own.
    other = admit(head("GET /open/1/x HTTP/1.1\nhost: a\n"), "", b"gw", ctx)
    assert isinstance(other, Reject) and other.status == 405


MTLS_SERVER = """
[server]
listen = "127.0.0.1:8443"
profile = "dev"

[server.tls]
mode = "self_signed"
client_auth = "optional"
client_ca = "@CLIENT_CA@"
"""
CERT_CONFIG = MTLS_SERVER + """
[upstreams.pool]
peers = ["http://127.0.0.1:9"]

[[route]]
name = "certified"
match.methods = ["POST"]
match.path = { type = "prefix", value = "/v1/" }
proxy = "pool"
auth = "none"
[route.rate_limit]
key = "client_cert"
requests_per_sec = 1
burst = 1
"""


def test_client_cert_rate_key(config_env: Any) -> None:
    loaded = load_text(config_env.fill(CERT_CONFIG), "certified.toml")
    shared = SharedState.create(layout_for(loaded.config, 1), Clock())
    context = WorkerContext(loaded, shared=shared)
    try:
        request = head("POST /v1/chat HTTP/1.1\nhost: a\n")
        # No identity on the connection: refused, never one shared anonymous bucket.
        anonymous = admit(request, "127.0.0.1", b"gw-1", context)
        assert isinstance(anonymous, Reject)
        assert (anonymous.status, anonymous.reason) == (403, "no_client_cert")
        assert anonymous.plan is not None and anonymous.plan.route.name == "certified"
        # Each identity has its own bucket (burst 1): alice's second request is limited,
        # bob's first is not, whatever the client address.
        first = admit(request, "127.0.0.1", b"gw-2", context, "alice")
        assert isinstance(first, Admitted)
        first.release(context)
        again = admit(request, "127.0.0.2", b"gw-3", context, "alice")
        assert isinstance(again, Reject) and again.status == 429
        bob = admit(request, "127.0.0.1", b"gw-4", context, "bob")
        assert isinstance(bob, Admitted)
        bob.release(context)
    finally:
        context.close()
        shared.close()


CLIENTS_CONFIG = MTLS_SERVER + """
[auth]
keys = [
  { id = "team-a", client_cert = "alice", tokens_per_minute = 100 },
  { id = "team-b", client_cert = "bob" },
  { id = "bearer", sha256 = "@BEARER@" },
]

[upstreams.pool]
peers = ["http://127.0.0.1:9"]

[[route]]
name = "certified"
match.path = { type = "prefix", value = "/v1/" }
proxy = "pool"
auth = "client_cert"

[[route]]
name = "keyed"
match.path = { type = "prefix", value = "/k/" }
proxy = "pool"
""".replace("@BEARER@", _digest("sk-alice"))


@pytest.mark.parametrize(("path", "identity", "bearer", "expected"), [
    ("/v1/chat", "alice", False, "team-a"),
    ("/v1/chat", "bob", True, "team-b"),  # the certificate decides, not a bearer key
    ("/v1/chat", "mallory", False, (403, "unknown_client")),
    ("/v1/chat", None, True, (403, "no_client_cert")),
    ("/k/x", "alice", False, (401, "no_key")),  # an api_key route ignores certificates
    ("/k/x", "alice", True, "bearer"),
], ids=["alice", "bob_with_bearer", "unknown", "no_certificate", "api_key_route",
        "api_key_route_with_key"])
def test_client_cert_principals(config_env: Any, path: str, identity: str | None,
                                bearer: bool, expected: str | tuple[int, str]) -> None:
    loaded = load_text(config_env.fill(CLIENTS_CONFIG), "clients.toml")
    assert loaded.config.route[1].auth == "api_key"  # the default with a bearer key
    shared = SharedState.create(layout_for(loaded.config, 1), Clock())
    context = WorkerContext(loaded, shared=shared)
    try:
        request = head(f"POST {path} HTTP/1.1\nhost: a\n" + (KEY if bearer else ""))
        result = admit(request, "127.0.0.1", b"gw-1", context, identity)
        if isinstance(expected, str):
            assert isinstance(result, Admitted), result
            assert result.caller.key_id == expected
            result.release(context)
        else:
            assert isinstance(result, Reject)
            assert (result.status, result.reason) == expected
    finally:
        context.close()
        shared.close()
