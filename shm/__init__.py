"""li_httpd.shm: the only code that knows shared-memory layouts.

Fixed-layout records for state that must hold across workers (rate limits, stream
counters, least-connection counts, passive health). The master creates segments before
it forks; workers use what they inherit. May import li_httpd.config only.
"""
