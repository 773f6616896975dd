"""li_httpd.ops.bench: the benchmark harness, its load drivers and micro-benchmarks.

Operator tooling like the mock upstream: it may also import the workers' pure cores, and
the TLS scan's throwaway CA for its TLS scenarios. It runs the drivers (:mod:`.drivers`)
and the gateway as programs, never imports them.

May import: li_httpd.config, li_httpd.shm, li_httpd.workers, li_httpd.ops.log, li_httpd.ops.metrics,
li_httpd.ops.tls_scan.
"""
