"""Certificate swap on a running 2-worker gateway: `ctl reload` (or SIGHUP) after the
certificate files changed serves the new certificate to new connections, while
established keep-alive connections continue; a broken new pair is refused."""

from __future__ import annotations

import contextlib
import hashlib
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from li_httpd.supervisor.tls import cert_info, self_signed_pem, write_private

from .conftest import Gateway, MockUpstream, gateway_config

pytestmark = pytest.mark.integration
CONNECTIONS = 6
"""Enough connections that both workers hold some (the kernel spreads accepts)."""


def _pair(directory: Path, name: str) -> str:
    cert, key = self_signed_pem([name, "localhost"], ["127.0.0.1"], 60)
    write_private(str(directory / "gw.key"), key, 0o600)
    write_private(str(directory / "gw.crt"), cert, 0o600)
    return cert_info(cert, key, "gw.crt", "manual").fingerprint


def _client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test compares fingerprints instead
    return context


def _fingerprint(tls: ssl.SSLSocket) -> str:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).digest().hex(":").upper()


def _get_health(tls: ssl.SSLSocket) -> None:
    tls.sendall(b"GET /health HTTP/1.1\r\nHost: gw.test\r\n\r\n")
    data = b""
    while b'"ok"}' not in data:
        chunk = tls.recv(4096)
        assert chunk, f"connection closed; got {data!r}"
        data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data
    assert b"connection: close" not in data.lower()


@contextlib.contextmanager
def _connections(port: int, count: int) -> Iterator[list[ssl.SSLSocket]]:
    opened: list[ssl.SSLSocket] = []
    try:
        for _ in range(count):
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            opened.append(_client_context().wrap_socket(raw, server_hostname="gw.test"))
        yield opened
    finally:
        for tls in opened:
            tls.close()


def _new_fingerprints(port: int) -> set[str]:
    with _connections(port, CONNECTIONS) as fresh:
        for tls in fresh:
            _get_health(tls)
        return {_fingerprint(tls) for tls in fresh}


def _start(mock: MockUpstream, start_gateway, tmp_path: Path) -> tuple[Gateway, Path, str]:
    certs = tmp_path / "certs"
    certs.mkdir(mode=0o700)
    old = _pair(certs, "old.test")
    tls = (f'[server.tls]\nmode = "manual"\n[server.tls.manual]\n'
           f'cert = "{certs / "gw.crt"}"\nkey = "{certs / "gw.key"}"\n')
    gateway = start_gateway(gateway_config(mock.origin, extra=tls, workers=2))
    return gateway, certs, old


def test_reload_swaps_the_certificate_without_dropping_connections(
        mock: MockUpstream, start_gateway, tmp_path: Path) -> None:
    gateway, certs, old = _start(mock, start_gateway, tmp_path)
    workers = sorted(gateway.workers())
    assert len(workers) == 2
    assert gateway.status()["certificates"][0]["fingerprint"] == old
    with _connections(gateway.port, CONNECTIONS) as established:
        for tls in established:
            _get_health(tls)
            assert _fingerprint(tls) == old
        new = _pair(certs, "new.test")
        reload = gateway.ctl("reload")
        assert reload.returncode == 0, reload.stdout + reload.stderr
        assert "certificate swapped" in reload.stdout
        for tls in established:  # every established connection's next request succeeds
            _get_health(tls)
        assert _new_fingerprints(gateway.port) == {new}
        for tls in established:
            _get_health(tls)
    status = gateway.status()
    assert sorted(gateway.workers()) == workers  # same workers, same generation
    assert status["generation"] == 0
    cert = status["certificates"][0]
    assert (cert["fingerprint"], cert["source"], cert["next_renewal"]) == (new, "manual", "-")
    assert "new.test" in cert["names"] and cert["days_left"] in (59, 60)
    text = gateway.ctl("status").stdout
    assert "certificates" in text and "new.test" in text


def test_a_broken_pair_is_refused_and_sighup_swaps_too(
        mock: MockUpstream, start_gateway, tmp_path: Path) -> None:
    gateway, certs, old = _start(mock, start_gateway, tmp_path)
    (certs / "gw.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n")
    reload = gateway.ctl("reload")
    assert reload.returncode == 1
    assert "certificate refused" in reload.stdout and "gw.key" in reload.stdout
    assert _new_fingerprints(gateway.port) == {old}
    assert gateway.status()["certificates"][0]["fingerprint"] == old
    new = _pair(certs, "new.test")
    gateway.popen.send_signal(signal.SIGHUP)
    give_up = time.monotonic() + 20
    while gateway.status()["certificates"][0]["fingerprint"] != new:
        assert time.monotonic() < give_up, "SIGHUP did not swap the certificate"
        time.sleep(0.1)
    assert _new_fingerprints(gateway.port) == {new}
