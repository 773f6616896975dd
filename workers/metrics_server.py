"""The metrics listener: ``GET <metrics.path>`` → Prometheus text, anything else → 404.
(:func:`answer_one_request` also serves the ACME HTTP-01 listener.)

Connections on the metrics listener never reach the router; each gets one answer and is
closed (scrapers open a connection per scrape). The exposition is built in a thread
(:func:`~.metrics.render` reads every process's sample files).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable

import trio
from li_httpd.config import PathError, normalize_path
from li_httpd.ops.metrics import render
from li_httpd.shm import BudgetUsage

from .context import WorkerContext
from .http1 import NEED_DATA, HttpError, RequestHead, RequestReader
from .redis_blocking import QuietRedis
from .responses import error_response, render_head
from .sockio import Deadline, PeerGone, SocketIO

READ_TIMEOUT = 10.0
_SCRAPE_REDIS = QuietRedis()
"""This worker's scrapes of Redis-held budgets: after a failure the next scrapes within
the quiet time show no budget samples without waiting on Redis again."""
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


Answer = Callable[[WorkerContext, RequestHead, bytes, bytes], Awaitable[bytes]]
"""A side listener's whole response to one request head (request id, Date)."""


async def handle_metrics_connection(ctx: WorkerContext, sock: socket.socket) -> None:
    await answer_one_request(ctx, sock, _answer)


async def answer_one_request(ctx: WorkerContext, sock: socket.socket, answer: Answer) -> None:
    """Read one request head (within :data:`READ_TIMEOUT`), send ``answer``'s response,
    close: the whole life of a connection on a side listener (metrics, ACME HTTP-01)."""
    scope = trio.CancelScope(deadline=trio.current_time() + READ_TIMEOUT)
    io = SocketIO(sock, Deadline(scope), READ_TIMEOUT)
    request_id = ctx.request_ids.next()
    date = ctx.housekeeping.date
    try:
        with scope:
            reader = RequestReader(ctx.limits)
            try:
                event = reader.next_event()
                while event is NEED_DATA:
                    reader.feed(await io.recv())
                    event = reader.next_event()
            except HttpError as exc:
                await io.send_all(error_response(exc.status, request_id, date,
                                                 keep_alive=False))
                return
            if not isinstance(event, RequestHead):
                return
            await io.send_all(await answer(ctx, event, request_id, date))
    except PeerGone:
        pass
    finally:
        io.close()


async def _answer(ctx: WorkerContext, head: RequestHead, request_id: bytes,
                  date: bytes) -> bytes:
    config = ctx.config.config
    try:
        path = normalize_path(head.path.decode("latin-1"))
    except PathError:
        path = ""
    if path != config.metrics.path:
        return error_response(404, request_id, date, keep_alive=False)
    if head.method not in (b"GET", b"HEAD"):
        return error_response(405, request_id, date, keep_alive=False,
                              extra=[(b"allow", b"GET, HEAD")])
    def remote() -> dict[str, BudgetUsage] | str | None:
        return _SCRAPE_REDIS.budgets(config.state, config.auth.keys, time.monotonic())

    body = await trio.to_thread.run_sync(render, config, ctx.shared, remote)
    head_bytes = render_head(200, [(b"content-type", CONTENT_TYPE),
                                   (b"content-length", b"%d" % len(body)),
                                   (b"date", date), (b"connection", b"close")])
    return head_bytes if head.method == b"HEAD" else head_bytes + body
