"""The health actor's probing against scripted loopback peers (trio, no gateway): what a
probe sends and how it reads the answer, and probe rounds writing the rise/fall state to
shared memory and reporting each transition once."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from li_httpd.actors.health import (
    STATUS_LINE_LIMIT,
    Prober,
    describe,
    is_success,
    next_delay,
    parse_status,
    probe,
    targets_of,
    tls_context,
)
from li_httpd.config import LoadedConfig, load_text
from li_httpd.shm import SharedState, layout_for

Answer = Callable[[bytes], Awaitable[bytes | None]]


class Peer:
    """A scripted loopback peer: records each request head, answers with ``answer``."""

    def __init__(self, answer: bytes | str = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                 tls: ssl.SSLContext | None = None):
        self.answer = answer
        self.tls = tls
        self.heads: list[bytes] = []
        self.port = 0

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, plain: trio.SocketStream) -> None:
        stream: trio.abc.Stream = plain
        if self.tls is not None:
            stream = trio.SSLStream(plain, self.tls, server_side=True)
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError:
                return  # the prober refused our certificate
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            data += chunk
        self.heads.append(data.partition(b"\r\n\r\n")[0])
        path = data.split(b" ")[1]
        answer = self.answer
        if answer == "silent":
            await trio.sleep_forever()
        if answer == "huge":
            await stream.send_all(b"x" * (STATUS_LINE_LIMIT * 4))
            await stream.aclose()
            return
        if answer == "by_path":
            answer = (b"HTTP/1.1 200 OK\r\n\r\n" if path == b"/live"
                      else b"HTTP/1.1 503 Loading\r\n\r\n")
        assert isinstance(answer, bytes)
        await stream.send_all(answer)
        await stream.aclose()


def config(ports: list[int], check: str = "") -> LoadedConfig:
    peers = ", ".join(f'"http://127.0.0.1:{port}"' for port in ports)
    return load_text(f'''
[server]
listen = "127.0.0.1:0"
profile = "dev"

[upstreams.m]
peers = [{peers}]
[upstreams.m.health_check]
ready = "/ready?deep=1"
interval = "200ms"
timeout = "100ms"
rise = 2
fall = 2
{check}

[upstreams.plain]
peers = ["http://127.0.0.1:9"]

[routes]
"/p/" = "proxy:plain"
"/" = "proxy:m"
''', "gw.toml")


@pytest.mark.parametrize(("data", "status"), [
    (b"HTTP/1.1 200 OK\r\n", 200),
    (b"HTTP/1.0 503 Service Unavailable\r\nx: y\r\n", 503),
    (b"HTTP/1.1 204\r\n", 204),
    (b"HTTP/1.1 200 OK", None),  # not a whole line yet
    (b"HTTP/2 200\r\n", None),
    (b"ICY 200 OK\r\n", None),
    (b"HTTP/1.1 2000 OK\r\n", None),
])
def test_parse_status(data: bytes, status: int | None) -> None:
    assert parse_status(data) == status


def test_success_is_2xx_unless_listed() -> None:
    assert is_success(200, ()) and is_success(299, ()) and not is_success(301, ())
    assert is_success(301, (301,)) and not is_success(200, (301,))


def test_restart_backoff() -> None:
    assert next_delay(0.0, 0.0) == 0.5
    assert next_delay(0.5, 1.0) == 1.0
    assert next_delay(16.0, 1.0) == 30.0
    assert next_delay(30.0, 60.0) == 0.5  # ran long enough: start over


def test_only_pools_with_a_health_check_are_probed() -> None:
    pools = targets_of(config([1000, 1001]))
    assert list(pools) == ["m"]
    assert [(t.shared_id, t.host_header) for t in pools["m"]] == [
        (0, "127.0.0.1:1000"), (1, "127.0.0.1:1001")]


async def test_a_probe_sends_one_close_request_with_host(nursery: trio.Nursery) -> None:
    peer = Peer()
    await nursery.start(peer.serve)
    target = targets_of(config([peer.port]))["m"][0]
    result = await probe(target, "/ready?deep=1", None)
    assert result.ok and result.reason == "status 200"
    assert peer.heads == [(b"GET /ready?deep=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                           b"Connection: close\r\nUser-Agent: li-httpd-health\r\n"
                           b"Accept: */*" % peer.port)]


@pytest.mark.parametrize(("answer", "reason"), [
    (b"HTTP/1.1 503 Loading\r\ncontent-length: 0\r\n\r\n", "status 503"),
    (b"SSH-2.0-OpenSSH\r\n", "malformed response"),
    (b"", "closed without a response"),
    ("silent", "timed out"),
    ("huge", "malformed response"),
])
async def test_a_failed_probe_says_why(nursery: trio.Nursery, answer: bytes | str,
                                       reason: str) -> None:
    peer = Peer(answer)
    await nursery.start(peer.serve)
    target = targets_of(config([peer.port]))["m"][0]
    with trio.fail_after(2):
        result = await probe(target, "/ready", None)
    assert not result.ok and result.reason == reason


async def test_a_refused_connection_fails_the_probe() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()
    result = await probe(targets_of(config([port]))["m"][0], "/ready", None)
    assert not result.ok and result.reason.startswith("connect")


async def test_rounds_apply_rise_and_fall_and_report_each_change(
        nursery: trio.Nursery) -> None:
    good, loading = Peer(), Peer("by_path")
    await nursery.start(good.serve)
    await nursery.start(loading.serve)
    loaded = config([good.port, loading.port], 'live = "/live"')
    shared = SharedState.create(layout_for(loaded.config, 1))
    messages: list[dict[str, Any]] = []
    prober = Prober(loaded, shared, 4, messages.append)
    try:
        await prober.round("m")  # the first probe decides
        assert [shared.peer_ready(i) for i in (0, 1, 2)] == [True, False, False]
        ready, live = shared.probe_state(1)
        assert (ready.name, live.live_name) == ("not_ready", "live")
        # Peers are probed concurrently: the messages come in any order.
        assert sorted((m["peer"], m["check"], m["from"], m["to"]) for m in messages) == sorted([
            (f"http://127.0.0.1:{good.port}", "ready", "unknown", "ready"),
            (f"http://127.0.0.1:{good.port}", "live", "unknown", "live"),
            (f"http://127.0.0.1:{loading.port}", "ready", "unknown", "not_ready"),
            (f"http://127.0.0.1:{loading.port}", "live", "unknown", "live"),
        ])
        assert {m["generation"] for m in messages} == {4}
        loading_ready = next(m for m in messages
                             if m["check"] == "ready" and m["to"] == "not_ready")
        assert loading_ready["reason"] == "status 503; live: status 200"
        assert describe(loading_ready) == (
            f"health: upstream peer http://127.0.0.1:{loading.port} (pool m) "
            "unknown -> not_ready (status 503; live: status 200)")
        messages.clear()
        loading.answer = b"HTTP/1.1 200 OK\r\n\r\n"
        await prober.round("m")  # one success of rise = 2: not yet
        assert not shared.peer_ready(1) and messages == []
        good.answer = b"HTTP/1.1 500 Oops\r\n\r\n"
        await prober.round("m")  # the second success; the good peer's first failure
        assert shared.peer_ready(1) and shared.peer_ready(0)
        assert [(m["peer"], m["to"]) for m in messages] == [
            (f"http://127.0.0.1:{loading.port}", "ready")]
        await prober.round("m")  # the good peer's second failure: out
        assert not shared.peer_ready(0) and shared.peer_ready(1)
        assert {(m["check"], m["to"]) for m in messages[1:]} == {
            ("ready", "not_ready"), ("live", "not_live")}
    finally:
        shared.close()


async def test_a_new_prober_carries_on_from_the_segment(nursery: trio.Nursery) -> None:
    """A restarted actor reads the states (and counts) its predecessor stored."""
    peer = Peer(b"HTTP/1.1 503 No\r\n\r\n")
    await nursery.start(peer.serve)
    loaded = config([peer.port])
    shared = SharedState.create(layout_for(loaded.config, 1))
    try:
        first: list[dict[str, Any]] = []
        await Prober(loaded, shared, 0, first.append).round("m")
        peer.answer = b"HTTP/1.1 200 OK\r\n\r\n"
        await Prober(loaded, shared, 0, first.append).round("m")  # 1 of rise = 2
        again: list[dict[str, Any]] = []
        await Prober(loaded, shared, 0, again.append).round("m")  # 2 of 2: ready
        assert shared.peer_ready(0)
        assert [(m["from"], m["to"]) for m in again] == [("not_ready", "ready")]
    finally:
        shared.close()


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
                 issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _server_tls(directory: Path) -> ssl.SSLContext:
    """A CA (``ca.pem`` in ``directory``) and a ``localhost`` server context it signed."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "li-httpd test CA")])
    ca_cert = _certificate("li-httpd test CA", ca_key, ca_name, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate("localhost", key, ca_name, ca_key, ca=False)
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (directory / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.pem", directory / "server.key")
    return context


async def test_https_peers_are_probed_over_verified_tls(nursery: trio.Nursery,
                                                       tmp_path: Path) -> None:
    peer = Peer(tls=_server_tls(tmp_path))
    await nursery.start(peer.serve)
    loaded = load_text(f'''
[server]
listen = "127.0.0.1:0"
profile = "dev"

[upstreams.m]
peers = ["https://localhost:{peer.port}"]
ca_file = "{tmp_path / 'ca.pem'}"
[upstreams.m.health_check]
ready = "/ready"

[routes]
"/" = "proxy:m"
''', "gw.toml")
    target = targets_of(loaded)["m"][0]
    with trio.fail_after(5):
        trusted = await probe(target, "/ready", tls_context(str(tmp_path / "ca.pem")))
        # The system trust store does not know the test CA: the probe fails.
        untrusted = await probe(target, "/ready", tls_context(""))
    assert trusted.ok and trusted.reason == "status 200"
    assert peer.heads[0].startswith(b"GET /ready HTTP/1.1\r\nHost: localhost:%d\r\n"
                                    % peer.port)
    assert not untrusted.ok and untrusted.reason.startswith("TLS: ")
    assert "certificate verify failed" in untrusted.reason
