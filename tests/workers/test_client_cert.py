"""The client-certificate identity (workers/client_cert.py): a table over getpeercert()
shapes, including certificates without the configured field and hostile values."""

from __future__ import annotations

import hashlib

import pytest
from li_httpd.workers.client_cert import IDENTITY_MAX, client_identity

DER = b"0\x82\x01\x00certificate bytes"
FULL: dict[str, object] = {
    "subject": ((("countryName", "DE"),), (("organizationName", "Acme"),),
                (("commonName", "alice"),), (("commonName", "second-cn"),)),
    "issuer": ((("commonName", "test CA"),),),
    "subjectAltName": (("DNS", "alice.example.com"), ("DNS", "other.example.com"),
                       ("URI", "spiffe://example.org/ns/prod/sa/alice"),
                       ("email", "alice@example.com"), ("IP Address", "10.0.0.1")),
    "serialNumber": "01",
}
NO_SAN: dict[str, object] = {"subject": ((("organizationName", "Acme"),),)}


@pytest.mark.parametrize(("kind", "peercert", "der", "expected"), [
    ("subject_cn", FULL, DER, "alice"),  # the first CN
    ("san_dns", FULL, DER, "alice.example.com"),  # the first DNS entry
    ("san_uri", FULL, DER, "spiffe://example.org/ns/prod/sa/alice"),
    ("san_email", FULL, DER, "alice@example.com"),
    ("fingerprint", FULL, DER, "sha256:" + hashlib.sha256(DER).hexdigest()),
    # no verified certificate: no identity, whatever the kind
    ("subject_cn", None, None, None),
    ("fingerprint", None, DER, None),
    ("san_dns", {}, None, None),
    # the field is absent: no fallback to another field
    ("subject_cn", NO_SAN, DER, None),
    ("san_dns", NO_SAN, DER, None),
    ("san_uri", {"subjectAltName": (("DNS", "a.example"),)}, DER, None),
    ("fingerprint", NO_SAN, None, None),
    # hostile or malformed values are no identity (never truncated, never with controls)
    ("subject_cn", {"subject": ((("commonName", "a\nb"),),)}, DER, None),
    ("subject_cn", {"subject": ((("commonName", ""),),)}, DER, None),
    ("subject_cn", {"subject": ((("commonName", "x" * (IDENTITY_MAX + 1)),),)}, DER, None),
    ("subject_cn", {"subject": ((("commonName", "x" * IDENTITY_MAX),),)}, DER,
     "x" * IDENTITY_MAX),
    ("san_email", {"subjectAltName": (("email", "\x00@x"),)}, DER, None),
    ("subject_cn", {"subject": "not a tuple"}, DER, None),
    ("san_dns", {"subjectAltName": (("DNS",),)}, DER, None),
    ("unknown_kind", FULL, DER, None),
])
def test_client_identity_table(kind: str, peercert: dict[str, object] | None,
                               der: bytes | None, expected: str | None) -> None:
    assert client_identity(kind, peercert, der) == expected
