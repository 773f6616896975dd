"""li_httpd.workers: one trio event loop per worker process and everything it runs.

Connection actors, the strict HTTP/1.1 parser wrappers, header policy, the reverse
proxy and static files. Pure protocol cores here do no I/O and never import trio.
Never parses TOML and never forks.

May import: li_httpd.config, li_httpd.shm, li_httpd.ops.log, li_httpd.ops.metrics.

Modules, in the order a request meets them:

- :mod:`.worker` — the worker process: accept loops, signals, graceful drain;
- :mod:`.context` — per-worker state compiled once per config (route plans, groups);
- :mod:`.connection` — the connection actor: the request loop, the end of every request;
- :mod:`.http1` — strict HTTP/1.1 framing of requests and responses (pure);
- :mod:`.exchange` — one request's record: response phase, outcome, upstream in use (pure);
- :mod:`.admission` — route, header policy, auth and limits → Admitted | Reject;
- :mod:`.identity`, :mod:`.policy` — API keys and limit keys; header allowlists (pure);
- :mod:`.port` — the client side as handlers see it (a Protocol);
- :mod:`.static`, :mod:`.static_response` — static-file policy (pure), and its I/O;
- :mod:`.proxy` — the reverse proxy handler; :mod:`.retry` — its retry decisions (pure);
- :mod:`.upstream` — peers, keep-alive pools, peer choice (with `max_concurrent` caps);
- :mod:`.waitline` — a route's cold-start queue as one worker waits in it;
- :mod:`.sse` — SSE event boundaries, held half events, the terminal error event (pure);
- :mod:`.json_redact` — the leak censor's JSON deny paths: whole and streamed bodies (pure);
- :mod:`.usage` — token usage read from relayed responses, without buffering (pure);
- :mod:`.sockio`, :mod:`.tls_io` — non-blocking socket I/O and deadlines; TLS over it;
- :mod:`.housekeeping` — the per-worker timer task: deadlines, disconnect watch, Date;
- :mod:`.responses` — response heads and the gateway's JSON errors (pure);
- :mod:`.metrics_server` — answering ``/metrics`` scrapes;
- :mod:`.resp` (pure), :mod:`.redis_client`, :mod:`.backend_health`,
  :mod:`.shared_limits` — limits, leases and budgets kept in Redis
  (``[state] backend = "redis"``); :mod:`.redis_blocking` — a blocking Redis connection
  for the master and the metrics thread.

Handlers (:mod:`.proxy`, :mod:`.static_response`) never import :mod:`.connection`.
"""
