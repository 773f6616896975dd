"""``[state] url``: what is accepted and how it is parsed; passwords are never echoed."""

from __future__ import annotations

import pytest
from li_httpd.config.checks import RedisUrl, parse_redis_url

ACCEPTED = [
    ("redis://127.0.0.1:6379", RedisUrl(False, "127.0.0.1", 6379, 0, "")),
    ("redis://cache.internal:6380/3", RedisUrl(False, "cache.internal", 6380, 3, "")),
    ("rediss://cache.example.com:6380", RedisUrl(True, "cache.example.com", 6380, 0, "")),
    ("redis://gateway@10.0.0.5:6379/0", RedisUrl(False, "10.0.0.5", 6379, 0, "gateway")),
    ("redis://[::1]:6379", RedisUrl(False, "::1", 6379, 0, "")),
]


@pytest.mark.parametrize(("url", "parsed"), ACCEPTED)
def test_accepted(url: str, parsed: RedisUrl) -> None:
    assert parse_redis_url(url) == parsed


REFUSED = [
    ("redis://:hunter2@127.0.0.1:6379", "password"),
    ("redis://user:hunter2@127.0.0.1:6379", "password"),
    ("rediss://user:hunter2@host:bad/9", "password"),
    # A password with a slash (base64 makes them) must not pass for a path and be echoed.
    ("redis://user:hun/ter2@127.0.0.1:6379", "password"),
    ("redis://:12/hunter2@127.0.0.1:6379", "password"),
    ("http://127.0.0.1:6379", "redis:// or rediss://"),
    ("redis://127.0.0.1", "port explicitly"),
    ("redis://127.0.0.1:6379/16", "database number"),
    ("redis://127.0.0.1:6379/a", "database number"),
    ("redis://127.0.0.1:6379?db=1", "query"),
    ("redis://:6379", "no host"),
    ("redis://127.0.0.1:99999", "not a valid URL"),
]


@pytest.mark.parametrize(("url", "message"), REFUSED)
def test_refused_with_a_clear_message(url: str, message: str) -> None:
    problem = parse_redis_url(url)
    assert isinstance(problem, str)
    assert message in problem
    assert "hunter2" not in problem and "ter2" not in problem
