"""Rendering every server's configuration from one scenario, so all compare like with like.

The same scenario TOML produces: the nginx gateway config (templates/nginx.conf.in), the
li-httpd config, the upstream nginx config (static fixtures and a ``return 200``), and
the fixture files. Parity rules encoded here: same worker count, same upstream
keep-alive pool size, no access logs on either gateway, nginx buffering off for SSE.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from string import Template
from typing import Any

from .benchconfig import HERE, get
from .tls import BenchTls

SMALL_BODY = "hello world\n"
UPSTREAM_KEEPALIVE = 64


def fixture_bytes(size: int) -> bytes:
    """Deterministic, incompressible-looking content of ``size`` bytes."""
    block = hashlib.sha256(b"li-httpd bench fixture").digest()
    out = bytearray()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:size])


def write_fixtures(config: Mapping[str, Any], directory: Path) -> dict[str, bytes]:
    """Fixture files under ``directory/files``; returns name -> content."""
    files = directory / "files"
    files.mkdir(mode=0o755, parents=True, exist_ok=True)
    directory.chmod(0o755)
    written: dict[str, bytes] = {}
    for spec in get(config, "fixtures.files", []):
        content = fixture_bytes(int(spec["bytes"]))
        (files / spec["name"]).write_bytes(content)
        written[spec["name"]] = content
    return written


def nginx_config(name: str, work: Path, port: int, workers: int, upstream: str,
                 locations: str, http_extra: str = "", tls: BenchTls | None = None) -> str:
    """templates/nginx.conf.in filled in: pid and error log under ``work``, one server on
    127.0.0.1:``port``; ``upstream`` and ``http_extra`` go into the http block. With
    ``tls`` the server listens with TLS 1.2 and 1.3 (nginx 1.22's default would also
    allow 1.0 and 1.1) and nginx's other TLS defaults (session tickets on, no session
    cache)."""
    template = Template((HERE / "templates" / "nginx.conf.in").read_text())
    server_extra = (f"        ssl_certificate {tls.cert};\n"
                    f"        ssl_certificate_key {tls.key};\n"
                    f"        ssl_protocols TLSv1.2 TLSv1.3;\n" if tls else "")
    return template.substitute(name=name, work=work, port=port, workers=workers,
                               upstream=upstream + ("\n    " + http_extra if http_extra else ""),
                               locations=locations, listen_flags=" ssl" if tls else "",
                               server_extra=server_extra)


def upstream_nginx(work: Path, port: int, static_root: Path) -> str:
    locations = (f"        location = /small {{ default_type text/plain; "
                 f"return 200 \"{SMALL_BODY.strip()}\\n\"; }}\n"
                 f"        location /files/ {{ root {static_root}; }}")
    return nginx_config("upstream", work, port, 1, "", locations)


def gateway_nginx(config: Mapping[str, Any], work: Path, port: int, peers: Sequence[str],
                  static_root: Path, tls: BenchTls | None = None) -> str:
    workers = int(get(config, "global.workers", 2))
    kind = get(config, "server.kind", "proxy")
    extra_location = get(config, "nginx.location", "")
    if kind == "static":
        locations = f"        location /files/ {{ root {static_root}; {extra_location} }}"
        return nginx_config("gateway", work, port, workers, "", locations,
                            get(config, "nginx.http", ""), tls)
    balance = "least_conn;" if get(config, "server.balance") == "least_conn" else ""
    servers = " ".join(f"server {peer.removeprefix('http://')};" for peer in peers)
    upstream = (f"    upstream up {{ {balance} {servers} "
                f"keepalive {UPSTREAM_KEEPALIVE}; }}")
    sse = ("proxy_buffering off; proxy_cache off; proxy_read_timeout 300s;"
           if get(config, "server.sse") else "")
    locations = (f"        location / {{ proxy_pass http://up; proxy_http_version 1.1; "
                 f"proxy_set_header Connection \"\"; {sse} {extra_location} }}")
    return nginx_config("gateway", work, port, workers, upstream, locations,
                        get(config, "nginx.http", ""), tls)


def gateway_li(config: Mapping[str, Any], work: Path, port: int, peers: Sequence[str],
               static_root: Path, request_logs: Sequence[str] = (),
               tls: BenchTls | None = None) -> str:
    """``request_logs``: sinks to turn on ("access", "audit"); by default none, for parity
    with nginx's ``access_log off``. ``tls``: a manual-mode certificate with li-httpd's
    TLS defaults (min_protocol 1.3, session tickets)."""
    workers = int(get(config, "global.workers", 2))
    kind = get(config, "server.kind", "proxy")
    lines = [
        "[server]", f'listen = "127.0.0.1:{port}"', 'profile = "dev"', f"workers = {workers}",
        f'control_socket = "{work}/li-control.sock"', "",
        *(['[server.tls]', 'mode = "manual"',
           "[server.tls.manual]", f'cert = "{tls.cert}"', f'key = "{tls.key}"', ""]
          if tls else []),
        "[limits]", "keepalive_requests = 1000000", "max_connections = 8192", "",
        "[log]", f'dir = "{work}/li-logs"',
        "[log.access]", f"enabled = {'true' if 'access' in request_logs else 'false'}",
        "[log.audit]", f"enabled = {'true' if 'audit' in request_logs else 'false'}", "",
    ]
    if kind == "static":
        lines += ["[static.site]", f'root = "{static_root}"', "", "[routes]",
                  '"GET /files/*" = "static:site"']
    else:
        peer_list = ", ".join(f'"{peer}"' for peer in peers)
        balance = get(config, "server.balance", "round_robin")
        lines += ["[upstreams.up]", f"peers = [{peer_list}]", f'balance = "{balance}"',
                  f"keepalive = {UPSTREAM_KEEPALIVE}", 'read_timeout = "5m"', "",
                  "[routes]", '"/" = "proxy:up"']
    text = "\n".join(lines) + "\n"
    for extra in (get(config, "li.extra", ""),):
        if extra:
            text += "\n" + extra.strip() + "\n"
    return text


def wrk_script(method: str, body: str, headers: Sequence[str]) -> str:
    """A wrk Lua script for a POST body and extra headers."""
    escaped = body.replace("\\", "\\\\").replace('"', '\\"')
    lines = [f'wrk.method = "{method}"', f'wrk.body = "{escaped}"',
             'wrk.headers["Content-Type"] = "application/json"']
    for header in headers:
        name, _, value = header.partition(":")
        lines.append(f'wrk.headers["{name.strip()}"] = "{value.strip()}"')
    return "\n".join(lines) + "\n"
