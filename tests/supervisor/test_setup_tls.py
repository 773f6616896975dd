"""`li-httpd setup-tls --self-signed`: files, modes, output, refusal to overwrite."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography import x509
from li_httpd.supervisor.cli import main
from li_httpd.supervisor.setup_tls import split_hosts


@pytest.mark.parametrize(("hosts", "expected"), [
    ("a.test,B.test", (["a.test", "b.test"], [])),
    ("gw.test, 127.0.0.1 ,::1,", (["gw.test"], ["127.0.0.1", "::1"])),
    ("[::1]", ([], ["::1"])),
    (" , ", ([], [])),
])
def test_split_hosts(hosts: str, expected: tuple[list[str], list[str]]) -> None:
    assert split_hosts(hosts) == expected


def test_writes_a_private_pair_and_prints_the_config(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    cert_dir = tmp_path / "certs"
    code = main(["setup-tls", "--self-signed", "--hosts", "gw.test,127.0.0.1",
                 "--cert-dir", str(cert_dir)])
    out = capsys.readouterr().out
    assert code == 0
    cert, key = cert_dir / "dev.crt", cert_dir / "dev.key"
    assert cert_dir.stat().st_mode & 0o777 == 0o700
    assert cert.stat().st_mode & 0o777 == 0o600 and key.stat().st_mode & 0o777 == 0o600
    assert f"wrote {cert}" in out and f"wrote {key}" in out
    assert 'mode = "manual"' in out and f'manual.cert = "{cert}"' in out
    assert f'manual.key = "{key}"' in out and "sha256=" in out
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["gw.test"]
    assert [str(i) for i in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)  # a matching pair


def test_refuses_to_overwrite_without_force(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["setup-tls", "--self-signed", "--hosts", "gw.test", "--cert-dir", str(tmp_path)]
    assert main(argv) == 0
    first = (tmp_path / "dev.crt").read_bytes()
    capsys.readouterr()
    assert main(argv) == 1
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "dev.crt").read_bytes() == first
    assert main([*argv, "--force"]) == 0
    assert (tmp_path / "dev.crt").read_bytes() != first


@pytest.mark.parametrize("extra", [["--hosts", ","], ["--hosts", "a", "--valid-days", "0"]])
def test_bad_arguments_write_nothing(tmp_path: Path, extra: list[str]) -> None:
    assert main(["setup-tls", "--self-signed", "--cert-dir", str(tmp_path / "d"), *extra]) == 1
    assert not (tmp_path / "d").exists()
