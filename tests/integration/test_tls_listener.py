"""TLS termination: self_signed and manual certificates on the gateway's listener."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from li_httpd.config import load_text
from li_httpd.supervisor.tls import ensure_self_signed

from .conftest import Gateway, MockUpstream, gateway_config, raw_exchange

pytestmark = pytest.mark.integration


def _tls_config(mock: MockUpstream, tls: str, static_root: Path | None = None) -> str:
    routes = '"GET /health" = "static:healthcheck"\n"/v1/*" = "proxy:main"\n'
    extra = tls
    if static_root is not None:
        routes += '"GET /files/**" = "static:site"\n'
        extra += f'\n[static.site]\nroot = "{static_root}"\n'
    return gateway_config(mock.origin, routes=routes, extra=extra)


def test_self_signed_certificate_is_generated_and_served(mock: MockUpstream, start_gateway,
                                                         tmp_path: Path) -> None:
    cert_dir = tmp_path / "certs"
    root = tmp_path / "site"
    root.mkdir()
    (root / "big.bin").write_bytes(bytes(range(256)) * 1024)
    config = _tls_config(mock, f'[server.tls]\nmode = "self_signed"\ncert_dir = "{cert_dir}"\n',
                         root.resolve())
    gateway = start_gateway(config)
    assert gateway.url.startswith("https://")
    cert = cert_dir / "self_signed.crt"
    assert (cert_dir.stat().st_mode & 0o777) == 0o700
    assert ((cert_dir / "self_signed.key").stat().st_mode & 0o777) == 0o600
    assert "sha256=" in gateway.output.text()
    context = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(base_url=gateway.url, verify=context, timeout=10) as client:
        assert client.get("/health").json() == {"status": "ok"}
        payload = {"model": "m", "stream": True, "messages": []}
        with client.stream("POST", "/v1/chat/completions?tokens=4&delay_ms=20",
                           json=payload) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"
        big = client.get("/files/big.bin")  # larger than one TLS record: no sendfile path
        assert big.content == bytes(range(256)) * 1024
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{gateway.url}/health", timeout=5)  # untrusted without the pinned cert


def test_plaintext_to_a_tls_listener_gets_nothing_useful(mock: MockUpstream, start_gateway,
                                                         tmp_path: Path) -> None:
    config = _tls_config(mock, f'[server.tls]\nmode = "self_signed"\n'
                               f'cert_dir = "{tmp_path / "c"}"\n')
    gateway = start_gateway(config)
    reply = raw_exchange(gateway.port, b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n", timeout=5)
    assert b'{"status":"ok"}' not in reply


def test_manual_certificate(mock: MockUpstream, start_gateway, tmp_path: Path) -> None:
    # Reuse the self-signed generator to make a certificate, then configure it manually.
    scratch = tmp_path / "made"
    made = load_text(_tls_config(mock, f'[server.tls]\nmode = "self_signed"\n'
                                       f'cert_dir = "{scratch}"\n'), "x.toml").config
    cert, key = ensure_self_signed(made)
    config = _tls_config(mock, f'[server.tls]\nmode = "manual"\n'
                               f'[server.tls.manual]\ncert = "{cert}"\nkey = "{key}"\n')
    gateway = start_gateway(config)
    context = ssl.create_default_context(cafile=cert)
    response = httpx.get(f"{gateway.url}/health", verify=context, timeout=10)
    assert response.status_code == 200
    assert response.extensions["http_version"] == b"HTTP/1.1"


def test_bad_tls_record_from_a_client_does_not_mark_the_peer_down(mock: MockUpstream,
                                                                   start_gateway,
                                                                   tmp_path: Path) -> None:
    """A client that breaks its own TLS stream in the middle of a streamed request body
    must cost only its connection. At 9447c3b the client's TLS error was counted as the
    upstream's failure: one such client per max_fails took the peer down for everyone."""
    upstreams = f'[upstreams.main]\npeers = ["{mock.origin}"]\nmax_fails = 1\n'
    config = gateway_config(mock.origin, upstreams=upstreams,
                            routes='"/v1/*" = "proxy:main"\n',
                            extra=f'[server.tls]\nmode = "self_signed"\n'
                                  f'cert_dir = "{tmp_path / "certs"}"\n')
    gateway = start_gateway(config)
    context = ssl.create_default_context(cafile=str(tmp_path / "certs" / "self_signed.crt"))
    host = gateway.url.split("//")[1].split(":")[0]
    with socket.create_connection((host, gateway.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        # More than the gateway buffers before it contacts the upstream, so the rest of
        # the body is being streamed to the peer when the bad record arrives.
        tls.sendall(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\ncontent-type: text/plain\r\n"
                    b"content-length: 400000\r\n\r\n" + b"x" * 200000)
        time.sleep(0.3)
        os.write(tls.fileno(), b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # a record with a bad MAC
        time.sleep(0.3)
    with httpx.Client(base_url=gateway.url, verify=context, timeout=10) as client:
        response = client.get("/v1/models")
    assert response.status_code == 200, response.text
    assert "upstream failed" not in (tmp_path / "logs" / "error.log").read_text()


def _tls12_gateway(mock: MockUpstream, start_gateway, tmp_path: Path) -> tuple[Gateway, Path]:
    config = _tls_config(mock, f'[server.tls]\nmode = "self_signed"\nmin_protocol = "1.2"\n'
                               f'cert_dir = "{tmp_path / "certs"}"\n')
    return start_gateway(config), tmp_path / "certs" / "self_signed.crt"


def test_alpn_never_selects_h2(mock: MockUpstream, start_gateway, tmp_path: Path) -> None:
    """The listener speaks HTTP/1.1 only: a client offering h2 first gets http/1.1, a
    client offering only h2 gets no protocol, and an HTTP/2 connection preface sent
    anyway is answered 505 (so no HTTP/2 stream machinery, and none of its floods, is
    reachable)."""
    gateway, cert = _tls12_gateway(mock, start_gateway, tmp_path)
    for offered, selected in ((["h2", "http/1.1"], "http/1.1"), (["h2"], None)):
        context = ssl.create_default_context(cafile=str(cert))
        context.set_alpn_protocols(offered)
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == selected
            if selected is None:
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                reply = b""
                while chunk := tls.recv(65536):
                    reply += chunk
                assert reply.startswith(b"HTTP/1.1 505"), reply


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_client_initiated_renegotiation_is_refused(mock: MockUpstream, start_gateway,
                                                   tmp_path: Path) -> None:
    """On a TLS 1.2 connection a client asks for a renegotiation (``openssl s_client``'s
    ``R`` command) between two requests: the gateway refuses it and the connection ends,
    so renegotiation can neither splice a prefix into a session nor be repeated to burn
    the worker's CPU. The first request proves the session worked."""
    gateway, cert = _tls12_gateway(mock, start_gateway, tmp_path)
    client = subprocess.Popen(
        ["openssl", "s_client", "-tls1_2", "-crlf", "-CAfile", str(cert),
         "-servername", "localhost", "-connect", f"127.0.0.1:{gateway.port}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert client.stdin is not None
    for line, pause in ((b"GET /health HTTP/1.1\nHost: a\n\n", 1.0), (b"R\n", 1.0),
                        (b"GET /health HTTP/1.1\nHost: a\n\n", 1.0)):
        with contextlib.suppress(BrokenPipeError):
            client.stdin.write(line)
            client.stdin.flush()
        time.sleep(pause)
    output, _ = client.communicate(timeout=15)
    assert b"RENEGOTIATING" in output, output  # the command was run, not sent as data
    assert output.count(b'{"status":"ok"}') == 1, output
    assert b"no renegotiation" in output or b"alert" in output, output


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_protocol_and_cipher_defaults(mock: MockUpstream, start_gateway,
                                      tmp_path: Path) -> None:
    """Against the running gateway (min_protocol = "1.2"): TLS 1.3 when offered, TLS 1.1
    refused, on TLS 1.2 an ECDHE+AEAD suite accepted and a CBC suite refused."""
    gateway, cert = _tls12_gateway(mock, start_gateway, tmp_path)

    def handshake(maximum: ssl.TLSVersion, ciphers: str | None = None) -> ssl.SSLSocket:
        context = ssl.create_default_context(cafile=str(cert))
        if maximum < ssl.TLSVersion.TLSv1_2:
            context.set_ciphers("ALL:@SECLEVEL=0")  # so the client offers TLS 1.1 at all
            context.minimum_version = maximum
        elif ciphers:
            context.set_ciphers(ciphers)
        context.maximum_version = maximum
        raw = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
        try:
            return context.wrap_socket(raw, server_hostname="localhost")
        except BaseException:
            raw.close()
            raise

    with handshake(ssl.TLSVersion.TLSv1_3) as tls:
        assert tls.version() == "TLSv1.3"
    with handshake(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES256-GCM-SHA384") as tls:
        assert tls.version() == "TLSv1.2"
        assert tls.cipher()[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"  # type: ignore[index]
    for maximum, ciphers in ((ssl.TLSVersion.TLSv1_1, None),
                             (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA256"),
                             (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES256-SHA")):
        with pytest.raises(ssl.SSLError):
            handshake(maximum, ciphers).close()
