"""The server TLS context, built by the master before it forks.

``manual`` loads the configured certificate chain and key. ``self_signed`` reuses or
generates (with ``cryptography``) an ECDSA P-256 certificate under ``cert_dir`` (created
0700, key file 0600) whose names cover localhost, the listen addresses, ``server.host``
and every exact route host; its SHA-256 fingerprint is printed so a developer can pin
it. ``lets_encrypt`` needs the ACME renewal actor, which this build does not include:
starting with it fails with a clear message instead of serving without a certificate.

The context allows TLS 1.2 or 1.3 per ``min_protocol`` and offers only ``http/1.1``
by ALPN (there is no HTTP/2 yet).

With ``client_auth`` = ``optional`` or ``required`` (mTLS) the context asks clients for
a certificate and verifies it against ``client_ca``; the workers read the verified
certificate's identity (workers/client_cert.py).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from li_httpd.config.checks import split_host_port
from li_httpd.config.model import Config

SELF_SIGNED_CERT = "self_signed.crt"
SELF_SIGNED_KEY = "self_signed.key"
RENEW_MARGIN = datetime.timedelta(days=1)


class TlsSetupError(Exception):
    """The TLS context cannot be built; the message is for the operator."""


@dataclass(frozen=True, slots=True)
class ServerTls:
    context: ssl.SSLContext
    note: str
    """One line for the operator (certificate path and fingerprint)."""


def server_tls(config: Config) -> ServerTls | None:
    tls = config.server.tls
    if tls.mode == "off":
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = (ssl.TLSVersion.TLSv1_3 if tls.min_protocol == "1.3"
                               else ssl.TLSVersion.TLSv1_2)
    context.set_alpn_protocols(["http/1.1"])
    if tls.mode == "manual":
        cert, key = tls.manual.cert, tls.manual.key
    elif tls.mode == "self_signed":
        cert, key = ensure_self_signed(config)
    else:
        raise TlsSetupError("tls mode lets_encrypt needs the ACME renewal actor, which this "
                            "build does not include; use mode = \"manual\" with a certificate "
                            "from your ACME client, or self_signed for development")
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(f"cannot load certificate {cert} / key {key}: {exc}") from exc
    with open(cert, "rb") as handle:
        leaf = x509.load_pem_x509_certificate(handle.read())
    fingerprint = leaf.fingerprint(hashes.SHA256()).hex(":").upper()
    note = f"tls {tls.mode} certificate {cert} sha256={fingerprint}"
    if tls.client_auth != "off":
        _require_client_certificates(context, tls.client_auth == "required", tls.client_ca)
        note += f"; client certificates {tls.client_auth} (CA {tls.client_ca})"
    return ServerTls(context, note)


def _require_client_certificates(context: ssl.SSLContext, required: bool,
                                 client_ca: str) -> None:
    """Ask every client for a certificate chaining to ``client_ca``. OpenSSL verifies
    whatever a client sends, also under CERT_OPTIONAL: an untrusted or expired client
    certificate fails the handshake; only a client that sends none gets through."""
    context.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    try:
        context.load_verify_locations(cafile=client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(f"cannot load client_ca {client_ca}: {exc}") from exc


def _names(config: Config) -> tuple[list[str], list[str]]:
    dns = {"localhost"}
    ips = {"127.0.0.1", "::1"}
    if config.server.host:
        dns.add(config.server.host)
    for route in config.route:
        if route.match.host.kind == "exact":
            dns.add(route.match.host.value)
    for address in config.server.listen:
        parsed = split_host_port(address)
        if parsed and parsed[0] not in ("0.0.0.0", "::"):
            ips.add(parsed[0])
    return sorted(dns), sorted(ips)


def ensure_self_signed(config: Config) -> tuple[str, str]:
    """Paths of a current self-signed certificate and key, generating them if needed."""
    directory = config.server.tls.cert_dir
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
    except OSError as exc:
        raise TlsSetupError(f"cannot create cert_dir {directory}: {exc.strerror}") from exc
    cert_path = os.path.join(directory, SELF_SIGNED_CERT)
    key_path = os.path.join(directory, SELF_SIGNED_KEY)
    dns, ips = _names(config)
    if _reusable(cert_path, key_path, dns, ips):
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0] if dns else "li-httpd")])
    alternatives: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    alternatives += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=config.server.tls.self_signed.valid_days))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def _write(path: str, data: bytes, mode: int) -> None:
    temporary = path + ".tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def _reusable(cert_path: str, key_path: str, dns: list[str], ips: list[str]) -> bool:
    try:
        with open(cert_path, "rb") as handle:
            certificate = x509.load_pem_x509_certificate(handle.read())
        if not os.path.isfile(key_path):
            return False
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    if certificate.not_valid_after_utc - datetime.datetime.now(datetime.UTC) < RENEW_MARGIN:
        return False
    have_dns = set(names.value.get_values_for_type(x509.DNSName))
    have_ips = {str(i) for i in names.value.get_values_for_type(x509.IPAddress)}
    return set(dns) <= have_dns and set(ips) <= have_ips
