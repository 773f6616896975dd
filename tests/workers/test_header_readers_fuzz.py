"""Fuzz tests of the readers of client header and body bytes outside workers/http1.py
(hypothesis): the model a request names (``_models_of``, workers/proxy.py), the client
request id (``request_id_from``, workers/policy.py), the caller (``KeyRing.identify``)
and the rate-limit key (``limit_key_value``, workers/identity.py).

Header values and the body start are arbitrary bytes (the HTTP reader already refused
what is not a valid field, but these functions must not rely on it). None may raise, and
each result is bounded:

- the model read from a JSON body is at most 128 characters and appears in the body;
  an ``x-model`` header is returned as sent, cut to 128 characters;
- a request id is None or the first ``x-request-id`` value, matching its regex;
- identify names a configured key only for its exact bearer token;
- a limit key is ``anonymous``, ``ip:<address>``, ``id:<key>`` or
  ``id:<key>/agent:<well-formed agent id>``.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from li_httpd.config.model import ApiKey
from li_httpd.workers.http1 import Header, RequestHead
from li_httpd.workers.identity import ANONYMOUS, Caller, KeyRing, hash_key, limit_key_value
from li_httpd.workers.json_fields import top_level
from li_httpd.workers.policy import request_id_from
from li_httpd.workers.proxy import _FIELDS, _cap, _models_of

FAST = settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])

REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
AGENT_ID = re.compile(rb"[A-Za-z0-9._:@/-]{1,128}")
TOKENS = {"alice": "sk-alice", "bob": "sk-bob"}
RING = KeyRing([ApiKey(id=key_id, sha256=hash_key(token)) for key_id, token in TOKENS.items()])

names = st.sampled_from([b"x-model", b"x-request-id", b"authorization", b"x-agent-id",
                         b"content-type", b"X-Model", b""]) | st.binary(max_size=12)
values = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"Bearer sk-alice", b"bearer  sk-bob", b"BEARER sk-alice ", b"Bearer",
                     b"Bearer ", b"Basic sk-alice", b"Bearer sk-\x00", b"Bearer " + b"a" * 5000,
                     b"req-1", b"a" * 128, b"a" * 129, b"agent/1@x", b"gpt-4", b""]),
    st.text(max_size=40).map(lambda s: s.encode("utf-8")))
header_lists = st.lists(st.tuples(names, values), max_size=6)

_BODY_FRAGMENTS = [b'"model"', b":", b" ", b"\t", b"\n", b'"', b"\\", b"{", b"}", b",",
                   b'"gpt-4"', b"\xff", b"\xc3\xa9", b"a" * 130, b"\x00"]
bodies = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(_BODY_FRAGMENTS) | st.binary(max_size=8), max_size=30)
    .map(b"".join),
    st.builds(lambda pad, model, rest: b"{" + b" " * pad + b'"model": "' + model + b'"' + rest,
              st.integers(0, 5000), st.binary(max_size=200), st.binary(max_size=20)))


def _head(headers: list[Header]) -> RequestHead:
    return RequestHead(b"POST", b"/v1/chat", b"1.1", headers)


@FAST
@given(headers=header_lists, body=bodies)
@example(headers=[], body=b'{"model": "' + b"m" * 129 + b'"}')
@example(headers=[], body=b'{"model": "\xff\xfe"}')
@example(headers=[], body=b'\xef\xbb\xbf{"model": "m"}')
@example(headers=[(b"x-model", b"m" * 5000)], body=b"")
def test_models_of_is_total(headers: list[Header], body: bytes) -> None:
    header, model = _models_of(_head(headers), top_level(body, _FIELDS))
    whole = _models_of(_head(headers), top_level(body, _FIELDS, complete=True))[1]
    assert whole in (model, None) or model is None
    declared = [v for n, v in headers if n == b"x-model"]
    assert header == (declared[0].decode("latin-1") if declared else None)
    for found in (model, whole):
        if found is not None:  # a non-empty top-level string field of the body
            assert isinstance(found, str) and found
            assert b'"model"' in body


@pytest.mark.parametrize(("fields", "cap"), [
    ({b"max_tokens": 100}, 100), ({b"max_tokens": 100.0}, 100), ({b"max_tokens": "100"}, 100),
    ({b"max_tokens": " 7 "}, 7), ({b"max_tokens": True}, None), ({b"max_tokens": 0}, None),
    ({b"max_tokens": -5}, None), ({b"max_tokens": 1.5}, None), ({b"max_tokens": "1e9"}, None),
    ({b"max_completion_tokens": 9, b"max_tokens": 100}, 9),
    ({b"max_output_tokens": 50}, 50), ({}, None),
])
def test_cap_reads_what_the_upstream_would_accept(fields: dict[bytes, object],
                                                  cap: int | None) -> None:
    assert _cap(fields) == cap  # type: ignore[arg-type]


@FAST
@given(headers=header_lists)
@example(headers=[(b"x-request-id", b"a" * 129)])
@example(headers=[(b"x-request-id", b"ok\n")])
def test_request_id_from_is_total_and_well_formed(headers: list[Header]) -> None:
    found = request_id_from(headers)
    first = next((v for n, v in headers if n == b"x-request-id"), None)
    if found is None:
        assert first is None or REQUEST_ID.fullmatch(first) is None
    else:
        assert found == first
        assert REQUEST_ID.fullmatch(found)


@FAST
@given(headers=header_lists, kind=st.sampled_from(["api_key", "agent_id", "ip"]),
       agent_allowed=st.booleans(), ip=st.sampled_from(["127.0.0.1", "::1", "10.0.0.1"]))
@example(headers=[(b"authorization", b"Bearer sk-alice"), (b"x-agent-id", b"a/1")],
         kind="agent_id", agent_allowed=True, ip="::1")
def test_identify_and_limit_key_are_total_and_bounded(headers: list[Header], kind: str,
                                                      agent_allowed: bool, ip: str) -> None:
    caller = RING.identify(headers)
    assert isinstance(caller, Caller)
    authorizations = [v for n, v in headers if n == b"authorization"]
    assert caller.presented == bool(authorizations)
    if caller.key_id is not None:
        token = re.fullmatch(rb"(?i:bearer) +(\S+)", authorizations[0])
        assert token is not None
        assert TOKENS[caller.key_id].encode() == token.group(1)
    key = limit_key_value(kind, caller, headers, ip, agent_header_allowed=agent_allowed)
    assert isinstance(key, bytes)
    if kind == "ip":
        assert key == b"ip:" + ip.encode()
    elif caller.key_id is None:
        assert key == ANONYMOUS
    else:
        prefix = b"id:" + caller.key_id.encode()
        assert key == prefix or (
            kind == "agent_id" and agent_allowed and key.startswith(prefix + b"/agent:")
            and AGENT_ID.fullmatch(key[len(prefix + b"/agent:"):]) is not None)
