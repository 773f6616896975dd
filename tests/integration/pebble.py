"""A real pebble (Let's Encrypt's test ACME server) for the ACME tests.

``Pebble.start(directory)`` generates a test CA and a ``localhost`` certificate for
pebble's own HTTPS (the Debian package ships none), picks free loopback ports, starts
``/usr/bin/pebble`` with deterministic settings (no validation sleeps, no rejected nonces,
no reused authorizations) and waits until its directory answers. Its HTTP-01 validator
connects to ``localhost:<http_port>``; whoever answers challenges listens there.

Skips when pebble is not installed, except under ``LI_HTTPD_REQUIRE_EXTERNAL=1`` (CI
installs it with ops/setup-system), where that is a failure.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PEBBLE = "/usr/bin/pebble"
DAY = datetime.timedelta(days=1)


def require_pebble() -> None:
    if not os.path.exists(PEBBLE):
        if os.environ.get("LI_HTTPD_REQUIRE_EXTERNAL") == "1":
            pytest.fail(f"{PEBBLE} not installed (LI_HTTPD_REQUIRE_EXTERNAL=1)")
        pytest.skip(f"{PEBBLE} not installed (ops/setup-system installs it)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pebble_tls(directory: Path) -> tuple[Path, Path, Path]:
    """CA file, server certificate and key for pebble's own HTTPS listeners."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - DAY).not_valid_after(now + 30 * DAY)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())

    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY).not_valid_after(now + 30 * DAY)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = (directory / "ca.pem", directory / "cert.pem",
                                    directory / "key.pem")
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_pem_key(key))
    return ca_path, cert_path, key_path


@dataclass
class Pebble:
    directory: Path
    ca: Path
    """Verifies pebble's own HTTPS (the ACME server): the ``ca_bundle`` setting."""
    port: int
    management_port: int
    http_port: int
    """Where pebble's HTTP-01 validator connects (on ``localhost``)."""
    validity: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    @classmethod
    def create(cls, directory: Path, validity: int = 3600) -> Pebble:
        require_pebble()
        directory.mkdir(parents=True, exist_ok=True)
        ca, cert, key = _pebble_tls(directory)
        pebble = cls(directory, ca, free_port(), free_port(), free_port(), validity)
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{pebble.port}",
            "managementListenAddress": f"127.0.0.1:{pebble.management_port}",
            "certificate": str(cert), "privateKey": str(key),
            "httpPort": pebble.http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
            "certificateValidityPeriod": validity}}
        (directory / "pebble.json").write_text(json.dumps(config))
        return pebble

    def start(self) -> None:
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
               "PEBBLE_AUTHZREUSE": "0"}
        log = open(self.directory / "pebble.log", "ab")  # noqa: SIM115 (the child owns it)
        self.process = subprocess.Popen([PEBBLE, "-config", str(self.directory / "pebble.json")],
                                        stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.get(self.url)
                return
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"pebble did not start: {(self.directory / 'pebble.log').read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def get(self, url: str) -> bytes:
        context = ssl.create_default_context(cafile=str(self.ca))
        with urllib.request.urlopen(url, context=context, timeout=5) as answer:
            return bytes(answer.read())

    def root(self) -> bytes:
        """The root that signs the certificates this run of pebble issues (PEM)."""
        return self.get(f"https://127.0.0.1:{self.management_port}/roots/0")


def acme_config(pebble: Pebble, cert_dir: Path, *, directory_url: str | None = None,
                http_port: int | None = None, while_missing: str = "self_signed",
                metrics_port: int = 0) -> str:
    """A loopback gateway config in lets_encrypt mode for ``localhost``, using ``pebble``
    (another ``directory_url`` or ``http_port`` makes issuance fail)."""
    metrics = (f'[metrics]\nenabled = true\nlisten = "127.0.0.1:{metrics_port}"\n'
               if metrics_port else "")
    return f"""[server]
listen = "127.0.0.1:0"
host = "localhost"
profile = "dev"
workers = 2
shutdown_timeout = "5s"

[server.tls]
mode = "lets_encrypt"
cert_dir = "{cert_dir}"

[server.tls.lets_encrypt]
email = "ops@example.com"
domains = ["localhost"]
directory_url = "{directory_url or pebble.url}"
ca_bundle = "{pebble.ca}"
http01_bind = "127.0.0.1:{http_port or pebble.http_port}"
while_missing = "{while_missing}"

{metrics}
[upstreams.main]
peers = ["http://127.0.0.1:9"]

[routes]
"GET /health" = "static:healthcheck"
"/v1/*" = "proxy:main"
"""
