"""`li-httpd setup-tls --self-signed`: provision a development certificate without
starting the gateway (``--acme`` is setup_acme.py).

Writes ``dev.crt`` and ``dev.key`` (both 0600, the directory 0700) for the given names,
then prints the paths and the ``[server.tls]`` lines that use them. Existing files are
kept unless ``--force``: overwriting a certificate someone pinned is not a default.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from .tls import TlsSetupError, cert_info, private_directory, self_signed_pem, write_private

CERT_NAME = "dev.crt"
KEY_NAME = "dev.key"
DEFAULT_CERT_DIR = "/var/lib/li-httpd/certs"
MAX_VALID_DAYS = 825
"""What browsers accept at most for a certificate's lifetime."""
EXIT_OK = 0
EXIT_FAILED = 1


def split_hosts(hosts: str) -> tuple[list[str], list[str]]:
    """``"a.test,127.0.0.1"`` -> (DNS names, IP addresses); empty items are dropped. Pure."""
    dns: list[str] = []
    ips: list[str] = []
    for item in (h.strip() for h in hosts.split(",")):
        if not item:
            continue
        try:
            ips.append(str(ipaddress.ip_address(item.strip("[]"))))
        except ValueError:
            dns.append(item.lower())
    return dns, ips


def run(args: argparse.Namespace) -> int:
    if args.acme:
        from .setup_acme import run as run_acme

        return run_acme(args)
    dns, ips = split_hosts(args.hosts or "")
    if not dns and not ips:
        print("li-httpd setup-tls: --hosts needs at least one name", file=sys.stderr)
        return EXIT_FAILED
    if not 1 <= args.valid_days <= MAX_VALID_DAYS:
        print(f"li-httpd setup-tls: --valid-days must be 1..{MAX_VALID_DAYS}", file=sys.stderr)
        return EXIT_FAILED
    directory = os.path.abspath(args.cert_dir)
    cert_path = os.path.join(directory, CERT_NAME)
    key_path = os.path.join(directory, KEY_NAME)
    existing = [p for p in (cert_path, key_path) if os.path.exists(p)]
    if existing and not args.force:
        print(f"li-httpd setup-tls: {' and '.join(existing)} exist; pass --force to "
              "replace them", file=sys.stderr)
        return EXIT_FAILED
    try:
        private_directory(directory)
        cert_pem, key_pem = self_signed_pem(dns, ips, args.valid_days)
        write_private(key_path, key_pem, 0o600)
        write_private(cert_path, cert_pem, 0o600)
    except (TlsSetupError, OSError) as exc:
        print(f"li-httpd setup-tls: {exc}", file=sys.stderr)
        return EXIT_FAILED
    info = cert_info(cert_pem, key_pem, cert_path, "self_signed")
    print(f"wrote {cert_path}\nwrote {key_path}\n"
          f"subject {info.subject}  names {','.join(info.names)}\n"
          f"expires {info.not_after:%Y-%m-%d %H:%M:%S} UTC  sha256={info.fingerprint}\n"
          "\nconfig:\n[server.tls]\nmode = \"manual\"\n"
          f"manual.cert = \"{cert_path}\"\nmanual.key = \"{key_path}\"\n"
          "\nAfter replacing these files on a running gateway, `li-httpd ctl reload` "
          "serves the new certificate without dropping connections.")
    return EXIT_OK
