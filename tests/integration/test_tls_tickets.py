"""TLS session resumption and ticket-key rotation on a real 2-worker gateway.

Tickets are encrypted with the generation's listener-context keys, shared by its
workers; ``ctl rotate-tickets`` (and ``ticket_rotation``) start a new generation, whose
new keys no longer accept the old tickets."""

from __future__ import annotations

import re
import socket
import ssl
from pathlib import Path

import httpx
import pytest

from .conftest import Gateway, gateway_config

pytestmark = pytest.mark.integration

ROTATED = re.compile(r"session tickets rotated: generation (\d+), next rotation \S+Z")
REQUEST = b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def _start(start_gateway, tmp_path: Path, tls: str = "") -> Gateway:
    extra = (f'[server.tls]\nmode = "self_signed"\ncert_dir = "{tmp_path / "certs"}"\n'
             f'min_protocol = "1.2"\n{tls}')
    return start_gateway(gateway_config("http://127.0.0.1:9", extra=extra))


def _client(tmp_path: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tmp_path / "certs" / "self_signed.crt"))
    context.minimum_version = context.maximum_version = version
    return context


def _get(gateway: Gateway, context: ssl.SSLContext,
         session: ssl.SSLSession | None) -> tuple[bool, ssl.SSLSession | None]:
    """One request on a new connection offering ``session``: (resumed?, the session to
    offer next). The whole response is read, so TLS 1.3 tickets (sent after the
    handshake) have arrived."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
        tls.sendall(REQUEST)
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data[:100]
        return tls.session_reused, tls.session


def _requests_per_worker(gateway: Gateway) -> list[int]:
    status = gateway.status()
    return [w["requests"] for w in status["workers"] if w["generation"] == status["generation"]]


VERSIONS = [pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2"),
            pytest.param(ssl.TLSVersion.TLSv1_3, id="tls1.3")]


@pytest.mark.parametrize("version", VERSIONS)
def test_a_session_resumes_on_every_worker_of_a_generation(start_gateway, tmp_path: Path,
                                                           version: ssl.TLSVersion) -> None:
    gateway = _start(start_gateway, tmp_path)
    context = _client(tmp_path, version)
    resumed, session = _get(gateway, context, None)
    assert not resumed and session is not None
    results = []
    # Until both workers have served some of the resumed connections (the kernel picks
    # the worker); every one of them resumes with the first connection's session.
    for _ in range(60):
        results.append(_get(gateway, context, session)[0])
        if len(results) >= 4 and all(_requests_per_worker(gateway)):
            break
    assert all(_requests_per_worker(gateway)), "one worker served every connection"
    assert all(results), results


@pytest.mark.parametrize("version", VERSIONS)
def test_rotate_tickets_makes_old_tickets_useless(start_gateway, tmp_path: Path,
                                                   version: ssl.TLSVersion) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    gateway = _start(start_gateway, tmp_path, 'ticket_rotation = "1d"\n\n[metrics]\n'
                     f'enabled = true\nlisten = "127.0.0.1:{metrics_port}"\n')
    context = _client(tmp_path, version)
    _, before = _get(gateway, context, None)
    assert _get(gateway, context, before)[0]
    status = gateway.status()
    assert status["tickets"]["session_tickets"] is True
    assert status["tickets"]["rotation_s"] == 86400
    first_due = status["tickets"]["next_rotation"]

    rotated = gateway.ctl("rotate-tickets")
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert "session tickets rotated: generation 1" in rotated.stdout
    found = gateway.output.wait_for(ROTATED, 10)
    assert found.group(1) == "1"

    resumed, after = _get(gateway, context, before)
    assert not resumed  # the old ticket is refused: a full handshake
    assert _get(gateway, context, after)[0]  # a ticket from the new keys resumes
    status = gateway.status()
    assert status["generation"] == 1
    assert status["tickets"]["rotations"] == 1
    assert status["tickets"]["next_rotation"] >= first_due  # counted from the rotation
    assert "tickets  keys rotated every 1d" in gateway.ctl("status").stdout
    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    assert 'li_tls_ticket_rotations_total{result="ok"} 1.0' in metrics


def test_without_session_tickets_nothing_resumes(start_gateway, tmp_path: Path) -> None:
    gateway = _start(start_gateway, tmp_path, "session_tickets = false\n")
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = _client(tmp_path, version)
        _, session = _get(gateway, context, None)
        assert not _get(gateway, context, session)[0], version
    refused = gateway.ctl("rotate-tickets")
    assert refused.returncode == 1
    assert "no session tickets to rotate" in refused.stdout
    assert "tickets  off" in gateway.ctl("status").stdout
