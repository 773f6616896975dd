"""The identity of a verified client certificate (mTLS), pure.

``ssl.SSLObject.getpeercert()`` returns the parsed certificate only when the handshake
verified it against ``[server.tls] client_ca`` (and None when the client sent none), so
whatever this module returns names a client the CA vouched for. The configured
``client_identity`` picks one field; there is no fallback to another field, so the same
certificate always yields the same identity (or none) and two kinds of names never mix
in one rate-limit table. When a field occurs more than once, the first occurrence in the
certificate counts (the order ``getpeercert`` reports, which is the certificate's).

Identities are bounded and printable (they go into rate-limit keys and the audit log);
a value with control characters or over :data:`IDENTITY_MAX` characters is no identity
rather than a truncated one (a truncation could merge two clients).
"""

from __future__ import annotations

import hashlib

from li_httpd.config.checks import CLIENT_IDENTITY_MAX

IDENTITY_MAX = CLIENT_IDENTITY_MAX

_SAN_TYPES = {"san_dns": "DNS", "san_uri": "URI", "san_email": "email"}


def _printable(value: object) -> str | None:
    if not isinstance(value, str) or not value or len(value) > IDENTITY_MAX:
        return None
    if not value.isprintable():
        return None
    return value


def _subject_cn(subject: object) -> str | None:
    # getpeercert's subject: a tuple of RDNs, each a tuple of (name, value) pairs
    if not isinstance(subject, tuple):
        return None
    for rdn in subject:
        if not isinstance(rdn, tuple):
            continue
        for pair in rdn:
            if isinstance(pair, tuple) and len(pair) == 2 and pair[0] == "commonName":
                return _printable(pair[1])
    return None


def _san(names: object, wanted: str) -> str | None:
    if not isinstance(names, tuple):
        return None
    for entry in names:
        if isinstance(entry, tuple) and len(entry) == 2 and entry[0] == wanted:
            return _printable(entry[1])
    return None


def client_identity(kind: str, peercert: dict[str, object] | None,
                    der: bytes | None) -> str | None:
    """The identity ``kind`` names in a verified client certificate, or None.

    ``peercert`` is ``getpeercert()`` (None: no verified certificate), ``der`` is
    ``getpeercert(binary_form=True)``. ``fingerprint`` is ``sha256:`` and the lowercase
    hex SHA-256 of the DER certificate.
    """
    if not peercert:
        return None
    if kind == "subject_cn":
        return _subject_cn(peercert.get("subject"))
    if kind == "fingerprint":
        return "sha256:" + hashlib.sha256(der).hexdigest() if der else None
    wanted = _SAN_TYPES.get(kind)
    if wanted is None:
        return None
    return _san(peercert.get("subjectAltName"), wanted)


__all__ = ["IDENTITY_MAX", "client_identity"]
