"""li_httpd.actors: supervised helper processes (config reload, active health; later ACME
renewal).

Each actor is its own process, started and restarted by the master, messaging it over
ZeroMQ ``ipc://`` endpoints in the master's 0700 runtime directory. Never imports
li_httpd.workers (an actor is not a worker) nor li_httpd.supervisor (the master imports
the actors). The reload actor needs li_httpd.config only; the health actor also writes
probe results to the shared segment (li_httpd.shm); li-log is allowed for actors to come
(an ACME actor will log like the master does).

May import: li_httpd.config, li_httpd.shm, li_httpd.ops.log.
"""
