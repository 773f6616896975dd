"""The server TLS context, built by the master before it forks.

``manual`` loads the configured certificate chain and key. ``self_signed`` reuses or
generates (with ``cryptography``) an ECDSA P-256 certificate under ``cert_dir`` (created
0700, key file 0600) whose names cover localhost, the listen addresses, ``server.host``
and every exact route host; its SHA-256 fingerprint is printed so a developer can pin
it. ``lets_encrypt`` serves ``cert_dir/acme.pem`` (chain and key), which the ACME actor
(actors/acme.py) obtains and renews. Until they first exist, ``while_missing`` decides:
``self_signed`` serves a temporary self-signed certificate, ``wait`` refuses every
handshake (a handshake_failure alert from the callback below; the listener is bound and
accepts TCP connections) until the first certificate arrives.

Protocol settings (:func:`_harden`): TLS 1.2 or 1.3 per ``min_protocol`` (1.3 is
preferred whenever the client offers it), ALPN ``http/1.1`` only (there is no HTTP/2
yet), ECDHE key exchange with AEAD ciphers only for TLS 1.2 (OpenSSL's TLS 1.3 suites are
all AEAD), no renegotiation, no compression.

Certificate swap. The listener context never holds the certificate itself: its
``sni_callback`` (run for every handshake, with or without SNI) moves the connection to
the process's current *certificate context*. Session tickets stay encrypted with the
listener context's keys, which the workers share because it is built before the fork, so
sessions resume across a swap. OpenSSL makes those keys at random with the context and
never changes them, and Python cannot set them: rotating them means a new listener
context, hence a new worker generation (the master does it every ``ticket_rotation``,
or on ``ctl rotate-tickets``; supervisor/reload.py). ``session_tickets = false`` sends
no tickets at all. A reload whose certificate files changed (the config
being equal) validates the new pair in the master (:meth:`ServerTls.refresh`) and bumps
a counter in a shared anonymous mapping; each worker notices it at its next handshake and
loads the files itself (an ``SSLContext`` cannot cross a process boundary). Established
connections keep the context they started with, so they continue undisturbed.

With ``client_auth`` = ``optional`` or ``required`` (mTLS) every context, the listener's
and each certificate context, asks clients for a certificate and verifies it against
``client_ca`` (a handshake switched to a certificate context is verified with that
context's settings); the workers read the verified certificate's identity
(workers/client_cert.py).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import mmap
import os
import ssl
import struct
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from li_httpd.config.acme_paths import ACME_PAIR
from li_httpd.config.checks import split_host_port
from li_httpd.config.model import Config, Tls

SELF_SIGNED_CERT = "self_signed.crt"
SELF_SIGNED_KEY = "self_signed.key"
RENEW_MARGIN = datetime.timedelta(days=1)
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""TLS 1.2 suites: forward secret (ECDHE) and AEAD only; no CBC (LUCKY13), no RSA key
exchange, no DHE (slow, weak groups in the wild)."""
_COUNTER = struct.Struct("=Q")


