"""https:// peers: the gateway verifies the upstream certificate and speaks TLS to it."""

from __future__ import annotations

import datetime
import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .conftest import gateway_config

pytestmark = pytest.mark.integration


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
                 issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def tls_upstream(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "li-httpd test CA")])
    ca_cert = _certificate("li-httpd test CA", ca_key, ca_name, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate("localhost", key, ca_name, ca_key, ca=False)
    (tmp_path / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = b"secure hello"
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], tmp_path / "ca.pem"
    server.shutdown()


def test_https_peer_verified_with_ca_file(tls_upstream: tuple[int, Path],
                                          start_gateway) -> None:
    port, ca = tls_upstream
    upstreams = (f'[upstreams.main]\npeers = ["https://localhost:{port}"]\n'
                 f'ca_file = "{ca}"\n')
    gateway = start_gateway(gateway_config("", upstreams=upstreams))
    with gateway.client() as client:
        for _ in range(3):  # the second and third reuse the pooled TLS connection
            response = client.get("/anything")
            assert response.status_code == 200
            assert response.text == "secure hello"


def test_https_peer_with_untrusted_certificate_is_refused(tls_upstream: tuple[int, Path],
                                                          start_gateway) -> None:
    port, _ = tls_upstream
    upstreams = f'[upstreams.main]\npeers = ["https://localhost:{port}"]\n'
    gateway = start_gateway(gateway_config("", upstreams=upstreams))
    with gateway.client() as client:
        response = client.get("/anything")
    assert response.status_code == 502
    assert "secure hello" not in response.text
