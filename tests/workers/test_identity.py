"""API-key identification and rate-limit keys (pure)."""

from __future__ import annotations

from li_httpd.config.model import ApiKey
from li_httpd.workers.identity import (
    ANONYMOUS,
    KeyRing,
    hash_key,
    key_hash,
    limit_key_value,
)


def _ring() -> KeyRing:
    return KeyRing([ApiKey(id="alice", sha256=hash_key("sk-alice")),
                    ApiKey(id="bob", sha256=hash_key("sk-bob"))])


def test_bearer_tokens_map_to_key_ids() -> None:
    ring = _ring()
    assert ring.identify([(b"authorization", b"Bearer sk-alice")]).key_id == "alice"
    assert ring.identify([(b"authorization", b"bearer   sk-bob")]).key_id == "bob"
    # RFC 9110 §11.1: the scheme name is case-insensitive.
    assert ring.identify([(b"authorization", b"BEARER sk-bob")]).key_id == "bob"
    unknown = ring.identify([(b"authorization", b"Bearer sk-eve")])
    assert unknown.key_id is None and unknown.presented
    assert ring.identify([(b"authorization", b"Basic YWxpY2U6")]).key_id is None
    assert not ring.identify([]).presented


def test_limit_keys_per_kind() -> None:
    ring = _ring()
    alice = ring.identify([(b"authorization", b"Bearer sk-alice")])
    nobody = ring.identify([])
    agent = [(b"x-agent-id", b"bot-7")]
    assert limit_key_value("api_key", alice, [], "1.2.3.4") == b"id:alice"
    assert limit_key_value("api_key", nobody, [], "1.2.3.4") == ANONYMOUS
    assert limit_key_value("agent_id", alice, agent, "") == b"id:alice/agent:bot-7"
    assert limit_key_value("agent_id", alice, [(b"x-agent-id", b"bad id")], "") == b"id:alice"
    assert limit_key_value("agent_id", alice, agent, "",
                           agent_header_allowed=False) == b"id:alice"
    assert limit_key_value("ip", nobody, [], "10.0.0.9") == b"ip:10.0.0.9"


def test_values_a_client_invents_share_one_budget() -> None:
    """An unknown token or a self-declared agent id must not buy its own allowance:
    rotating them would walk past any limit (found by review at 9447c3b)."""
    ring = _ring()
    for token in (b"sk-eve", b"sk-mallory", b"random-1", b"random-2"):
        caller = ring.identify([(b"authorization", b"Bearer " + token)])
        assert limit_key_value("api_key", caller, [], "1.2.3.4") == ANONYMOUS
        assert limit_key_value("agent_id", caller, [(b"x-agent-id", token)], "") == ANONYMOUS


def test_key_hash_is_keyed() -> None:
    """With the shared state's secret, nobody can compute which keys share a bucket."""
    assert key_hash(b"r", b"id:alice", b"k" * 16) != key_hash(b"r", b"id:alice", b"j" * 16)
    assert key_hash(b"r", b"id:alice", b"k" * 16) == key_hash(b"r", b"id:alice", b"k" * 16)


def test_key_hashes_fit_the_signed_table_and_separate_routes() -> None:
    for value in (b"a", b"b", b"id:alice", b""):
        for route in (b"r1", b"r2"):
            assert 0 < key_hash(route, value) < 2**63
    assert key_hash(b"r1", b"id:alice") != key_hash(b"r2", b"id:alice")
