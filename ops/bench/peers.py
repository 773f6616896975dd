"""The optional peers beside nginx and li-httpd: HAProxy, Caddy (proxy oracles) and
Portkey's gateway (an AI gateway, beside LiteLLM).

Each may be absent from the machine: :func:`missing` says so in one line, the harness
reports that line instead of numbers and skips the peer (a failure only where the peer
must exist: HAProxy and Caddy under ``LI_HTTPD_REQUIRE_EXTERNAL=1``, as in CI, which
installs them through ops/setup-system). :func:`server` renders the peer's config from
the scenario and returns the process to start; :func:`client_headers` are what a client
of that peer must send on every request (Portkey is told its provider and upstream by
headers), added by the harness to verify and load requests for that peer only.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from . import render_peers
from .benchconfig import HERE
from .procs import Server
from .tls import BenchTls

PORTKEY = HERE / "portkey"
PORTKEY_DIR = HERE / ".portkey"
PORTKEY_SERVER = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / \
    "start-server.js"

# Peers installed as system packages by ops/setup-system (lang -> executable).
SYSTEM = {"haproxy": "haproxy", "caddy": "caddy"}
LANGS = frozenset({*SYSTEM, "portkey"})


def required() -> bool:
    """CI sets ``LI_HTTPD_REQUIRE_EXTERNAL=1``: a system peer missing there is a broken
    setup, not a machine without it."""
    return os.environ.get("LI_HTTPD_REQUIRE_EXTERNAL") == "1"


def missing(lang: str) -> str | None:
    """Why ``lang`` cannot run on this machine, or None when it is installed."""
    if lang in SYSTEM and shutil.which(SYSTEM[lang]) is None:
        return f"unavailable: {SYSTEM[lang]} not installed (bash ops/setup-system)"
    if lang == "portkey" and not (PORTKEY_SERVER.exists() and shutil.which("node")):
        return "unavailable: not installed (bash ops/bench/portkey/setup)"
    return None


def server(lang: str, config: Mapping[str, Any], work: Path, port: int,
           origins: Sequence[str], tls: BenchTls | None = None) -> Server | str:
    """The (not yet started) server for ``lang``, or why it cannot serve this scenario."""
    scheme: Literal["http", "https"] = "https" if tls else "http"
    try:
        if lang == "haproxy":
            conf = work / "haproxy.cfg"
            conf.write_text(render_peers.gateway_haproxy(config, work, port, origins, tls))
            # -db: foreground, no daemon; -W would add a master process for reloads only.
            return Server("haproxy", ["haproxy", "-db", "-f", str(conf)], port,
                          work / "haproxy.log", scheme=scheme)
        if lang == "caddy":
            conf = work / "Caddyfile"
            conf.write_text(render_peers.gateway_caddy(config, work, port, origins, tls))
            return Server("caddy", ["caddy", "run", "--adapter", "caddyfile", "--config",
                                    str(conf)], port, work / "caddy.log",
                          env=render_peers.caddy_env(config, work), scheme=scheme)
    except ValueError as exc:
        return f"unavailable: {exc}"
    if lang == "portkey":
        if len(origins) != 1:
            return "unavailable: one upstream only (x-portkey-custom-host names one)"
        return Server("portkey", ["bash", str(PORTKEY / "run"), "--port", str(port)], port,
                      work / "portkey.log")
    return f"unknown lang {lang}"


def client_headers(lang: str, origins: Sequence[str]) -> list[str]:
    """Headers every request to ``lang`` carries: for Portkey, the provider (OpenAI's
    API shape), the upstream it stands for (``x-portkey-custom-host``) and a key for the
    OpenAI provider to send on (the mock ignores it). None for the other servers."""
    if lang != "portkey" or not origins:
        return []
    return ["x-portkey-provider: openai", f"x-portkey-custom-host: {origins[0]}/v1",
            "authorization: Bearer dummy"]
