"""The listener TLS context in process, over memory BIOs: protocol defaults, and the
certificate swap (new handshakes get the new pair, established sessions continue,
sessions resume across the swap, a broken pair is refused)."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import ssl
from pathlib import Path

import pytest
from li_httpd.config import load_text
from li_httpd.config.model import Config
from li_httpd.supervisor.tls import (
    ServerTls,
    TlsSetupError,
    cert_info,
    self_signed_pem,
    server_tls,
    write_private,
)


def _config(tmp_path: Path, min_protocol: str = "1.3") -> Config:
    return load_text(
        f'[server]\nlisten = "127.0.0.1:0"\nprofile = "dev"\n[server.tls]\nmode = "manual"\n'
        f'min_protocol = "{min_protocol}"\n'
        f'[server.tls.manual]\ncert = "{tmp_path / "c.crt"}"\nkey = "{tmp_path / "c.key"}"\n'
        '[routes]\n"GET /health" = "static:healthcheck"\n', "t.toml").config


def _write_pair(tmp_path: Path, name: str) -> str:
    """Write a new pair for ``name``; its SHA-256 fingerprint (hex)."""
    cert, key = self_signed_pem([name], ["127.0.0.1"], 30)
    write_private(str(tmp_path / "c.key"), key, 0o600)
    write_private(str(tmp_path / "c.crt"), cert, 0o600)
    return cert_info(cert, key, "c.crt", "manual").fingerprint


def _tls(tmp_path: Path, min_protocol: str = "1.3") -> tuple[ServerTls, Config]:
    config = _config(tmp_path, min_protocol)
    made = server_tls(config)
    assert made is not None
    return made, config


def _client(maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
            ciphers: str | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if ciphers is not None:
        context.set_ciphers(ciphers)
    if maximum < ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("ALL:@SECLEVEL=0")  # let the client offer it at all
        context.minimum_version = maximum
    context.maximum_version = maximum
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


class Pair:
    """A client and a server SSLObject connected through memory BIOs."""

    def __init__(self, server: ssl.SSLContext, client: ssl.SSLContext,
                 session: ssl.SSLSession | None = None) -> None:
        self.bios = [ssl.MemoryBIO() for _ in range(4)]
        self.server = server.wrap_bio(self.bios[0], self.bios[1], server_side=True)
        self.client = client.wrap_bio(self.bios[2], self.bios[3], server_hostname="localhost",
                                      session=session)

    def _pump(self) -> None:
        self.bios[0].write(self.bios[3].read())
        self.bios[2].write(self.bios[1].read())

    def handshake(self) -> None:
        done = [False, False]
        for _ in range(20):
            for index, side in enumerate((self.client, self.server)):
                if not done[index]:
                    try:
                        side.do_handshake()
                        done[index] = True
                    except ssl.SSLWantReadError:
                        pass
            self._pump()
            if all(done):
                return
        raise AssertionError("handshake did not finish")

    def echo(self, data: bytes) -> bytes:
        self.client.write(data)
        self._pump()
        got = self.server.read(1024)
        self.server.write(got)
        self._pump()
        return self.client.read(1024)

    def fingerprint(self) -> str:
        der = self.client.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).digest().hex(":").upper()


def test_defaults_prefer_tls13_and_negotiate_http11(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a.test")
    made, _ = _tls(tmp_path, "1.2")
    pair = Pair(made.context, _client())
    pair.handshake()
    assert pair.client.version() == "TLSv1.3"
    assert pair.client.selected_alpn_protocol() == "http/1.1"
    options = made.context.options
    assert options & ssl.OP_NO_RENEGOTIATION and options & ssl.OP_NO_COMPRESSION


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_tls11_is_refused(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a.test")
    made, _ = _tls(tmp_path, "1.2")
    with pytest.raises(ssl.SSLError):
        Pair(made.context, _client(ssl.TLSVersion.TLSv1_1)).handshake()


def test_tls12_needs_min_protocol_12(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a.test")
    made, _ = _tls(tmp_path, "1.3")
    with pytest.raises(ssl.SSLError):
        Pair(made.context, _client(ssl.TLSVersion.TLSv1_2)).handshake()


@pytest.mark.parametrize(("cipher", "accepted"), [
    ("ECDHE-ECDSA-AES128-GCM-SHA256", True),
    ("ECDHE-ECDSA-CHACHA20-POLY1305", True),
    ("ECDHE-ECDSA-AES128-SHA256", False),  # CBC: not AEAD
    ("ECDHE-ECDSA-AES256-SHA", False),
])
def test_tls12_offers_only_ecdhe_with_aead(tmp_path: Path, cipher: str, accepted: bool) -> None:
    _write_pair(tmp_path, "a.test")
    made, _ = _tls(tmp_path, "1.2")
    pair = Pair(made.context, _client(ssl.TLSVersion.TLSv1_2, cipher))
    if accepted:
        pair.handshake()
        assert pair.client.version() == "TLSv1.2"
        assert pair.client.cipher()[0] == cipher  # type: ignore[index]
    else:
        with pytest.raises(ssl.SSLError):
            pair.handshake()


def test_swap_serves_the_new_pair_and_keeps_established_sessions(tmp_path: Path) -> None:
    old = _write_pair(tmp_path, "old.test")
    made, config = _tls(tmp_path)
    client = _client()
    before = Pair(made.context, client)
    before.handshake()
    assert before.fingerprint() == old
    assert before.echo(b"one") == b"one"
    session = before.client.session
    assert made.refresh(config) is False  # files unchanged: nothing to do
    new = _write_pair(tmp_path, "new.test")
    assert made.refresh(config) is True
    assert made.cert.fingerprint == new and made.cert.names == ("new.test", "127.0.0.1")
    assert before.echo(b"two") == b"two"  # the established connection continues
    after = Pair(made.context, client)
    after.handshake()
    assert after.fingerprint() == new
    resumed = Pair(made.context, client, session=session)
    resumed.handshake()
    assert resumed.client.session_reused  # ticket keys belong to the listener context


def test_a_broken_pair_is_refused_and_the_old_one_keeps_serving(tmp_path: Path) -> None:
    old = _write_pair(tmp_path, "old.test")
    made, config = _tls(tmp_path)
    (tmp_path / "c.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nbroken\n")
    with pytest.raises(TlsSetupError, match=r"c\.key"):
        made.refresh(config)
    other, _ = self_signed_pem(["other.test"], [], 1)  # a cert whose key is not c.key
    _write_pair(tmp_path, "old.test")
    (tmp_path / "c.crt").write_bytes(other)
    with pytest.raises(TlsSetupError):
        made.refresh(config)
    assert made.cert.fingerprint == old
    pair = Pair(made.context, _client())
    pair.handshake()
    assert pair.fingerprint() == old


def test_status_fields() -> None:
    cert, key = self_signed_pem(["a.test", "b.test"], ["::1"], 10)
    info = cert_info(cert, key, "/x.crt", "self_signed")
    now = info.not_after - datetime.timedelta(days=3, hours=1)
    status = info.status(now)
    assert status["subject"] == "CN=a.test" and status["issuer"] == "CN=a.test"
    assert status["names"] == ["a.test", "b.test", "::1"]
    assert (status["days_left"], status["expires_in_s"]) == (3, 3 * 86400 + 3600)
    assert status["next_renewal"] == "-" and status["source"] == "self_signed"
    assert len(status["fingerprint"]) == 95


def test_metrics_show_seconds_until_expiry(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from li_httpd.ops.metrics import render
    from li_httpd.shm import SharedState, layout_for

    _write_pair(tmp_path, "a.test")
    made, config = _tls(tmp_path)
    shared = SharedState.create(layout_for(config, 1))
    try:
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        assert b"li_tls_cert_expiry_seconds" not in render(config, shared)  # 0: unset
        shared.publish_cert_not_after(made.not_after_s)
        line = next(line for line in render(config, shared).decode().splitlines()
                    if line.startswith('li_tls_cert_expiry_seconds{cert="server"}'))
        assert 29 * 86400 < float(line.split()[-1]) <= 30 * 86400
    finally:
        shared.close()


def _client_ca_and_leaf(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A client CA (PEM) and a client certificate and key signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clients CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")]))
            .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(ca_key, hashes.SHA256()))
    paths = tmp_path / "clients-ca.pem", tmp_path / "alice.crt", tmp_path / "alice.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return paths


def test_a_swapped_certificate_keeps_verifying_client_certificates(tmp_path: Path) -> None:
    """The handshake moves to the certificate context, which verifies the client's
    certificate with its own settings: each must carry client_auth and client_ca."""
    ca, leaf, leaf_key = _client_ca_and_leaf(tmp_path)
    _write_pair(tmp_path, "old.test")
    config = load_text(
        f'[server]\nlisten = "127.0.0.1:0"\nprofile = "dev"\n[server.tls]\nmode = "manual"\n'
        f'client_auth = "required"\nclient_ca = "{ca}"\n'
        f'[server.tls.manual]\ncert = "{tmp_path / "c.crt"}"\nkey = "{tmp_path / "c.key"}"\n'
        '[routes]\n"GET /health" = "static:healthcheck"\n', "t.toml").config
    made = server_tls(config)
    assert made is not None
    with_cert = _client()
    with_cert.load_cert_chain(leaf, leaf_key)
    for swapped in (False, True):
        if swapped:
            _write_pair(tmp_path, "new.test")
            assert made.refresh(config) is True
        good = Pair(made.context, with_cert)
        good.handshake()
        assert good.echo(b"hi") == b"hi", swapped
        assert good.server.getpeercert() is not None
        without = Pair(made.context, _client())
        with pytest.raises(ssl.SSLError):
            without.handshake()
            without.echo(b"hi")  # TLS 1.3: the refusal may show on the first read



@pytest.mark.parametrize("tickets", [True, False])
def test_session_tickets_switch(tmp_path: Path, tickets: bool) -> None:
    _write_pair(tmp_path, "a.example")
    config = _config(tmp_path)
    tls = dataclasses.replace(config.server.tls, session_tickets=tickets)
    made = server_tls(dataclasses.replace(config, server=dataclasses.replace(config.server,
                                                                            tls=tls)))
    assert made is not None
    assert bool(made.context.options & ssl.OP_NO_TICKET) is not tickets
    assert made.context.num_tickets == (2 if tickets else 0)
