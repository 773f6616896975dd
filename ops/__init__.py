"""li_httpd.ops: the operations plane shared by master and workers, and operator tooling.

Two layers, each with its own import rules (checked by tests/test_layering.py):

- Libraries both the master and the workers use: :mod:`.log` (li-log: access, error and
  audit logs, rotation, redaction) and :mod:`.metrics` (Prometheus multiprocess
  metrics). They may import li_httpd.config and li_httpd.shm only, never
  li_httpd.workers or li_httpd.supervisor, so the master can load them without the
  worker's event-loop code.
- Tooling shipped with the gateway: the mock upstream (``li-httpd mock-upstream``) and
  the benchmark harness with its drivers (:mod:`.bench`). These may also import
  li_httpd.workers (its pure protocol cores). The systemd unit, example configs and
  shell entry points live beside this package in ops/.

The rule below is the tooling's; :mod:`.metrics` narrows it for itself in its own
docstring (li_httpd.config and li_httpd.shm only).

May import: li_httpd.config, li_httpd.shm, li_httpd.workers, li_httpd.ops.log, li_httpd.ops.metrics.
"""
