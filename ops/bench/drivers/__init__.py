"""li_httpd.ops.bench.drivers: load drivers for the benchmark harness (wrk covers plain HTTP).

``sse``
    ``python -m li_httpd.ops.bench.drivers.sse``: holds N concurrent streaming chat
    completions open and measures time to first byte / first event, inter-event gaps and
    the delay the gateway adds to every event (client receive time minus the mock
    upstream's ``x_mock_sent_at``).
``latency``
    ``python -m li_httpd.ops.bench.drivers.latency``: keep-alive request latency
    percentiles at several concurrency levels, optionally minus a direct-to-upstream
    baseline (``added_ms``).
``client``
    The minimal HTTP/1.1 client both share: non-blocking stdlib sockets driven by
    ``trio.lowlevel.wait_readable`` / ``wait_writable``, ``httptools`` for parsing.
``stats``
    Percentile summaries (nearest rank), the driver's CPU clock, event-loop lag, the
    ``RLIMIT_NOFILE`` bump and JSON output.

Every driver writes one JSON document (``--json PATH``, ``-`` for stdout) and a one-line
summary on stderr; the harness reads the JSON. Drivers report their own CPU use
(``driver_cpu_pct``, 100 = one core, the most a trio driver can use) and event-loop lag
so that a saturated driver can be told from a slow gateway.

Imports: the standard library, trio, httptools and orjson only — never another li_httpd
package, so the drivers can measure any li_httpd build (or nginx) under test.

May import: nothing else.
"""
