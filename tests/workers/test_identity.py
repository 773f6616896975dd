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
    unknown = ring.identify([(b"authorization", b"Bearer sk-eve")])
    assert unknown.key_id is None and unknown.presented and unknown.token_hash
    assert ring.identify([(b"authorization", b"Basic YWxpY2U6")]).token_hash is None
    assert not ring.identify([]).presented


def test_limit_keys_per_kind() -> None:
    ring = _ring()
    alice = ring.identify([(b"authorization", b"Bearer sk-alice")])
    eve = ring.identify([(b"authorization", b"Bearer sk-eve")])
    nobody = ring.identify([])
    assert limit_key_value("api_key", alice, [], "1.2.3.4") == b"id:alice"
    assert limit_key_value("api_key", eve, [], "1.2.3.4").startswith(b"token:")
    assert b"sk-eve" not in limit_key_value("api_key", eve, [], "1.2.3.4")
    assert limit_key_value("api_key", nobody, [], "1.2.3.4") == ANONYMOUS
    assert limit_key_value("agent_id", nobody, [(b"x-agent-id", b"bot-7")], "") == b"agent:bot-7"
    assert limit_key_value("agent_id", nobody, [(b"x-agent-id", b"bad id")], "") == ANONYMOUS
    assert limit_key_value("ip", nobody, [], "10.0.0.9") == b"ip:10.0.0.9"


def test_key_hashes_fit_the_signed_table_and_separate_routes() -> None:
    for value in (b"a", b"b", b"id:alice", b""):
        for route in (b"r1", b"r2"):
            assert 0 < key_hash(route, value) < 2**63
    assert key_hash(b"r1", b"id:alice") != key_hash(b"r2", b"id:alice")
