"""ACME against a real pebble. ``li-httpd setup-tls --acme`` issues a certificate for
the config's domains answering HTTP-01 itself (private files chaining to pebble's root,
the account reused on a second run, a new email made its contact, failures
classified). The ACME actor in a real ``li-httpd start``: first issuance (answered by
the workers on http01_bind), a forced renewal under keep-alive TLS load
(no failed request, no dropped connection, new handshakes see the new certificate),
pebble down during a renewal (the old certificate keeps serving, the failure is logged
and counted, the next attempt succeeds), the actor SIGKILLed (restarted, serving
unaffected), ``while_missing = "wait"`` (handshakes refused until a certificate exists),
and the reserved path on the main listener."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .conftest import Gateway, cli_command
from .pebble import Pebble, acme_config, free_port

pytestmark = pytest.mark.integration

ISSUED = re.compile(r"acme: certificate issued .*swapped")
TIMEOUT = 60


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    server = Pebble.create(tmp_path_factory.mktemp("pebble"))
    server.start()
    yield server
    server.stop()


def config(pebble: Pebble, tmp_path: Path, **settings: Any) -> str:
    return acme_config(pebble, tmp_path / "certs", **settings)


def served_certificate(port: int) -> x509.Certificate:
    """The leaf a new handshake gets (not verified: it may be the temporary one)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def fingerprint(certificate: x509.Certificate) -> bytes:
    return certificate.fingerprint(hashes.SHA256())


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        time.sleep(0.1)


def issued_by_pebble(port: int) -> bool:
    return "Pebble" in served_certificate(port).issuer.rfc4514_string()


def verified_context(pebble: Pebble, tmp_path: Path) -> ssl.SSLContext:
    root = tmp_path / f"pebble-root-{time.monotonic_ns()}.pem"
    root.write_bytes(pebble.root())
    return ssl.create_default_context(cafile=str(root))


def get_health(port: int, context: ssl.SSLContext) -> int:
    request = urllib.request.Request(f"https://localhost:{port}/health")
    with urllib.request.urlopen(request, context=context, timeout=10) as answer:
        return int(answer.status)


