"""Client certificates (mTLS) on the gateway's TLS listener: a real 2-worker gateway,
a test CA and client certificates generated here with ``cryptography``."""

from __future__ import annotations

import datetime
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .conftest import Gateway, MockUpstream, gateway_config

pytestmark = pytest.mark.integration

DAY = datetime.timedelta(days=1)
CHAT = {"model": "m", "messages": []}


@dataclass(frozen=True)
class Authority:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    path: Path


def _authority(directory: Path, common_name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY).not_valid_after(now + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                     crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{common_name.replace(' ', '_')}.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return Authority(name, key, path)


def _client(directory: Path, ca: Authority, common_name: str, *,
            expired: bool = False) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    start, end = (now - 30 * DAY, now - DAY) if expired else (now - DAY, now + 10 * DAY)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName([
            x509.UniformResourceIdentifier(f"spiffe://test/{common_name}")]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    cert_path = directory / f"{common_name}.crt"
    key_path = directory / f"{common_name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@dataclass(frozen=True)
class Pki:
    ca: Authority
    alice: tuple[str, str]
    bob: tuple[str, str]
    expired: tuple[str, str]
    stranger: tuple[str, str]
    """Signed by another CA."""


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    directory.mkdir()
    ca = _authority(directory, "client CA")
    other = _authority(directory, "other CA")
    return Pki(ca, _client(directory, ca, "alice"), _client(directory, ca, "bob"),
               _client(directory, ca, "old", expired=True),
               _client(directory, other, "mallory"))


def _start(start_gateway: Callable[..., Gateway], mock: MockUpstream, tmp_path: Path,
           pki: Pki, client_auth: str, extra: str = "") -> Gateway:
    tls = (f'[server.tls]\nmode = "self_signed"\ncert_dir = "{tmp_path / "certs"}"\n'
           f'client_auth = "{client_auth}"\nclient_ca = "{pki.ca.path}"\n{extra}')
    routes = '"GET /health" = "static:healthcheck"\n"/v1/*" = "proxy:main"\n'
    return start_gateway(gateway_config(mock.origin, routes=routes, extra=tls))


def _context(tmp_path: Path, cert: tuple[str, str] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tmp_path / "certs" / "self_signed.crt"))
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def _chat(gateway: Gateway, context: ssl.SSLContext) -> httpx.Response:
    with httpx.Client(base_url=gateway.url, verify=context, timeout=10) as client:
        return client.post("/v1/chat/completions", json=CHAT)


def _refused(gateway: Gateway, context: ssl.SSLContext) -> bool:
    """The handshake (or, under TLS 1.3, the first read after it) fails: no response."""
    try:
        _chat(gateway, context)
    except httpx.TransportError:
        return True
    return False


def test_required_client_certificates(mock: MockUpstream, start_gateway, tmp_path: Path,
                                      pki: Pki) -> None:
    gateway = _start(start_gateway, mock, tmp_path, pki, "required")
    response = _chat(gateway, _context(tmp_path, pki.alice))
    assert response.status_code == 200
    record = gateway.audit_record(response.headers["x-request-id"])
    assert record["client_cert"] == "alice"  # the default identity: the subject CN
    assert _refused(gateway, _context(tmp_path, None))
    assert _refused(gateway, _context(tmp_path, pki.expired))
    assert _refused(gateway, _context(tmp_path, pki.stranger))
    # the gateway is still fine after the refusals
    assert _chat(gateway, _context(tmp_path, pki.bob)).status_code == 200


def test_optional_client_certificates_and_the_client_cert_rate_key(
        mock: MockUpstream, start_gateway, tmp_path: Path, pki: Pki) -> None:
    extra = ('client_identity = "san_uri"\n\n[defaults.rate_limit]\nkey = "client_cert"\n'
             'requests_per_sec = 1\nburst = 2\n')
    gateway = _start(start_gateway, mock, tmp_path, pki, "optional", extra)
    anonymous = _context(tmp_path, None)
    with httpx.Client(base_url=gateway.url, verify=anonymous, timeout=10) as client:
        assert client.get("/health").status_code == 200  # served without a certificate
        refused = client.post("/v1/chat/completions", json=CHAT)
        assert refused.status_code == 403  # no identity: no shared anonymous bucket
        assert "client certificate" in refused.json()["error"]["message"]
    assert _refused(gateway, _context(tmp_path, pki.expired))  # presented: verified
    assert _refused(gateway, _context(tmp_path, pki.stranger))
    alice = _context(tmp_path, pki.alice)
    with httpx.Client(base_url=gateway.url, verify=alice, timeout=10) as client:
        statuses = [client.post("/v1/chat/completions", json=CHAT) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    record = gateway.audit_record(statuses[0].headers["x-request-id"])
    assert record["client_cert"] == "spiffe://test/alice"
    # bob has a bucket of his own, although alice's is empty
    assert _chat(gateway, _context(tmp_path, pki.bob)).status_code == 200


def test_client_certificates_as_principals_with_their_own_budgets(
        mock: MockUpstream, start_gateway, tmp_path: Path, pki: Pki) -> None:
    """[auth] entries naming client certificates: each client has its own token budget,
    model allowlist and audit id; a certificate from the same CA without an entry is an
    unknown client."""
    keys = ('[auth]\nkeys = [\n'
            '  { id = "team-a", client_cert = "alice", tokens_per_minute = 400 },\n'
            '  { id = "team-b", client_cert = "bob", tokens_per_minute = 400, '
            'models = ["mock-chat"] },\n]\n\n'
            '[models."mock-chat"]\npool = "main"\n\n[models."other"]\npool = "main"\n')
    gateway = _start(start_gateway, mock, tmp_path, pki, "required", "\n" + keys)
    carol = _client(tmp_path / "pki", pki.ca, "carol")
    body = {"model": "mock-chat", "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}]}

    def post(cert: tuple[str, str], payload: dict[str, object]) -> httpx.Response:
        with httpx.Client(base_url=gateway.url, verify=_context(tmp_path, cert),
                          timeout=10) as client:
            return client.post("/v1/chat/completions", json=payload)

    left = 60 - time.time() % 60
    if left < 15:  # token budgets are per minute: keep the test inside one
        time.sleep(left + 0.05)
    first = post(pki.alice, body)
    assert first.status_code == 200, first.text
    assert gateway.audit_record(first.headers["x-request-id"])["key_id"] == "team-a"
    statuses = [first.status_code]
    while statuses[-1] == 200 and len(statuses) < 40:  # until alice's minute is spent
        statuses.append(post(pki.alice, body).status_code)
    assert statuses[-1] == 429, statuses
    # bob's budget is his own: untouched by alice's
    second = post(pki.bob, body)
    assert second.status_code == 200, second.text
    assert gateway.audit_record(second.headers["x-request-id"])["key_id"] == "team-b"
    assert post(pki.bob, {**body, "model": "other"}).status_code == 403  # not his model
    budgets = {b["key"]: b for b in gateway.status()["budgets"]}
    assert set(budgets) == {"team-a", "team-b"}
    assert budgets["team-b"]["tokens"] < budgets["team-a"]["tokens"]
    unknown = post(carol, body)
    assert unknown.status_code == 403
    assert "not an accepted client" in unknown.json()["error"]["message"]
