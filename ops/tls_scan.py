"""TLS scan of a real gateway with testssl (``bash ops/tls-scan``; a CI step).

For each ``min_protocol`` (1.2, then the default 1.3) it starts ``li-httpd start`` with
a certificate from a throwaway test CA, runs testssl with a JSON report against it,
prints a summary table and fails when any finding is HIGH or CRITICAL.

The certificate is generated at run time (``cryptography``) in a temporary directory and
thrown away: a leaf issued by a test CA (passed to testssl with ``--add-ca``, so the chain
of trust is checked, not flagged as self-signed) with a CRL distribution point (testssl
flags a certificate without CRL or OCSP URI as HIGH; it does not fetch the URI without
``--phone-out``, so the unreachable loopback address is never contacted). Both concern
the test certificate only; the protocol settings scanned are the gateway's own.

testssl's exit status is not a verdict (it is non-zero on some clean runs); the gate
reads the JSON report, a list of ``{id, severity, finding, ...}`` objects.

    bash ops/tls-scan                    # both scans, the CI gate
    bash ops/tls-scan --min-protocol 1.2 # one scan
    bash ops/tls-scan --full             # every testssl check (about 90 s per scan)
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Severity = Literal["OK", "INFO", "LOW", "MEDIUM", "HIGH", "CRITICAL", "WARN"]
SEVERITIES: tuple[Severity, ...] = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN", "INFO", "OK")
FAILING: frozenset[str] = frozenset({"HIGH", "CRITICAL"})
SUBSET = ("-p", "-s", "-f", "-P", "-S", "-U")
"""Protocols, cipher categories, forward secrecy, server preference, server defaults
(certificate, tickets), vulnerabilities: everything the gate needs, in about half the
time of a full run."""
PROTOCOL_IDS = ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3")
CIPHER_CATEGORY = re.compile(r"^cipherlist_")
VULNERABILITY_IDS = ("heartbleed", "CCS", "ticketbleed", "ROBOT", "secure_renego",
                     "secure_client_renego", "CRIME_TLS", "BREACH", "POODLE_SSL",
                     "fallback_SCSV", "SWEET32", "FREAK", "DROWN", "LOGJAM", "BEAST",
                     "LUCKY13", "winshock", "RC4")
CRL_URL = "http://127.0.0.1:9/test.crl"
BANNER = re.compile(r"listen=(\S+)")
START_TIMEOUT = 30.0
SCAN_TIMEOUT = 300.0
DAY = datetime.timedelta(days=1)
VALIDITY = 90 * DAY
"""Like a public CA's leaf: testssl flags one expiring within 30 days as HIGH."""
NOTED: frozenset[str] = frozenset({"MEDIUM", "LOW", "WARN"})


@dataclass(frozen=True, slots=True)
class Finding:
    id: str
    severity: str
    finding: str


@dataclass(frozen=True, slots=True)
class Summary:
    """What one scan found, for the table and the gate. Built by :func:`summarize`."""

    protocols: dict[str, str]
    """Protocol id -> testssl's finding ("offered", "not offered", ...)."""
    ciphers: dict[str, str]
    """Cipher category (``cipherlist_*``) -> finding."""
    vulnerabilities: dict[str, str]
    """Vulnerability id -> severity."""
    counts: dict[str, int]
    failures: tuple[Finding, ...]
    notes: tuple[Finding, ...]
    """MEDIUM, LOW and WARN (a check testssl could not run): shown, not failing."""


def findings(report: Iterable[Mapping[str, Any]]) -> list[Finding]:
    """testssl's JSON list as findings; an entry without id or severity is a report
    format error (ValueError), not something to skip silently."""
    out = []
    for entry in report:
        if not isinstance(entry, Mapping) or "id" not in entry or "severity" not in entry:
            raise ValueError(f"unexpected testssl report entry: {entry!r}")
        out.append(Finding(str(entry["id"]), str(entry["severity"]),
                           str(entry.get("finding", ""))))
    return out


def summarize(found: list[Finding]) -> Summary:
    """Pure: group the findings for the table; the failures are the HIGH and CRITICAL
    ones."""
    by_id = {f.id: f for f in found}
    return Summary(
        protocols={p: by_id[p].finding for p in PROTOCOL_IDS if p in by_id},
        ciphers={f.id: f.finding for f in found if CIPHER_CATEGORY.match(f.id)},
        vulnerabilities={v: by_id[v].severity for v in VULNERABILITY_IDS if v in by_id},
        counts=dict(Counter(f.severity for f in found)),
        failures=tuple(f for f in found if f.severity in FAILING),
        notes=tuple(f for f in found if f.severity in NOTED),
    )


