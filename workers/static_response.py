"""Serving one static request through a :class:`~.port.ClientPort` (the I/O side of
static.py, which decides everything that can be decided without the client)."""

from __future__ import annotations

import os

from .admission import Admitted
from .exchange import Exchange, Handled, Phase
from .http1 import Header
from .port import ClientPort
from .responses import render_head
from .sockio import PeerGone
from .static import (
    SMALL_FILE,
    ByteRange,
    Redirect,
    content_type,
    etag_for,
    last_modified,
    not_modified,
    precondition_failed,
    requested_range,
)

_READ_METHODS = (b"GET", b"HEAD")


async def serve_static(client: ClientPort, exchange: Exchange, admitted: Admitted,
                       date: bytes) -> Handled:
    """Answer from the route's static root."""
    head = exchange.head
    site = admitted.plan.static
    if site is None:
        return await client.reject(404)
    if head.method not in _READ_METHODS:
        return await client.reject(405, headers=((b"allow", b"GET, HEAD"),))
    resolved = site.resolve(admitted.upstream_path, admitted.path)
    if resolved is None:
        return await client.reject(404, message="file not found")
    keep = head.keep_alive and not head.has_body
    done = Handled("completed", keep)
    common: list[Header] = [(b"x-request-id", exchange.request_id), (b"date", date)]
    if not keep:
        common.append((b"connection", b"close"))
    if isinstance(resolved, Redirect):
        location = resolved.location.encode()
        await client.respond(301, render_head(301, [(b"location", location),
                                                    (b"content-length", b"0"), *common]),
                             Phase.FRAMED)
        return done
    fd = resolved.fd
    try:
        etag = etag_for(resolved.size, resolved.mtime)
        validators: list[Header] = [(b"etag", etag),
                                    (b"last-modified", last_modified(resolved.mtime))]
        if precondition_failed(head.headers, etag, resolved.mtime):
            await client.respond(412, render_head(412, [(b"content-length", b"0"),
                                                        *validators, *common]), Phase.FRAMED)
            return done
        if not_modified(head.headers, etag, resolved.mtime):
            await client.respond(304, render_head(304, [*validators, *common]), Phase.FRAMED)
            return done
        size = resolved.size
        wanted = requested_range(head.headers, size, etag, resolved.mtime) \
            if head.method == b"GET" else None
        if wanted is False:
            await client.respond(416, render_head(416, [
                (b"content-range", b"bytes */%d" % size), (b"content-length", b"0"),
                *common]), Phase.FRAMED)
            return done
        status, start, length = 200, 0, size
        extra: list[Header] = []
        if isinstance(wanted, ByteRange):
            status, start, length = 206, wanted.start, wanted.end - wanted.start + 1
            extra.append((b"content-range", b"bytes %d-%d/%d" % (wanted.start, wanted.end,
                                                                   size)))
        headers = [(b"content-type", content_type(resolved.name)),
                   (b"content-length", b"%d" % length), (b"accept-ranges", b"bytes"),
                   (b"x-content-type-options", b"nosniff"), *extra, *validators, *common]
        out = render_head(status, headers)
        if head.method == b"HEAD" or length == 0:
            await client.respond(status, out, Phase.FRAMED)
        elif length <= SMALL_FILE:
            data = os.pread(fd, length, start)
            if len(data) != length:  # truncated since fstat: never send fewer bytes
                raise PeerGone("file shrank while sending")  # than Content-Length says
            await client.respond(status, out + data, Phase.FRAMED)
        else:
            await client.respond(status, out, Phase.FRAMED)
            await client.sendfile(fd, start, length)
        return done
    finally:
        os.close(fd)
