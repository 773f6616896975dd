"""TLS for the benchmark listeners: a throwaway CA and leaf, made at run time.

A scenario with ``[server] tls = true`` gets one :class:`BenchTls` per run, written into
the run's temporary directory (never committed, removed with it) by the same generator
the TLS scan uses (``ops/tls_scan.throwaway_pki``: EC P-256, a test CA and a
localhost/127.0.0.1 leaf). Every server of the scenario is started with that leaf (each
in its own format: a chain and a key file, or HAProxy's one combined PEM), and the verify
client checks the chain against the CA, so a peer serving the wrong certificate fails
verification instead of being measured.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from li_httpd.ops.tls_scan import throwaway_pki


@dataclass(frozen=True)
class BenchTls:
    """PEM files under a run's work directory."""

    ca: Path
    """The test CA's certificate: what clients trust."""
    cert: Path
    """The leaf's chain, leaf first (li-httpd, nginx, Caddy)."""
    key: Path
    """The leaf's private key (mode 0600)."""
    combined: Path
    """Chain then key in one file, as HAProxy's ``crt`` wants it (mode 0600)."""


def make(directory: Path) -> BenchTls:
    """A new CA and leaf under ``directory/tls``."""
    tls_dir = directory / "tls"
    tls_dir.mkdir(mode=0o700, exist_ok=True)
    ca, cert, key = throwaway_pki(tls_dir)
    combined = tls_dir / "combined.pem"
    combined.touch(mode=0o600)
    combined.write_bytes(cert.read_bytes() + key.read_bytes())
    return BenchTls(ca, cert, key, combined)


def client_context(ca: Path) -> ssl.SSLContext:
    """A client context that trusts only ``ca`` and checks the host name (the leaf names
    localhost and 127.0.0.1)."""
    return ssl.create_default_context(cafile=str(ca))
