"""Which listen addresses cannot both be bound (the HTTP-01 listener beside the others):
the master binds IPv6 with IPV6_V6ONLY and port 0 as a fresh port each time."""

from __future__ import annotations

import pytest
from li_httpd.config.checks import same_socket_address

CASES = [
    ("127.0.0.1:80", "127.0.0.1:80", True),
    ("0.0.0.0:80", "127.0.0.1:80", True),
    (":80", "10.0.0.5:80", True),
    ("localhost:80", "127.0.0.1:80", True),
    ("[::]:80", "[::1]:80", True),
    ("[::1]:80", "[0:0::1]:80", True),
    ("127.0.0.1:80", "127.0.0.1:443", False),
    ("10.0.0.5:80", "10.0.0.6:80", False),
    ("0.0.0.0:80", "[::]:80", False),
    ("[::1]:80", "127.0.0.1:80", False),
    ("127.0.0.1:0", "127.0.0.1:0", False),
    (":0", ":0", False),
    ("not an address", "127.0.0.1:80", False),
]


@pytest.mark.parametrize(("first", "second", "collide"), CASES)
def test_same_socket_address(first: str, second: str, collide: bool) -> None:
    assert same_socket_address(first, second) is collide
    assert same_socket_address(second, first) is collide
