"""The cost of one proxied request through the connection actor, in one process.

A real :class:`~li_httpd.workers.context.WorkerContext` and connection actor serve a
socketpair; a scripted client sends keep-alive requests one after the other (GETs, or
``chat``: POSTs with a small JSON body like an SDK's) and an
in-process upstream answers each with a fixed 12-byte response. No load driver and no
second process share the measurement, so the cost per request is steady enough to
compare two builds of the request path:

- ``python ops/bench/inproc.py N [KIND]`` prints wall and CPU microseconds per request
  (KIND: a key of :data:`REQUESTS`; ``stream``: a chunked event stream of
  :data:`STREAM_EVENTS` events; ``*_censor``: with the leak censor on)
  (still subject to the machine's noise);
- ``bash ops/bench/instructions [PYTHON...]`` runs it under valgrind's callgrind for two
  request counts and prints instructions per request (the difference divided by the
  difference in requests): the same number on every run of the same build, whatever
  else the machine is doing. The client and upstream are part of every request's count,
  so a change shows as a smaller percentage than the gateway alone would.

May import: li_httpd.config, li_httpd.workers.
"""

from __future__ import annotations

import os
import socket
import sys
import time

import trio
from li_httpd.config import load_text
from li_httpd.workers.connection import handle_connection
from li_httpd.workers.context import WorkerContext

WARMUP = 500
RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 12\r\n\r\n"
            b"hello world\n")
CHAT_BODY = (b'{"messages":[{"role":"system","content":"You are a helpful assistant."},'
             b'{"role":"user","content":"Say hello in five words."}],'
             b'"model":"gpt-4o-mini","max_tokens":64}')
_CHAT = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
         b"user-agent: inproc\r\ncontent-type: application/json\r\n"
         b"content-length: %d\r\n\r\n%s" % (len(CHAT_BODY), CHAT_BODY))
REQUESTS = {
    "get": b"GET /small HTTP/1.1\r\nhost: 127.0.0.1\r\nuser-agent: inproc\r\n\r\n",
    # What an OpenAI SDK sends: a small JSON body whose fields the gateway reads; the
    # answer is a chat completion with its usage, which the gateway reads too ...
    "chat": _CHAT,
    # ... unless usage accounting is off ...
    "chat_noacct": _CHAT,
    # ... or, with a key that has a token and dollar budget: reserve, then settle.
    "chat_budget": _CHAT.replace(b"user-agent: inproc\r\n",
                                 b"user-agent: inproc\r\nauthorization: Bearer bench-key\r\n"),
    # ... or with the leak censor on (every detector, nothing to find).
    "chat_censor": _CHAT,
    # A streamed chat completion (STREAM_EVENTS events, chunked), censor off and on.
    "stream": _CHAT,
    "stream_censor": _CHAT,
}
_BUDGET_KEY = ('[auth]\nkeys = [{ id = "bench", sha256 = "b0962662e937d44c699c8305d90cbf190b3'
               '150c59b13863d1380b5cc3c711bb7", tokens_per_minute = 1000000000, '
               'usd_budget = 1000000000 }]\n')
CHAT_RESPONSE_BODY = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,'
    b'"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"Hello there, nice to meet you."},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":24,"completion_tokens":8,"total_tokens":32}}')
CHAT_RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\n\r\n%s" % (len(CHAT_RESPONSE_BODY),
                                                     CHAT_RESPONSE_BODY))


STREAM_EVENTS = 20
_WORDS = ("Hello", " there", "!", " How", " can", " I", " help", " you", " today", "?")
_STREAM_BODY = b"".join(
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"%s"},'
    b'"finish_reason":null}]}\n\n' % _WORDS[i % len(_WORDS)].encode()
    for i in range(STREAM_EVENTS - 1)) + b"data: [DONE]\n\n"
STREAM_RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                   b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                   % (len(_STREAM_BODY), _STREAM_BODY))


async def _upstream(response: bytes, task_status: trio.TaskStatus[int]) -> None:
    async def answer(stream: trio.SocketStream) -> None:
        buffered = b""
        while data := await stream.receive_some(65536):
            buffered += data
            while b"\r\n\r\n" in buffered:
                _, _, buffered = buffered.partition(b"\r\n\r\n")
                await stream.send_all(response)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(answer, listeners)


def _config(port: int, kind: str) -> str:
    # Only chat_noacct and chat_budget name newer keys: get and chat run on older builds.
    defaults = ("[defaults]\nusage_accounting = false\n" if kind == "chat_noacct"
                else _BUDGET_KEY if kind == "chat_budget"
                else "[leak_censor]\nenabled = true\n" if kind.endswith("_censor") else "")
    return (f'[server]\nlisten = "127.0.0.1:8080"\nprofile = "dev"\n'
            f'[limits]\nkeepalive_requests = 1000000\n'
            f'[upstreams.u]\npeers = ["http://127.0.0.1:{port}"]\n{defaults}'
            f'[routes]\n"GET /health" = "static:healthcheck"\n"/*" = "proxy:u"\n')


async def measure(requests: int, kind: str = "get") -> tuple[float, float]:
    """(wall, CPU) seconds per proxied request of ``kind`` (see REQUESTS), after a
    warm-up."""
    request = REQUESTS[kind]
    response = (RESPONSE if kind == "get" else STREAM_RESPONSE if kind.startswith("stream")
                else CHAT_RESPONSE)
    ending = b"data: [DONE]\n\n" if kind.startswith("stream") else response[-12:]
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_upstream, response)
        ctx = WorkerContext(load_text(_config(port, kind), "inproc.toml"))
        await nursery.start(ctx.housekeeping.run)
        served, client_end = socket.socketpair()
        nursery.start_soon(handle_connection, ctx, served, ("127.0.0.1", 1))
        client = trio.SocketStream(trio.socket.from_stdlib_socket(client_end))

        async def one() -> None:
            await client.send_all(request)
            received = b""
            while not received.endswith(ending):
                data = await client.receive_some(65536)
                if not data:
                    raise RuntimeError(f"the gateway closed the connection: {received!r}")
                received += data
            if not received.startswith(b"HTTP/1.1 200 "):
                raise RuntimeError(f"unexpected response: {received!r}")

        for _ in range(WARMUP):
            await one()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(requests):
            await one()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        nursery.cancel_scope.cancel()
    ctx.close()
    return wall / requests, cpu / requests


def _quiet_housekeeping() -> None:
    """``INPROC_QUIET=1``: no housekeeping tick and no disconnect watch during the run.
    Both run on the wall clock, which valgrind stretches ~50x and the machine's load
    stretches further, so under callgrind they add a load-dependent share to every
    request (the same build measured 748k and 765k chat instructions on a busy box);
    without them only per-request work is counted."""
    from li_httpd.workers import housekeeping
    housekeeping.TICK = 1000.0  # type: ignore[attr-defined]  # a name it imports from sockio
    housekeeping.WATCH_AFTER = 1000.0


def main(argv: list[str]) -> int:
    if os.environ.get("INPROC_QUIET", "") not in ("", "0"):
        _quiet_housekeeping()
    requests = int(argv[0]) if argv else 20000
    kind = argv[1] if len(argv) > 1 else "get"
    wall, cpu = trio.run(measure, requests, kind)
    print(f"{requests} {kind} requests: {wall * 1e6:.1f} us/request wall, "
          f"{cpu * 1e6:.1f} us/request CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
