"""The HTTP-01 token store: one file per pending challenge, named by its token and
holding its key authorization, in ``<cert_dir>/acme-challenges`` (0700).

Why cert_dir: the workers already know it from the config (no new path to hand them),
it is the gateway's own 0700 directory that a static route may not cover (config check
``static_root``), and the writer (the ACME actor, or ``setup-tls --acme``) and the
readers (the workers) run as the same user. Tokens are removed once their order is
final, and the whole directory is emptied when the actor starts (a crash may have left
some behind); a leftover token is harmless anyway: its key authorization is public by
design and expires with its order.

Tokens are checked with the same strict syntax the responder matches
(config/acme_challenge.py), so a file name can never be a path.
"""

from __future__ import annotations

import contextlib
import os

from li_httpd.config.acme_paths import valid_token


class TokenStore:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)

    def publish(self, token: str, key_authorization: str) -> None:
        if not valid_token(token):
            raise ValueError(f"the CA sent a token outside [A-Za-z0-9_-]{{43}}: {token!r}")
        path = os.path.join(self.directory, token)
        temporary = path + ".tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(key_authorization.encode("ascii"))
        os.replace(temporary, path)  # a worker never reads half a key authorization

    def withdraw(self, token: str) -> None:
        if valid_token(token):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, token))

    def clear(self) -> None:
        for name in os.listdir(self.directory):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(os.path.join(self.directory, name))