def table(label: str, summary: Summary) -> str:
    """The summary as plain text rows (for a terminal and for docs)."""
    rows = [f"-- {label}"]
    rows += [f"protocol   {name:<24} {finding}" for name, finding in summary.protocols.items()]
    rows += [f"ciphers    {name.removeprefix('cipherlist_'):<24} {finding}"
             for name, finding in summary.ciphers.items()]
    checked = sorted(summary.vulnerabilities)
    rows.append(f"vulns      {len(checked)} checked: "
                + ", ".join(f"{v}={summary.vulnerabilities[v]}" for v in checked))
    rows.append("severity   " + " ".join(f"{s}={summary.counts.get(s, 0)}"
                                         for s in SEVERITIES))
    rows += [f"note       {f.severity:<8} {f.id}: {f.finding}" for f in summary.notes]
    rows += [f"FAIL       {f.severity:<8} {f.id}: {f.finding}" for f in summary.failures]
    return "\n".join(rows)


# --- the throwaway PKI -------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def throwaway_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a localhost/127.0.0.1 leaf with a CRL distribution point, as PEM
    files under ``directory``: (CA certificate, leaf certificate, leaf key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, leaf_key = _key(), _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "li-httpd tls-scan test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - DAY).not_valid_after(now + VALIDITY)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    distribution = x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(CRL_URL)], relative_name=None,
        reasons=None, crl_issuer=None)
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.CRLDistributionPoints([distribution]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = (directory / "ca.pem", directory / "leaf.pem",
                                    directory / "leaf.key")
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    # the chain, leaf first, as a manual-mode certificate file
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM)
                          + ca.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_pem_key(leaf_key))
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


# --- running it ------------------------------------------------------------------


def gateway_config(work: Path, cert: Path, key: Path, min_protocol: str) -> str:
    return (f'[server]\nlisten = "127.0.0.1:0"\nprofile = "dev"\nworkers = 1\n'
            f'control_socket = "{work / "control.sock"}"\n\n'
            f'[server.tls]\nmode = "manual"\nmin_protocol = "{min_protocol}"\n\n'
            f'[server.tls.manual]\ncert = "{cert}"\nkey = "{key}"\n\n'
            f'[log]\ndir = "{work / "logs"}"\n\n'
            # testssl's HTTP checks (headers, status) request "/": answer it with 200
            '[routes]\n"GET /" = "static:healthcheck"\n')


def _start(config: Path) -> tuple[subprocess.Popen[str], str]:
    """``li-httpd start`` on an ephemeral port: the process and its address, once its
    banner (``listen=https://HOST:PORT``) says it serves."""
    command = [sys.executable, "-m", "li_httpd.supervisor.cli", "start", "-c", str(config)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    assert process.stdout is not None
    give_up = time.monotonic() + START_TIMEOUT
    seen = []
    while time.monotonic() < give_up:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        found = BANNER.search(line)
        if found:
            # keep draining its output, or a full pipe would block the gateway's logging
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return process, found.group(1)
    process.kill()
    process.wait()
    raise SystemExit("tls-scan: li-httpd did not start:\n" + "".join(seen))


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def scan(min_protocol: str, full: bool) -> Summary:
    with tempfile.TemporaryDirectory(prefix="li-tls-scan-") as temporary:
        work = Path(temporary)
        ca, cert, key = throwaway_pki(work)
        config = work / "gateway.toml"
        config.write_text(gateway_config(work, cert, key, min_protocol))
        process, address = _start(config)
        try:
            report = work / "testssl.json"
            command = ["testssl", "--quiet", "--color", "0", "--warnings", "off",
                       "--add-ca", str(ca), "--jsonfile", str(report),
                       *(() if full else SUBSET), address]
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=SCAN_TIMEOUT, check=False)
            if not report.is_file():
                raise SystemExit(f"tls-scan: testssl wrote no report ({' '.join(command)})")
            return summarize(findings(json.loads(report.read_text())))
        finally:
            _stop(process)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ops/tls-scan", description=__doc__.split("\n")[0])
    parser.add_argument("--min-protocol", choices=("1.2", "1.3"), action="append",
                        help="scan only this min_protocol (repeatable); default both")
    parser.add_argument("--full", action="store_true", help="every testssl check")
    args = parser.parse_args(argv)
    if shutil.which("testssl") is None:
        print("tls-scan: testssl is not installed (bash ops/setup-system installs it)",
              file=sys.stderr)
        return 2
    failed = False
    for version in args.min_protocol or ["1.2", "1.3"]:
        started = time.monotonic()
        summary = scan(version, args.full)
        label = f"min_protocol = {version} ({time.monotonic() - started:.0f} s)"
        print(table(label, summary), flush=True)
        failed |= bool(summary.failures)
    print("tls-scan: " + ("FAILED: HIGH or CRITICAL findings above" if failed
                          else "no HIGH or CRITICAL finding"))
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
