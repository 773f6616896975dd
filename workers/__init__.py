"""li_httpd.workers: one trio event loop per worker process and everything it runs.

Connection actors, the strict HTTP/1.1 parser wrappers, header policy, the reverse
proxy and static files. Pure protocol cores here do no I/O and never import trio.
May import li_httpd.config and li_httpd.shm; never parses TOML and never forks.

May import: li_httpd.config, li_httpd.shm, li_httpd.ops.log, li_httpd.ops.metrics.
"""
