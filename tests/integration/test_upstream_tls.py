"""https:// peers: the gateway verifies the upstream certificate and speaks TLS to it."""

from __future__ import annotations

import contextlib
import datetime
import http.server
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .conftest import RawServer, gateway_config

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


def _server_context(directory: Path) -> ssl.SSLContext:
    """A CA and a ``localhost`` certificate it signed, written to ``directory``
    (``ca.pem`` for the gateway's ``ca_file``); returns the server's TLS context."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "li-httpd test CA")])
    ca_cert = _certificate("li-httpd test CA", ca_key, ca_name, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate("localhost", key, ca_name, ca_key, ca=False)
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (directory / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.pem", directory / "server.key")
    return context


@pytest.fixture
def tls_upstream(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    context = _server_context(tmp_path)

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


class _InjectingTlsUpstream(RawServer):
    """A TLS upstream that answers each request with its target as the body; after
    ``/evil`` it also sends an unsolicited second response in its own TLS record, corked
    into the same TCP segment as the first, so the gateway reads both records in one
    ``recv`` and the stray one waits, still encrypted, in the TLS layer."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__()

    def handle(self, raw: socket.socket) -> None:
        with contextlib.suppress(OSError), self.context.wrap_socket(
                raw, server_side=True) as conn:
            pending = b""
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                pending += data
                while b"\r\n\r\n" in pending:
                    head, _, pending = pending.partition(b"\r\n\r\n")
                    target = head.split(b" ")[1]
                    answer = (b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s"
                              % (len(target), target))
                    if target != b"/evil":
                        conn.sendall(answer)
                        continue
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
                    conn.sendall(answer)
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nINJECTED")
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)


def test_stray_tls_record_never_reaches_the_next_client(tmp_path: Path, start_gateway) -> None:
    """A response desync over TLS: the stray response arrives in the same read as the
    real one, so the socket looks idle while the TLS layer holds an undecrypted record.
    The pooled connection must be discarded, not reused (at 9447c3b it was reused and
    the next client got INJECTED)."""
    upstream = _InjectingTlsUpstream(_server_context(tmp_path))
    try:
        upstreams = (f'[upstreams.main]\npeers = ["https://localhost:{upstream.port}"]\n'
                     f'ca_file = "{tmp_path / "ca.pem"}"\n')
        gateway = start_gateway(gateway_config("", upstreams=upstreams, workers=1))
        with gateway.client() as client:
            assert client.get("/evil").text == "/evil"
        time.sleep(0.05)
        for path in ("/victim", "/third"):
            with gateway.client() as client:
                assert client.get(path).text == path
        assert upstream.connections == 2  # the tainted connection was replaced once
    finally:
        upstream.close()


class _PlaintextUpstream(RawServer):
    """Not a TLS server: it answers every connection at once, before reading anything,
    with a plaintext HTTP response (as a man in the middle of an https peer could)."""

    def handle(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nINJECTED")
            time.sleep(1.0)


def test_a_plaintext_answer_from_an_https_peer_is_never_relayed(tmp_path: Path,
                                                               start_gateway) -> None:
    """Bytes from an https peer are read only through the TLS session: a quick plaintext
    response that arrives before (or instead of) the handshake breaks the handshake, the
    client gets a 502 and nothing of the plaintext."""
    _server_context(tmp_path)  # the CA the gateway trusts; this peer never uses it
    upstream = _PlaintextUpstream()
    try:
        upstreams = (f'[upstreams.main]\npeers = ["https://localhost:{upstream.port}"]\n'
                     f'ca_file = "{tmp_path / "ca.pem"}"\nmax_retries = 0\n')
        gateway = start_gateway(gateway_config("", upstreams=upstreams, workers=1))
        with gateway.client() as client:
            response = client.get("/anything")
        assert response.status_code == 502
        assert "INJECTED" not in response.text
    finally:
        upstream.close()


def _https_server(context: ssl.SSLContext) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = b"secure hello"
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_certificate_name_with_a_nul_byte_does_not_match(tmp_path: Path,
                                                          start_gateway) -> None:
    """A trusted CA signed ``localhost\\0.attacker.test``: a name check that stops at the
    NUL would take it for ``localhost``. The peer's name must match the whole name, so
    the handshake fails and the client gets a 502."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "li-httpd test CA")])
    ca_cert = _certificate("li-httpd test CA", ca_key, ca_name, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker.test")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost\x00.attacker.test")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (tmp_path / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    server = _https_server(context)
    try:
        upstreams = (f'[upstreams.main]\npeers = ["https://localhost:{server.server_address[1]}"]'
                     f'\nca_file = "{tmp_path / "ca.pem"}"\nmax_retries = 0\n')
        gateway = start_gateway(gateway_config("", upstreams=upstreams, workers=1))
        with gateway.client() as client:
            response = client.get("/anything")
        assert response.status_code == 502
        assert "secure hello" not in response.text
    finally:
        server.shutdown()
