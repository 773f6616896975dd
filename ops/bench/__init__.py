"""li_httpd.ops.bench: the benchmark harness, its load drivers and micro-benchmarks."""
