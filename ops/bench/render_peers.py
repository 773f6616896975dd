"""HAProxy and Caddy configs rendered from a scenario, as further proxy oracles beside nginx.

The parity rules are render.py's: the same upstream peers and balancing, the same worker
count where the server has such a knob (HAProxy ``nbthread``; Caddy is one Go process,
sized by ``GOMAXPROCS``, see :func:`caddy_env`), a keep-alive pool to the upstream of
``UPSTREAM_KEEPALIVE`` idle connections, no access log, and for SSE scenarios nothing
buffered or compressed between upstream and client (HAProxy ``option http-no-delay``
and no ``compression`` directive; Caddy ``flush_interval -1``). Static scenarios are not
rendered: both servers are compared as reverse proxies only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .benchconfig import get
from .render import UPSTREAM_KEEPALIVE
from .tls import BenchTls

# li-httpd's and nginx's read timeout for SSE is 5 minutes; a stream must not be cut by
# the proxy before the load ends.
STREAM_TIMEOUT = "300s"


def _hosts(peers: Sequence[str]) -> list[str]:
    return [peer.removeprefix("http://") for peer in peers]


def _proxy_only(config: Mapping[str, Any], server: str) -> None:
    if get(config, "server.kind", "proxy") != "proxy":
        raise ValueError(f"{server} is benchmarked as a reverse proxy only, "
                         f"not for server.kind = {get(config, 'server.kind')!r}")


def gateway_haproxy(config: Mapping[str, Any], work: Path, port: int,
                    peers: Sequence[str], tls: BenchTls | None = None) -> str:
    """haproxy.cfg for ``haproxy -db -f FILE`` (foreground, one process). ``tls``: the
    listener terminates TLS with HAProxy's defaults (TLS 1.2 and up, tickets on)."""
    _proxy_only(config, "haproxy")
    workers = int(get(config, "global.workers", 2))
    balance = "leastconn" if get(config, "server.balance") == "least_conn" else "roundrobin"
    streaming = ("    # SSE: send each event as it arrives (no Nagle, no merging of writes);\n"
                 "    # no `compression` directive, so nothing holds events back to compress.\n"
                 "    option http-no-delay" if get(config, "server.sse") else
                 "    # Not SSE: HAProxy's default (no compression either).")
    servers = "\n".join(
        # pool-max-conn: the idle keep-alive connections kept per upstream server, as
        # nginx's `keepalive` and li-httpd's `keepalive` (per upstream there).
        f"    server s{index} {host} pool-max-conn {UPSTREAM_KEEPALIVE}"
        for index, host in enumerate(_hosts(peers)))
    return f"""\
# Rendered by ops/bench/render_peers.py from the scenario's TOML; do not edit the output.
global
    nbthread {workers}
    # As nginx (worker_connections 8192) and li-httpd (max_connections = 8192); HAProxy
    # needs two descriptors per connection, within the 20000 hard limit seen here.
    maxconn 8192
    pidfile {work}/haproxy.pid
    # No `log` line: no access log, as nginx (access_log off) and li-httpd.

defaults
    mode http
    option http-keep-alive
    # Idle upstream connections are shared between client connections (as nginx's
    # and li-httpd's keep-alive pools are), not tied to one client connection.
    http-reuse always
    timeout connect 5s
    timeout client {STREAM_TIMEOUT}
    timeout server {STREAM_TIMEOUT}
    timeout http-keep-alive 65s
    timeout http-request 10s
{streaming}

frontend gateway
    bind 127.0.0.1:{port}{f" ssl crt {tls.combined}" if tls else ""}
    default_backend up

backend up
    balance {balance}
{servers}
"""


def gateway_caddy(config: Mapping[str, Any], work: Path, port: int,
                  peers: Sequence[str], tls: BenchTls | None = None) -> str:
    """A Caddyfile for ``caddy run --adapter caddyfile --config FILE``. ``tls``: the site
    is served over TLS with the given certificate (Caddy's defaults: TLS 1.2 and up)
    and nothing obtained automatically."""
    _proxy_only(config, "caddy")
    balance = "least_conn" if get(config, "server.balance") == "least_conn" else "round_robin"
    sse = bool(get(config, "server.sse"))
    upstreams = " ".join(_hosts(peers))
    flush = ("        # SSE: write each chunk to the client as soon as it is read.\n"
             "        flush_interval -1\n" if sse else "")
    scheme, certificate = ("https", f"    tls {tls.cert} {tls.key}\n") if tls else ("http", "")
    return f"""\
# Rendered by ops/bench/render_peers.py from the scenario's TOML; do not edit the output.
{{
    # No admin endpoint, no certificates: a plain HTTP reverse proxy. (Its autosaved
    # config and data go under the work directory, see caddy_env.)
    admin off
    auto_https off
    storage file_system {work}/caddy-data
    grace_period 2s
}}

# No `log` directive: no access log, as nginx (access_log off) and li-httpd.
{scheme}://127.0.0.1:{port} {{
{certificate}    reverse_proxy {upstreams} {{
        lb_policy {balance}
{flush}        transport http {{
            # The idle keep-alive pool to the upstream, as nginx's `keepalive`.
            keepalive 65s
            keepalive_idle_conns {UPSTREAM_KEEPALIVE}
            keepalive_idle_conns_per_host {UPSTREAM_KEEPALIVE}
            read_timeout {STREAM_TIMEOUT}
        }}
    }}
}}
"""


def caddy_env(config: Mapping[str, Any], work: Path) -> dict[str, str]:
    """Caddy's environment: ``GOMAXPROCS`` = the scenario's worker count (the Go
    scheduler's OS threads running Go code, the nearest thing Caddy has to workers), and
    its home/data/config directories under ``work`` so nothing is written to ``~``."""
    return {"GOMAXPROCS": str(int(get(config, "global.workers", 2))), "HOME": str(work),
            "XDG_DATA_HOME": str(work / "caddy-data"),
            "XDG_CONFIG_HOME": str(work / "caddy-config")}
