"""li_httpd.supervisor: the master process and the command line.

The only code that forks (generations.py holds the one ``os.fork``). The master stays
synchronous (no trio): it validates the config, binds listeners, creates shared memory,
forks and supervises workers and the reload actor, and handles signals and the control
socket, all from one main loop.

Modules: master.py (the main loop, startup, stopping, status), listeners.py (bind, keep
and close listening sockets), generations.py (worker slots and generations, forking
workers and the actor), reaper.py (reaping and the crash policy, pure functions),
reload.py (a reload as phases the main loop steps), control.py (the control socket
protocol), shared_state.py (releasing a dead worker's Redis stream leases), tls.py
(contexts and the certificate swap), tickets.py (when the session ticket keys rotate),
sdnotify.py, runtime.py, and the CLI (cli.py, commands.py, ctl.py, setup_tls.py).

May import: li_httpd.actors, li_httpd.config, li_httpd.ops, li_httpd.shm, li_httpd.workers.
"""
