"""The ACME actor in a real ``li-httpd start`` against a real pebble: first issuance
(answered by the workers on http01_bind), a forced renewal under keep-alive TLS load
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
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .conftest import Gateway
from .pebble import Pebble, free_port

pytestmark = pytest.mark.integration

ISSUED = re.compile(r"acme: certificate issued .*swapped")
TIMEOUT = 60


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    server = Pebble.create(tmp_path_factory.mktemp("pebble"))
    server.start()
    yield server
    server.stop()


def config(pebble: Pebble, tmp_path: Path, *, while_missing: str = "self_signed",
           directory_url: str | None = None, metrics_port: int = 0) -> str:
    metrics = (f'[metrics]\nenabled = true\nlisten = "127.0.0.1:{metrics_port}"\n'
               if metrics_port else "")
    return f"""[server]
listen = "127.0.0.1:0"
host = "localhost"
profile = "dev"
workers = 2
shutdown_timeout = "5s"

[server.tls]
mode = "lets_encrypt"
cert_dir = "{tmp_path / 'certs'}"

[server.tls.lets_encrypt]
email = "ops@example.com"
domains = ["localhost"]
directory_url = "{directory_url or pebble.url}"
ca_bundle = "{pebble.ca}"
http01_bind = "127.0.0.1:{pebble.http_port}"
while_missing = "{while_missing}"

{metrics}
[upstreams.main]
peers = ["http://127.0.0.1:9"]

[routes]
"GET /health" = "static:healthcheck"
"/v1/*" = "proxy:main"
"""


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
    for hostile in ("../../acme.key", "%2e%2e%2facme.key", "T" * 44, "x"):
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