def test_first_issuance_renewal_under_load_and_a_killed_actor(
        pebble: Pebble, start_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    metrics_port = free_port()
    gateway = start_gateway(config(pebble, tmp_path, metrics_port=metrics_port))
    # Before issuance a temporary self-signed certificate serves (while_missing);
    # the actor's certificate replaces it without a restart.
    wait_until(lambda: issued_by_pebble(gateway.port), "the pebble certificate")
    gateway.output.wait_for(ISSUED, TIMEOUT)
    context = verified_context(pebble, tmp_path)
    assert get_health(gateway.port, context) == 200  # chains to pebble's root, names localhost
    leaf = served_certificate(gateway.port)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    status = gateway.status()
    actors = {a["name"]: a for a in status["actors"]}
    assert actors["acme"]["state"] == "running"
    wait_until(lambda: gateway.status()["certificates"][0]["next_renewal"] != "-",
               "the next renewal time")

    # A forced renewal while clients hold keep-alive TLS connections.
    load = KeepAliveLoad(gateway.port, context, clients=4)
    load.start()
    wait_until(lambda: load.requests >= 40, "the load to run")
    before = fingerprint(served_certificate(gateway.port))
    done = gateway.ctl("renew")
    assert done.returncode == 0, done.stderr
    wait_until(lambda: fingerprint(served_certificate(gateway.port)) != before,
               "the renewed certificate")
    served_by_load = load.requests
    wait_until(lambda: load.requests >= served_by_load + 40, "more load after the swap")
    load.stop()
    assert load.failures == [], load.failures
    assert load.connections == 4  # no connection was dropped and reopened
    assert get_health(gateway.port, context) == 200

    # The actor SIGKILLed: restarted; serving unaffected meanwhile.
    pid = actors["acme"]["pid"]
    os.kill(pid, signal.SIGKILL)
    assert get_health(gateway.port, context) == 200
    wait_until(lambda: {a["name"]: a for a in gateway.status()["actors"]}["acme"]["pid"]
               not in (0, pid), "the restarted actor")
    gateway.output.wait_for(re.compile(r"acme actor exited .*restarting"), TIMEOUT)
    # It found the certificate valid: no new issuance, just a schedule.
    assert get_health(gateway.port, context) == 200

    metrics = urllib.request.urlopen(
        f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    assert re.search(r'li_tls_acme_renewals_total\{result="success"\} 2\.0', metrics), metrics
    assert re.search(r"li_tls_cert_expiry_seconds\S* \d", metrics)


def test_pebble_down_during_a_renewal(tmp_path_factory: pytest.TempPathFactory,
                                      start_gateway: Callable[..., Gateway],
                                      tmp_path: Path) -> None:
    own = Pebble.create(tmp_path_factory.mktemp("pebble-down"))
    own.start()
    try:
        metrics_port = free_port()
        gateway = start_gateway(config(own, tmp_path, metrics_port=metrics_port))
        wait_until(lambda: issued_by_pebble(gateway.port), "the first certificate")
        first = fingerprint(served_certificate(gateway.port))
        own.stop()
        assert gateway.ctl("renew").returncode == 0
        gateway.output.wait_for(re.compile(r"acme: issuance failed \(network\)"), TIMEOUT)
        # The old certificate keeps serving.
        assert fingerprint(served_certificate(gateway.port)) == first
        metrics = urllib.request.urlopen(
            f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert 'li_tls_acme_renewals_total{result="network"} 1.0' in metrics
        # pebble is back: the next attempt (forced here instead of waiting a minute)
        # succeeds.
        own.start()
        assert gateway.ctl("renew").returncode == 0
        wait_until(lambda: fingerprint(served_certificate(gateway.port)) != first,
                   "the renewed certificate")
        assert get_health(gateway.port, verified_context(own, tmp_path)) == 200
    finally:
        own.stop()


def test_wait_refuses_handshakes_until_a_certificate_exists(
        pebble: Pebble, start_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    # A CA that cannot be reached: the first certificate never comes.
    gateway = start_gateway(config(pebble, tmp_path, while_missing="wait",
                                   directory_url=f"https://127.0.0.1:{free_port()}/dir"))
    gateway.output.wait_for(re.compile(r"acme: issuance failed \(network\)"), TIMEOUT)
    with pytest.raises(ssl.SSLError):
        served_certificate(gateway.port)
    assert gateway.status()["certificates"][0]["source"].startswith("self_signed")


def test_a_certificate_placed_in_cert_dir_is_served_once_the_actor_sees_it(
        pebble: Pebble, start_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    # A pebble certificate for localhost, obtained beside the gateway's cert_dir.
    elsewhere = tmp_path / "elsewhere"
    setup = tmp_path / "setup.toml"
    setup.write_text(acme_config(pebble, elsewhere))
    assert _setup(setup).returncode == 0
    # A gateway whose CA is unreachable serves its temporary certificate ...
    gateway = start_gateway(config(pebble, tmp_path, http_port=free_port(),
                                   directory_url=f"https://127.0.0.1:{free_port()}/dir"))
    gateway.output.wait_for(re.compile(r"acme: issuance failed \(network\)"), TIMEOUT)
    assert not issued_by_pebble(gateway.port)
    # ... until a valid certificate appears in cert_dir and the (restarted) actor finds
    # it: the master then serves it, although nothing was issued.
    (tmp_path / "certs" / "acme.pem").write_bytes((elsewhere / "acme.pem").read_bytes())
    pid = {a["name"]: a for a in gateway.status()["actors"]}["acme"]["pid"]
    os.kill(pid, signal.SIGKILL)
    gateway.output.wait_for(re.compile(r"acme: serving the certificate in cert_dir"), TIMEOUT)
    assert issued_by_pebble(gateway.port)


def test_a_pair_whose_key_does_not_match_is_reissued_at_once(
        pebble: Pebble, start_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    # The actor writes the chain and its key in one file with one rename, so it never
    # tears the pair itself; a file edited by hand or damaged can still hold a key that
    # does not match the certificate. The restarted actor must not take the (valid)
    # certificate alone as current: a new generation (reload, ticket rotation) could not
    # load the pair and would refuse every handshake until the next renewal.
    gateway = start_gateway(config(pebble, tmp_path, while_missing="wait"))
    gateway.output.wait_for(ISSUED, TIMEOUT)
    pair = tmp_path / "certs" / "acme.pem"
    chain = pair.read_bytes().split(b"-----BEGIN PRIVATE KEY-----")[0]
    key = ec.generate_private_key(ec.SECP256R1())
    pair.write_bytes(chain + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    pid = {a["name"]: a for a in gateway.status()["actors"]}["acme"]["pid"]
    os.kill(pid, signal.SIGKILL)
    gateway.output.wait_for(re.compile(
        r"acme: requesting a certificate for localhost \(the key does not match"), TIMEOUT)
    wait_until(lambda: len(ISSUED.findall(gateway.output.text())) == 2, "the new pair")
    rotated = gateway.ctl("rotate-tickets")  # a new generation loads the pair from disk
    assert rotated.returncode == 0, rotated.stderr
    wait_until(lambda: gateway.status()["certificates"][0]["source"] == "lets_encrypt",
               "the new generation")
    assert get_health(gateway.port, verified_context(pebble, tmp_path)) == 200


def test_reserved_path_on_the_main_listener(pebble: Pebble,
                                            start_gateway: Callable[..., Gateway],
                                            tmp_path: Path) -> None:
    gateway = start_gateway(config(pebble, tmp_path))
    wait_until(lambda: issued_by_pebble(gateway.port), "the pebble certificate")
    store = tmp_path / "certs" / "acme-challenges"
    token = "T" * 43
    (store / token).write_text(f"{token}.thumbprint")
    context = verified_context(pebble, tmp_path)
    url = f"https://localhost:{gateway.port}/.well-known/acme-challenge/"
    with urllib.request.urlopen(url + token, context=context, timeout=10) as answer:
        assert answer.read() == f"{token}.thumbprint".encode()
    for hostile in ("../../acme.pem", "%2e%2e%2facme.pem", "T" * 44, "x"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + hostile, context=context, timeout=10)
        assert refused.value.code in (400, 404), hostile
    # The plain-HTTP http01_bind listener: the token, and 404 for anything else.
    plain = f"http://127.0.0.1:{pebble.http_port}"
    with urllib.request.urlopen(f"{plain}/.well-known/acme-challenge/{token}",
                                timeout=10) as answer:
        assert answer.read() == f"{token}.thumbprint".encode()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{plain}/health", timeout=10)
    assert refused.value.code == 404


class KeepAliveLoad:
    """``clients`` threads, each with ONE keep-alive TLS connection sending GET /health
    in a loop; any error or reconnect is recorded."""

    def __init__(self, port: int, context: ssl.SSLContext, clients: int) -> None:
        self.port, self.context, self.clients = port, context, clients
        self.requests = 0
        self.connections = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(clients)]
        self._lock = threading.Lock()

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw, \
                    self.context.wrap_socket(raw, server_hostname="localhost") as tls:
                with self._lock:
                    self.connections += 1
                pending = b""
                while not self._stop.is_set():
                    tls.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    while b"\r\n\r\n" not in pending:
                        chunk = tls.recv(4096)
                        if not chunk:
                            raise ConnectionError("closed by the gateway")
                        pending += chunk
                    head, _, pending = pending.partition(b"\r\n\r\n")
                    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
                    while len(pending) < length:
                        pending += tls.recv(4096)
                    pending = pending[length:]
                    if not head.startswith(b"HTTP/1.1 200"):
                        raise ConnectionError(head.decode(errors="replace"))
                    with self._lock:
                        self.requests += 1
                    time.sleep(0.01)
        except (OSError, ConnectionError) as exc:
            with self._lock:
                self.failures.append(repr(exc))


def _setup(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_command("setup-tls", "--acme", "-c", str(config)),
                          capture_output=True, text=True, timeout=120, check=False)


def test_setup_tls_acme_issues_a_certificate(pebble: Pebble, tmp_path: Path) -> None:
    cert_dir = tmp_path / "certs"
    config = tmp_path / "gw.toml"
    config.write_text(acme_config(pebble, cert_dir))
    done = _setup(config)
    assert done.returncode == 0, done.stderr
    cert = cert_dir / "acme.pem"  # the chain, then its key, in one file
    assert f"wrote {cert}" in done.stdout
    assert sorted(p.name for p in cert_dir.iterdir()) == [
        "acme-account.json", "acme-account.key", "acme-challenges", "acme.pem"]
    assert cert_dir.stat().st_mode & 0o777 == 0o700
    for private in (cert, cert_dir / "acme-account.key", cert_dir / "acme-account.json"):
        assert private.stat().st_mode & 0o777 == 0o600, private
    assert list((cert_dir / "acme-challenges").iterdir()) == []  # tokens withdrawn
    chain = x509.load_pem_x509_certificates(cert.read_bytes())
    names = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    own = serialization.load_pem_private_key(cert.read_bytes(), password=None)
    assert own.public_key().public_bytes(*spki) == chain[0].public_key().public_bytes(*spki)
    # The chain verifies against this pebble run's root.
    root = tmp_path / "root.pem"
    root.write_bytes(pebble.root())
    context = ssl.create_default_context(cafile=str(root))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert)  # the key from the same file
    _handshake(server, context, "localhost")

    # Second run: same account (registration is idempotent), a new certificate.
    account = (cert_dir / "acme-account.json").read_text()
    first = cert.read_bytes()
    again = _setup(config)
    assert again.returncode == 0, again.stderr
    assert (cert_dir / "acme-account.json").read_text() == account
    assert cert.read_bytes() != first


def test_setup_tls_acme_updates_a_changed_account_email(pebble: Pebble,
                                                         tmp_path: Path) -> None:
    """The account key already has an account: a new email in the config becomes its
    contact at the CA (and in acme-account.json); an unchanged one is left alone."""
    import json

    cert_dir = tmp_path / "certs"
    config = tmp_path / "gw.toml"
    config.write_text(acme_config(pebble, cert_dir))
    first = _setup(config)
    assert first.returncode == 0, first.stderr
    assert "contact updated" not in first.stdout  # a new account gets it at creation
    recorded = json.loads((cert_dir / "acme-account.json").read_text())
    assert recorded["contacts"] == {pebble.url: "mailto:ops@example.com"}
    config.write_text(acme_config(pebble, cert_dir).replace("ops@example.com",
                                                            "oncall@example.com"))
    changed = _setup(config)
    assert changed.returncode == 0, changed.stderr
    assert "account contact updated to mailto:oncall@example.com" in changed.stdout
    recorded = json.loads((cert_dir / "acme-account.json").read_text())
    assert recorded["contacts"] == {pebble.url: "mailto:oncall@example.com"}
    # The CA holds the new contact: the next run finds nothing to update.
    again = _setup(config)
    assert again.returncode == 0, again.stderr
    assert "contact updated" not in again.stdout


def test_a_reload_with_a_new_email_updates_the_account_contact(
        pebble: Pebble, start_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    """Not at the next issuance weeks later: the new generation's actor updates the
    contact at once, and issues nothing."""
    gateway = start_gateway(config(pebble, tmp_path))
    gateway.output.wait_for(ISSUED, TIMEOUT)
    gateway.config_path.write_text(gateway.config_path.read_text().replace(
        "ops@example.com", "oncall@example.com"))
    result = gateway.ctl("reload")
    assert result.returncode == 0, result.stderr
    gateway.output.wait_for(re.compile(
        r"acme: account contact updated to mailto:oncall@example\.com"), TIMEOUT)
    assert len(ISSUED.findall(gateway.output.text())) == 1


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> None:
    """A TLS handshake over memory BIOs (no sockets needed to check a chain)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        done = 0
        for side, out, peer_in in ((c, c_out, s_in), (s, s_out, c_in)):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
            peer_in.write(out.read())
        if done == 2:
            return
    raise AssertionError("handshake did not complete")


def test_setup_tls_acme_reports_a_failed_validation(pebble: Pebble, tmp_path: Path) -> None:
    # Nobody answers on the port pebble validates: the responder listens elsewhere.
    config = tmp_path / "gw.toml"
    config.write_text(acme_config(pebble, tmp_path / "certs", http_port=free_port()))
    done = _setup(config)
    assert done.returncode == 1
    assert "issuance failed (validation)" in done.stderr and "localhost" in done.stderr
    assert not (tmp_path / "certs" / "acme.pem").exists()


def test_setup_tls_acme_reports_an_unreachable_ca(pebble: Pebble, tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(acme_config(pebble, tmp_path / "certs",
                                  directory_url=f"https://127.0.0.1:{free_port()}/dir"))
    done = _setup(config)
    assert done.returncode == 1
    assert "issuance failed (network)" in done.stderr


def test_setup_tls_acme_needs_lets_encrypt_mode(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text('[server]\nlisten = "127.0.0.1:0"\nprofile = "dev"\n'
                      '[upstreams.main]\npeers = ["http://127.0.0.1:9"]\n'
                      '[routes]\n"/v1/*" = "proxy:main"\n')
    done = _setup(config)
    assert done.returncode == 1 and "not \"lets_encrypt\"" in done.stderr