class TlsSetupError(Exception):
    """The TLS context cannot be built; the message is for the operator."""


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What ``ctl status`` and /metrics show about the serving certificate."""

    path: str
    source: str
    subject: str
    issuer: str
    names: tuple[str, ...]
    not_after: datetime.datetime
    fingerprint: str
    digest: str
    """SHA-256 of the certificate and key files: what a reload compares."""

    def status(self, now: datetime.datetime) -> dict[str, Any]:
        left = self.not_after - now
        return {"path": self.path, "source": self.source, "subject": self.subject,
                "issuer": self.issuer, "names": list(self.names),
                "not_after": self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "days_left": left.days, "expires_in_s": int(left.total_seconds()),
                "fingerprint": self.fingerprint,
                "next_renewal": "-"}  # only ACME renews; manual and self-signed do not


def cert_info(cert_pem: bytes, key_pem: bytes, path: str, source: str) -> CertInfo:
    """Describe the leaf (first certificate) of a PEM chain. Pure."""
    leaf = x509.load_pem_x509_certificate(cert_pem)
    try:
        alternatives = leaf.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        names = tuple([*alternatives.get_values_for_type(x509.DNSName),
                       *(str(i) for i in alternatives.get_values_for_type(x509.IPAddress))])
    except x509.ExtensionNotFound:
        names = ()
    return CertInfo(path, source, leaf.subject.rfc4514_string(), leaf.issuer.rfc4514_string(),
                    names, leaf.not_valid_after_utc,
                    leaf.fingerprint(hashes.SHA256()).hex(":").upper(),
                    hashlib.sha256(cert_pem + b"\0" + key_pem).hexdigest())


def _harden(context: ssl.SSLContext, tls: Tls) -> None:
    context.minimum_version = (ssl.TLSVersion.TLSv1_3 if tls.min_protocol == "1.3"
                               else ssl.TLSVersion.TLSv1_2)
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= (ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
                        | ssl.OP_CIPHER_SERVER_PREFERENCE)
    context.set_alpn_protocols(["http/1.1"])
    if not tls.session_tickets:
        # TLS 1.2 tickets off, and no TLS 1.3 tickets sent (the only resumption 1.3 has).
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
    if tls.client_auth != "off":
        _require_client_certificates(context, tls.client_auth == "required", tls.client_ca)


def certificate_context(tls: Tls, cert: str, key: str) -> ssl.SSLContext:
    """A context holding one certificate, with the listener's protocol settings (the
    connection is switched to it during its handshake)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context, tls)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSetupError(f"cannot load certificate {cert} / key {key}: {exc}") from exc
    return context


def _read_pair(cert: str, key: str, source: str) -> CertInfo:
    try:
        with open(cert, "rb") as handle:
            cert_pem = handle.read()
        with open(key, "rb") as handle:
            key_pem = handle.read()
        return cert_info(cert_pem, key_pem, cert, source)
    except (OSError, ValueError) as exc:
        raise TlsSetupError(f"cannot read certificate {cert} / key {key}: {exc}") from exc


class _Switch:
    """The per-process current certificate context, behind the sni_callback.

    Lives in the listener context's callback, so fork gives each worker its own copy;
    only the counter (a MAP_SHARED anonymous page made before the fork) is shared."""

    def __init__(self, tls: Tls, cert: str, key: str, current: ssl.SSLContext,
                 refuse: bool = False) -> None:
        self.tls, self.cert, self.key = tls, cert, key
        self.current = current
        self.refuse = refuse
        """Refuse handshakes until the first load of ``cert``/``key`` (ACME, wait)."""
        self.counter = mmap.mmap(-1, _COUNTER.size)
        self.seen = 0

    def bump(self) -> None:
        """Master: a new pair is on disk and validated; workers load it at their next
        handshake."""
        _COUNTER.pack_into(self.counter, 0, _COUNTER.unpack_from(self.counter, 0)[0] + 1)

    def __call__(self, connection: ssl.SSLObject | ssl.SSLSocket, name: str | None,
                 listener: ssl.SSLContext) -> int | None:
        wanted = _COUNTER.unpack_from(self.counter, 0)[0]
        if wanted != self.seen:
            self.seen = wanted  # also on failure: do not retry the load every handshake
            # The master validated this pair; a failure means it changed again since:
            # keep serving the previous certificate.
            with contextlib.suppress(TlsSetupError):
                self.current = certificate_context(self.tls, self.cert, self.key)
                self.refuse = False
        if self.refuse:
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        connection.context = self.current
        return None


class ServerTls:
    """The listener context of one generation, and its certificate."""

    def __init__(self, context: ssl.SSLContext, note: str, cert: CertInfo,
                 switch: _Switch) -> None:
        self.context = context
        self.note = note
        """One line for the operator (certificate path and fingerprint)."""
        self.cert = cert
        self._switch = switch

    @property
    def not_after_s(self) -> int:
        """The certificate's expiry in Unix seconds (for the shared segment's gauge)."""
        return int(self.cert.not_after.timestamp())

    def refresh(self, config: Config) -> bool:
        """Master, on a reload that kept the config: if the certificate or key files
        changed, validate the new pair and switch every worker to it (True). Raises
        TlsSetupError (the old certificate keeps serving) when the new pair fails."""
        tls = config.server.tls
        cert, key = _pair(config)
        if tls.mode == "lets_encrypt" and not acme_issued(tls):
            return False  # still waiting for the first certificate
        info = _read_pair(cert, key, tls.mode)
        if info.digest == self.cert.digest:
            return False
        certificate_context(tls, cert, key)  # validation: the pair loads and matches
        self.cert = info
        self.note = _note(tls, info)
        self._switch.bump()
        return True


