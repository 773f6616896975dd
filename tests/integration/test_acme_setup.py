"""ACME against a real pebble: ``li-httpd setup-tls --acme`` issues a certificate for
the config's domains, answering HTTP-01 itself, and the files it writes are private and
chain to pebble's root; the account is reused on a second run; failures are classified.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from .conftest import cli_command
from .pebble import Pebble, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    server = Pebble.create(tmp_path_factory.mktemp("pebble"))
    server.start()
    yield server
    server.stop()


def acme_config(pebble: Pebble, cert_dir: Path, *, directory_url: str | None = None,
                http_port: int | None = None) -> str:
    return f"""[server]
listen = "127.0.0.1:0"
host = "localhost"
profile = "dev"

[server.tls]
mode = "lets_encrypt"
cert_dir = "{cert_dir}"

[server.tls.lets_encrypt]
email = "ops@example.com"
domains = ["localhost"]
directory_url = "{directory_url or pebble.url}"
ca_bundle = "{pebble.ca}"
http01_bind = "127.0.0.1:{http_port or pebble.http_port}"

[upstreams.main]
peers = ["http://127.0.0.1:9"]

[routes]
"/v1/*" = "proxy:main"
"""


def _setup(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_command("setup-tls", "--acme", "-c", str(config)),
                          capture_output=True, text=True, timeout=120, check=False)


def test_setup_tls_acme_issues_a_certificate(pebble: Pebble, tmp_path: Path) -> None:
    cert_dir = tmp_path / "certs"
    config = tmp_path / "gw.toml"
    config.write_text(acme_config(pebble, cert_dir))
    done = _setup(config)
    assert done.returncode == 0, done.stderr
    cert, key = cert_dir / "acme.crt", cert_dir / "acme.key"
    assert f"wrote {cert}" in done.stdout and f"wrote {key}" in done.stdout
    assert cert_dir.stat().st_mode & 0o777 == 0o700
    for private in (cert, key, cert_dir / "acme-account.key", cert_dir / "acme-account.json"):
        assert private.stat().st_mode & 0o777 == 0o600, private
    assert list((cert_dir / "acme-challenges").iterdir()) == []  # tokens withdrawn
    chain = x509.load_pem_x509_certificates(cert.read_bytes())
    names = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    # The chain verifies against this pebble run's root.
    root = tmp_path / "root.pem"
    root.write_bytes(pebble.root())
    context = ssl.create_default_context(cafile=str(root))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    _handshake(server, context, "localhost")

    # Second run: same account (registration is idempotent), a new certificate.
    account = (cert_dir / "acme-account.json").read_text()
    first = cert.read_bytes()
    again = _setup(config)
    assert again.returncode == 0, again.stderr
    assert (cert_dir / "acme-account.json").read_text() == account
    assert cert.read_bytes() != first


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> None:
    """A TLS handshake over memory BIOs (no sockets needed to check a chain)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        done = 0
        for side, out, peer_in in ((c, c_out, s_in), (s, s_out, c_in)):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
            peer_in.write(out.read())
        if done == 2:
            return
    raise AssertionError("handshake did not complete")


def test_setup_tls_acme_reports_a_failed_validation(pebble: Pebble, tmp_path: Path) -> None:
    # Nobody answers on the port pebble validates: the responder listens elsewhere.
    config = tmp_path / "gw.toml"
    config.write_text(acme_config(pebble, tmp_path / "certs", http_port=free_port()))
    done = _setup(config)
    assert done.returncode == 1
    assert "issuance failed (validation)" in done.stderr and "localhost" in done.stderr
    assert not (tmp_path / "certs" / "acme.crt").exists()


def test_setup_tls_acme_reports_an_unreachable_ca(pebble: Pebble, tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(acme_config(pebble, tmp_path / "certs",
                                  directory_url=f"https://127.0.0.1:{free_port()}/dir"))
    done = _setup(config)
    assert done.returncode == 1
    assert "issuance failed (network)" in done.stderr


def test_setup_tls_acme_needs_lets_encrypt_mode(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text('[server]\nlisten = "127.0.0.1:0"\nprofile = "dev"\n'
                      '[upstreams.main]\npeers = ["http://127.0.0.1:9"]\n'
                      '[routes]\n"/v1/*" = "proxy:main"\n')
    done = _setup(config)
    assert done.returncode == 1 and "not \"lets_encrypt\"" in done.stderr
