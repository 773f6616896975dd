"""Where ACME things live, shared by the config check (no route may match the reserved
path), the workers' responder, ``setup-tls --acme``, the ACME actor and the master's TLS
setup. Pure.

Files under ``cert_dir``: the account (:data:`ACCOUNT_KEY`, :data:`ACCOUNT_FILE`), the
certificate chain followed by its key in one file (:data:`ACME_PAIR`: one rename
replaces both, so no reader ever sees a new key beside an old chain) and the HTTP-01
token store (:data:`CHALLENGE_DIR`).

The HTTP-01 challenge path (RFC 8555 section 8.3): the one name the gateway answers below
``/.well-known/acme-challenge/``.

A token is base64url without padding (section 8.1 requires at least 128 bits of entropy;
Let's Encrypt, pebble and Boulder send 32 random bytes = 43 characters). The match is
strict on purpose: exactly the prefix, then 43 characters of ``[A-Za-z0-9_-]``, nothing
else (no query, no percent-escapes, no dot, no slash). Anything else is not a token, so
the responder answers 404 without touching the file system; a token that passes cannot
name a path outside the token directory (it has no ``/`` and no ``.``).
"""

from __future__ import annotations

import os
import re

ACCOUNT_KEY = "acme-account.key"
ACCOUNT_FILE = "acme-account.json"
ACME_PAIR = "acme.pem"
CHALLENGE_DIR = "acme-challenges"
"""The token store's directory under ``cert_dir`` (actors/acme_tokens.py says why)."""
ACME_CHALLENGE_PATH = "/.well-known/acme-challenge/"
TOKEN_LENGTH = 43
_TOKEN = re.compile(f"[A-Za-z0-9_-]{{{TOKEN_LENGTH}}}")


def challenge_directory(cert_dir: str) -> str:
    return os.path.join(cert_dir, CHALLENGE_DIR)


def valid_token(token: str) -> bool:
    return _TOKEN.fullmatch(token) is not None


def challenge_token(target: str) -> str | None:
    """The token a request target asks for, or None when the target is not exactly
    ``/.well-known/acme-challenge/<token>``."""
    if not target.startswith(ACME_CHALLENGE_PATH):
        return None
    token = target[len(ACME_CHALLENGE_PATH):]
    return token if valid_token(token) else None


def is_challenge_path(target: str) -> bool:
    """Whether ``target`` lies in the reserved directory (answered by the responder:
    its token or 404, never a route)."""
    return target.startswith(ACME_CHALLENGE_PATH)
