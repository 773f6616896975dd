"""li_httpd.actors: supervised helper processes (config reload; later ACME renewal).

Each actor is its own process, started and restarted by the master, messaging it over
ZeroMQ ``ipc://`` endpoints in the master's 0700 runtime directory. May import
li_httpd.config and li_httpd.shm; never imports li_httpd.workers.
"""
