"""li_httpd.supervisor: the master process and the command line.

The only code that forks. The master stays synchronous (no trio): it validates the
config, binds listeners, creates shared memory, forks and supervises workers and actors,
and handles signals and the control socket. May import every other li_httpd package.

May import: li_httpd.actors, li_httpd.config, li_httpd.ops, li_httpd.shm, li_httpd.workers.
"""
