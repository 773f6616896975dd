"""Serving one static request over a client connection (the trio side of static.py)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .http1 import Header, RequestHead
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

if TYPE_CHECKING:
    from .connection import ClientConnection
    from .context import RoutePlan

_READ_METHODS = (b"GET", b"HEAD")


async def serve_static(conn: ClientConnection, head: RequestHead, plan: RoutePlan,
                       file_path: str, public_path: str) -> bool:
    """Answer from the route's static root; True when the connection may be reused."""
    site = plan.static
    if site is None:
        return await conn.reject(head, 404)
    if head.method not in _READ_METHODS:
        return await conn.reject(head, 405, extra=[(b"allow", b"GET, HEAD")])
    resolved = site.resolve(file_path, public_path)
    if resolved is None:
        return await conn.reject(head, 404, message="file not found")
    keep = head.keep_alive and not head.has_body
    date = conn.ctx.housekeeping.date
    common: list[Header] = [(b"x-request-id", conn.request_id), (b"date", date)]
    if not keep:
        common.append((b"connection", b"close"))
    if isinstance(resolved, Redirect):
        location = resolved.location.encode()
        conn.begin_response(301)
        await conn.io.send_all(render_head(301, [(b"location", location),
                                                 (b"content-length", b"0"), *common]))
        return keep
    fd = resolved.fd
    try:
        etag = etag_for(resolved.size, resolved.mtime)
        validators: list[Header] = [(b"etag", etag),
                                    (b"last-modified", last_modified(resolved.mtime))]
        if precondition_failed(head.headers, etag, resolved.mtime):
            conn.begin_response(412)
            await conn.io.send_all(render_head(412, [(b"content-length", b"0"),
                                                     *validators, *common]))
            return keep
        if not_modified(head.headers, etag, resolved.mtime):
            conn.begin_response(304)
            await conn.io.send_all(render_head(304, [*validators, *common]))
            return keep
        size = resolved.size
        wanted = requested_range(head.headers, size, etag, resolved.mtime) \
            if head.method == b"GET" else None
        if wanted is False:
            conn.begin_response(416)
            await conn.io.send_all(render_head(416, [
                (b"content-range", b"bytes */%d" % size), (b"content-length", b"0"),
                *common]))
            return keep
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
        conn.begin_response(status)
        if head.method == b"HEAD" or length == 0:
            await conn.io.send_all(out)
        elif length <= SMALL_FILE:
            data = os.pread(fd, length, start)
            if len(data) != length:  # truncated since fstat: never send fewer bytes
                raise PeerGone("file shrank while sending")  # than Content-Length says
            await conn.io.send_all(out + data)
        else:
            await conn.io.send_all(out)
            await conn.io.sendfile(fd, start, length)
        return keep
    finally:
        os.close(fd)
