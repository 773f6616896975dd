"""The HTTP-01 responder: the key authorization for a request target, read from the
token store (actors/acme_tokens.py), or a 404; on the main listeners' reserved path
(connection.py asks :func:`challenge_response` before routing) and on the plain-HTTP
``http01_bind`` listener (:func:`handle_http01_connection`).

Only ``/.well-known/acme-challenge/<token>`` with a strictly valid token
(config/acme_challenge.py) reaches the file system, so a target with ``..``, ``/``,
percent-escapes, a query or the wrong length is answered 404 without a lookup. The file
is opened with O_NOFOLLOW (a symlink planted in the directory is not followed) and read
up to a small cap; its content must start with ``<token>.`` (a key authorization is the
token, a dot and the account key's thumbprint), else it is not served.
"""

from __future__ import annotations

import os
import socket

from li_httpd.config.acme_paths import challenge_token

from .context import WorkerContext
from .http1 import RequestHead
from .metrics_server import answer_one_request
from .responses import error_response, render_head

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


def challenge_response(challenge_dir: str, method: bytes, target: bytes, request_id: bytes,
                       date: bytes, keep_alive: bool) -> tuple[int, bytes]:
    """The status and complete response for a request in the reserved directory: the key
    authorization (GET, HEAD) or a 404."""
    body = None
    if method in (b"GET", b"HEAD"):
        body = key_authorization(challenge_dir, target.decode("latin-1"))
    if body is None:
        return 404, error_response(404, request_id, date, keep_alive=keep_alive,
                                   head_only=method == b"HEAD")
    head = render_head(200, [(b"content-type", b"application/octet-stream"),
                             (b"content-length", b"%d" % len(body)), (b"date", date),
                             (b"connection", b"keep-alive" if keep_alive else b"close")])
    return 200, head if method == b"HEAD" else head + body


async def handle_http01_connection(ctx: WorkerContext, sock: socket.socket) -> None:
    """A connection on the ``http01_bind`` listener: one request, answered from the token
    store (anything outside the reserved directory gets 404 too: this plain-HTTP
    listener serves ACME validation only, never routes), then closed."""
    await answer_one_request(ctx, sock, _http01_answer)


async def _http01_answer(ctx: WorkerContext, head: RequestHead, request_id: bytes,
                         date: bytes) -> bytes:
    return challenge_response(ctx.acme_challenges, head.method, head.path, request_id,
                              date, False)[1]
