"""The HTTP-01 responder's one decision: the body for a request target, read from the
token store (actors/acme_tokens.py), or None (404).

Only ``/.well-known/acme-challenge/<token>`` with a strictly valid token
(config/acme_challenge.py) reaches the file system, so a target with ``..``, ``/``,
percent-escapes, a query or the wrong length is answered 404 without a lookup. The file
is opened with O_NOFOLLOW (a symlink planted in the directory is not followed) and read
up to a small cap; its content must start with ``<token>.`` (a key authorization is the
token, a dot and the account key's thumbprint), else it is not served.
"""

from __future__ import annotations

import os

from li_httpd.config.acme_challenge import challenge_token

MAX_KEY_AUTHORIZATION = 256
"""A key authorization is 43 + 1 + 43 characters; anything much longer is not one."""


def key_authorization(challenge_dir: str, target: str) -> bytes | None:
    token = challenge_token(target)
    if token is None or not challenge_dir:
        return None
    try:
        descriptor = os.open(os.path.join(challenge_dir, token),
                             os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        data = os.read(descriptor, MAX_KEY_AUTHORIZATION + 1)
    except OSError:
        return None
    finally:
        os.close(descriptor)
    if len(data) > MAX_KEY_AUTHORIZATION or not data.startswith(token.encode() + b"."):
        return None
    return data
