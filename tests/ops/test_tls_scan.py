"""The TLS scan's pure core (ops/tls_scan.py): testssl's JSON report -> summary and gate,
and the throwaway certificate it scans with. The scan itself runs in CI (bash
ops/tls-scan)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from li_httpd.ops.tls_scan import Finding, findings, summarize, table, throwaway_pki

REPORT = [
    {"id": "TLS1", "ip": "127.0.0.1/127.0.0.1", "port": "1", "severity": "OK",
     "finding": "not offered"},
    {"id": "TLS1_2", "severity": "OK", "finding": "offered"},
    {"id": "cipherlist_AVERAGE", "severity": "OK", "finding": "not offered"},
    {"id": "LUCKY13", "severity": "OK", "finding": "not vulnerable"},
    {"id": "DNS_CAArecord", "severity": "LOW", "finding": "--"},
    {"id": "cert_chain_of_trust", "severity": "CRITICAL", "finding": "self signed"},
    {"id": "cert_revocation", "severity": "HIGH", "finding": "Neither CRL nor OCSP URI"},
    {"id": "scanTime", "severity": "WARN", "finding": "Scan interrupted"},
]


def test_summary_groups_and_fails_on_high_and_critical() -> None:
    summary = summarize(findings(REPORT))
    assert summary.protocols == {"TLS1": "not offered", "TLS1_2": "offered"}
    assert summary.ciphers == {"cipherlist_AVERAGE": "not offered"}
    assert summary.vulnerabilities == {"LUCKY13": "OK"}
    assert summary.counts == {"OK": 4, "LOW": 1, "CRITICAL": 1, "HIGH": 1, "WARN": 1}
    assert [f.id for f in summary.failures] == ["cert_chain_of_trust", "cert_revocation"]
    assert [f.id for f in summary.notes] == ["DNS_CAArecord", "scanTime"]
    text = table("label", summary)
    assert "FAIL       CRITICAL cert_chain_of_trust: self signed" in text
    assert "CRITICAL=1 HIGH=1 MEDIUM=0 LOW=1 WARN=1" in text


@pytest.mark.parametrize("severity", ["OK", "INFO", "LOW", "MEDIUM", "WARN"])
def test_nothing_below_high_fails(severity: str) -> None:
    summary = summarize([Finding("x", severity, "")])
    assert summary.failures == ()


@pytest.mark.parametrize("entry", [{"id": "x"}, {"severity": "OK"}, "TLS1"])
def test_a_malformed_report_is_an_error_not_a_pass(entry: object) -> None:
    with pytest.raises(ValueError, match="unexpected testssl report entry"):
        findings([entry])  # type: ignore[list-item]


def test_the_throwaway_leaf_chains_to_its_ca_and_names_a_crl(tmp_path: Path) -> None:
    ca_path, cert_path, key_path = throwaway_pki(tmp_path)
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    leaf, *rest = x509.load_pem_x509_certificates(cert_path.read_bytes())
    assert rest == [ca]  # the chain file carries the CA after the leaf
    leaf.verify_directly_issued_by(ca)
    points = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert points[0].full_name is not None
    assert key_path.stat().st_mode & 0o077 == 0
