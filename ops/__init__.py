"""li_httpd.ops: operator and developer tooling shipped with the gateway.

The mock upstream (`li-httpd mock-upstream`), the benchmark harness and its drivers.
The systemd unit, example configs and shell entry points live beside this package in
ops/. May import li_httpd.config and li_httpd.workers (protocol cores).
"""