def _pair(config: Config) -> tuple[str, str]:
    tls = config.server.tls
    if tls.mode == "manual":
        return tls.manual.cert, tls.manual.key
    if tls.mode == "self_signed":
        return ensure_self_signed(config)
    return acme_pair(tls)


def acme_pair(tls: Tls) -> tuple[str, str]:
    """Where the ACME actor writes the certificate chain and its key."""
    pair = os.path.join(tls.cert_dir, ACME_PAIR)  # the chain, then its key
    return pair, pair


def acme_issued(tls: Tls) -> bool:
    """Whether the ACME pair exists and loads (else: ``while_missing`` applies)."""
    cert, key = acme_pair(tls)
    try:
        certificate_context(tls, cert, key)
    except TlsSetupError:
        return False
    return True


def _note(tls: Tls, info: CertInfo) -> str:
    note = f"tls {tls.mode} certificate {info.path} sha256={info.fingerprint}"
    if tls.client_auth != "off":
        note += f"; client certificates {tls.client_auth} (CA {tls.client_ca})"
    return note


def server_tls(config: Config) -> ServerTls | None:
    tls = config.server.tls
    if tls.mode == "off":
        return None
    cert, key = _pair(config)
    serving, source, refuse = (cert, key), str(tls.mode), False
    if tls.mode == "lets_encrypt" and not acme_issued(tls):
        # Until the actor's first certificate: a temporary self-signed one, served
        # (self_signed) or only held so that the contexts are complete (wait).
        serving, source = ensure_self_signed(config), "self_signed (until ACME issues)"
        refuse = tls.lets_encrypt.while_missing == "wait"
    current = certificate_context(tls, *serving)
    info = _read_pair(*serving, source)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context, tls)
    # The listener context also holds the pair, so a handshake is never left without a
    # certificate; the callback replaces it with the current one.
    try:
        context.load_cert_chain(*serving)
    except (OSError, ssl.SSLError) as exc:  # replaced since certificate_context read it
        raise TlsSetupError(f"cannot load certificate {serving[0]} / key {serving[1]}: "
                            f"{exc}") from exc
    switch = _Switch(tls, cert, key, current, refuse)
    context.sni_callback = switch
    return ServerTls(context, _note(tls, info), info, switch)


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
    private_directory(directory)
    cert_path = os.path.join(directory, SELF_SIGNED_CERT)
    key_path = os.path.join(directory, SELF_SIGNED_KEY)
    dns, ips = _names(config)
    if _reusable(cert_path, key_path, dns, ips):
        return cert_path, key_path
    cert_pem, key_pem = self_signed_pem(dns, ips, config.server.tls.self_signed.valid_days)
    write_private(key_path, key_pem, 0o600)
    write_private(cert_path, cert_pem, 0o644)
    return cert_path, key_path


def private_directory(directory: str) -> None:
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
    except OSError as exc:
        raise TlsSetupError(f"cannot create cert_dir {directory}: {exc.strerror}") from exc


def self_signed_pem(dns: list[str], ips: list[str], valid_days: int) -> tuple[bytes, bytes]:
    """A new ECDSA P-256 self-signed certificate for these names: (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    first = dns[0] if dns else ips[0] if ips else "li-httpd"
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first)])
    alternatives: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    alternatives += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (certificate.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def write_private(path: str, data: bytes, mode: int) -> None:
    """Write atomically (a reader sees the old or the new file, never half of one)."""
    temporary = path + ".tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as handle:
        os.fchmod(handle.fileno(), mode)  # a leftover temporary file may have other bits
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
