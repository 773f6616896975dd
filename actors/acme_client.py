"""ACME (RFC 8555) issuance, blocking: the only module that talks to the CA. Used by the
ACME actor and by ``li-httpd setup-tls --acme``; it does no scheduling and no serving.

Files under ``cert_dir`` (created 0700; each file 0600, written to a temporary name and
renamed so a reader never sees half of one):

- ``acme-account.key``: the account key (EC P-256, ES256), made once and reused;
- ``acme-account.json``: the account URL per directory (registration is idempotent: the
  CA answers an existing key with its account, which is then stored again);
- ``acme.pem``: the full chain (leaf first) followed by the certificate's own key (a
  new one per issuance), in one file so one rename replaces both: a reader never sees a
  new key beside an old chain.

HTTP-01: each challenge's key authorization goes through a :class:`Publisher` (the token
store the workers read, or setup-tls's own responder) before the CA is told to validate,
and is withdrawn once the order is final, whatever the outcome.

Errors: every failure is an :class:`AcmeError` whose ``kind`` is one of
:data:`FailureKind`, with the server's problem type and detail when it sent one.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from typing import Literal, Protocol, cast

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.b64 import b64encode
from josepy.jwa import ES256
from josepy.jwk import JWKEC
from li_httpd.config.acme_paths import ACCOUNT_FILE, ACCOUNT_KEY, ACME_PAIR
from li_httpd.config.model import TlsLetsEncrypt

FailureKind = Literal["acme_error", "network", "validation", "timeout", "local"]
"""``acme_error``: the CA refused (problem document: rate limit, bad CSR, unauthorized
account...); ``network``: the CA could not be reached (DNS, connect, TLS); ``validation``:
the CA could not validate a challenge (its detail says what it fetched); ``timeout``: the
order did not complete in time; ``local``: the files could not be written."""

DIRECTORIES = {
    "production": "https://acme-v02.api.letsencrypt.org/directory",
    "staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
ORDER_TIMEOUT = datetime.timedelta(seconds=90)
NETWORK_TIMEOUT = 30
USER_AGENT = "li-httpd"


class AcmeError(Exception):
    def __init__(self, kind: FailureKind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind: FailureKind = kind
        self.detail = detail


class Publisher(Protocol):
    """Where HTTP-01 key authorizations are made available to the CA's validator."""

    def publish(self, token: str, key_authorization: str) -> None: ...

    def withdraw(self, token: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Issued:
    path: str
    """The chain (leaf first), then its key."""
    not_after: datetime.datetime
    chain_length: int


def directory_url(settings: TlsLetsEncrypt) -> str:
    if settings.directory_url:
        return settings.directory_url
    return DIRECTORIES[settings.environment or "staging"]


def _problem(error: messages.Error) -> str:
    code = error.code or error.typ
    return f"{code}: {error.detail}" if error.detail else str(code)


def classify(exc: BaseException) -> AcmeError:
    """The closed-vocabulary failure for an exception raised by the acme library,
    requests or the file system. Pure."""
    if isinstance(exc, AcmeError):
        return exc
    if isinstance(exc, errors.ValidationError):
        details = [f"{authz.body.identifier.value}: {_problem(c.error)}"
                   for authz in exc.failed_authzrs for c in authz.body.challenges
                   if c.error is not None]
        return AcmeError("validation", "; ".join(details) or "challenge failed")
    if isinstance(exc, errors.TimeoutError):
        return AcmeError("timeout", "the order did not complete in time")
    if isinstance(exc, errors.IssuanceError):
        return AcmeError("acme_error", _problem(exc.error))
    if isinstance(exc, messages.Error):
        return AcmeError("acme_error", _problem(exc))
    if isinstance(exc, errors.Error):
        return AcmeError("acme_error", f"{type(exc).__name__}: {exc}")
    if isinstance(exc, requests.Timeout):  # before OSError: requests' errors are OSErrors
        return AcmeError("timeout", f"the CA did not answer in time ({exc})")
    if isinstance(exc, requests.RequestException):
        return AcmeError("network", f"{type(exc).__name__}: {exc}")
    if isinstance(exc, OSError):
        return AcmeError("local", f"{exc.filename or ''} {exc.strerror or exc}".strip())
    return AcmeError("acme_error", f"{type(exc).__name__}: {exc}")


def _write(path: str, data: bytes) -> None:
    temporary = path + ".tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(data)
    os.replace(temporary, path)


def _private_directory(directory: str) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _account_key(cert_dir: str) -> ec.EllipticCurvePrivateKey:
    path = os.path.join(cert_dir, ACCOUNT_KEY)
    try:
        with open(path, "rb") as handle:
            key = serialization.load_pem_private_key(handle.read(), password=None)
    except FileNotFoundError:
        fresh = ec.generate_private_key(ec.SECP256R1())
        _write(path, _pem(fresh))
        return fresh
    except ValueError as exc:
        raise AcmeError("local", f"{path} is not a PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise AcmeError("local", f"{path} is not an EC key")
    return key


def _account_file(cert_dir: str) -> dict[str, object]:
    """acme-account.json: ``{directory URL: account URL, ..., "contacts": {directory
    URL: "mailto:..."}}`` (absent or damaged: empty; the CA finds the account again
    from its key)."""
    try:
        with open(os.path.join(cert_dir, ACCOUNT_FILE), "rb") as handle:
            data = json.load(handle)
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _strings(data: object) -> dict[str, str]:
    return {k: v for k, v in data.items() if isinstance(v, str)} \
        if isinstance(data, dict) else {}


def recorded_contact(cert_dir: str, directory: str) -> str | None:
    """The contact last registered at ``directory`` (None: no account recorded there;
    "" for an account recorded before contacts were)."""
    data = _account_file(cert_dir)
    if directory not in _strings(data):
        return None
    return _strings(data.get("contacts")).get(directory, "")


def contact_of(settings: TlsLetsEncrypt) -> str:
    """The account contact the config asks for, as the CA stores it."""
    return f"mailto:{settings.email}" if settings.email else ""


class AcmeClient:
    """One account at one ACME directory. Every method blocks (network, and the acme
    library's one-second polls); raises AcmeError."""

    def __init__(self, settings: TlsLetsEncrypt, cert_dir: str) -> None:
        self.settings = settings
        self.cert_dir = cert_dir
        self.directory = directory_url(settings)
        try:
            _private_directory(cert_dir)
            self.key = JWKEC(key=_account_key(cert_dir))
            # verify_ssl goes to requests' ``verify``, which takes a CA bundle path too.
            verify = settings.ca_bundle or True
            self.net = client.ClientNetwork(self.key, alg=ES256,
                                            verify_ssl=cast(bool, verify),
                                            user_agent=USER_AGENT, timeout=NETWORK_TIMEOUT)
            self.acme = client.ClientV2(client.ClientV2.get_directory(self.directory,
                                                                      self.net), self.net)
        except Exception as exc:
            raise classify(exc) from exc
        self.account_url = ""
        self.contact_updated = ""

    def register(self) -> str:
        """Create or find the account of this key; returns (and stores) its URL. An
        existing account whose contact is not the configured email gets it (the CA's
        expiry and problem mail must reach whoever runs the gateway now):
        :attr:`contact_updated` then holds the new contact."""
        registration = messages.NewRegistration.from_data(
            email=self.settings.email or None, terms_of_service_agreed=True)
        try:
            try:
                account = self.acme.new_account(registration)
                url = account.uri
            except errors.ConflictError as exc:  # the key already has an account
                url = exc.location
                existing = self.acme.query_registration(messages.RegistrationResource(
                    uri=url, body=messages.Registration()))
                if tuple(existing.body.contact) != tuple(registration.contact):
                    self.acme.update_registration(
                        existing, messages.Registration(contact=registration.contact))
                    self.contact_updated = ", ".join(registration.contact)
            data = _account_file(self.cert_dir)
            accounts, contacts = _strings(data), _strings(data.get("contacts"))
            contact = ", ".join(registration.contact)
            if accounts.get(self.directory) != url or contacts.get(self.directory) != contact:
                _write(os.path.join(self.cert_dir, ACCOUNT_FILE), json.dumps(
                    {**accounts, self.directory: url,
                     "contacts": {**contacts, self.directory: contact}},
                    indent=1, sort_keys=True).encode())
        except Exception as exc:
            raise classify(exc) from exc
        self.account_url = url
        return url

    def issue(self, domains: tuple[str, ...], publisher: Publisher,
              timeout: datetime.timedelta = ORDER_TIMEOUT) -> Issued:
        """Order a certificate for ``domains``, answer its HTTP-01 challenges through
        ``publisher``, and write the new key and chain into cert_dir."""
        if not self.account_url:
            self.register()
        published: list[str] = []
        try:
            cert_key = ec.generate_private_key(ec.SECP256R1())
            key_pem = _pem(cert_key)
            order = self.acme.new_order(crypto_util.make_csr(key_pem, list(domains)))
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # the CA reused an earlier validation
                offered = [c for c in authz.body.challenges
                           if isinstance(c.chall, challenges.HTTP01)]
                if not offered:
                    raise AcmeError("acme_error", f"{authz.body.identifier.value}: the CA "
                                      "offers no http-01 challenge")
                challenge = offered[0]
                response, key_authorization = challenge.response_and_validation(self.key)
                token = b64encode(challenge.chall.token).decode()
                publisher.publish(token, key_authorization)
                published.append(token)
                self.acme.answer_challenge(challenge, response)
            # The acme library compares with naive local time.
            deadline = datetime.datetime.now() + timeout
            final = self.acme.poll_and_finalize(order, deadline)
            chain = final.fullchain_pem.encode()
            leaf = x509.load_pem_x509_certificate(chain)
            pair_path = os.path.join(self.cert_dir, ACME_PAIR)
            # One file, one rename: the chain and its key change together.
            _write(pair_path, chain.rstrip(b"\n") + b"\n" + key_pem)
        except Exception as exc:
            raise classify(exc) from exc
        finally:
            for token in published:
                publisher.withdraw(token)
        return Issued(pair_path, leaf.not_valid_after_utc,
                      chain.count(b"-----BEGIN CERTIFICATE-----"))

    def ari_time(self, cert_pem: bytes) -> datetime.datetime | None:
        """The CA's suggested renewal time (ARI), or None when it offers none or the
        lookup fails (the caller then uses its own rule)."""
        try:
            when, _ = self.acme.renewal_time(cert_pem)
        except (errors.Error, requests.RequestException, ValueError):
            return None
        return when
