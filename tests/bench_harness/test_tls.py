"""TLS scenarios in the benchmark harness: the throwaway certificate, every peer's config
rendered with it, and the verify client's https path."""

from __future__ import annotations

import http.server
import os
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from li_httpd.config import load_text
from li_httpd.ops.bench import benchconfig, harness, loads, peers, render, render_peers
from li_httpd.ops.bench import tls as bench_tls
from li_httpd.ops.bench.procs import Server

from .test_peers import _tool

PEERS = ["http://127.0.0.1:9001"]
TLS_SCENARIOS = ("tls_small", "tls_handshake")


def _config(name: str) -> dict[str, Any]:
    return benchconfig.scenario_config(name, benchconfig.load_profile("full"), [])


def test_every_server_is_rendered_with_the_certificate(tmp_path: Path) -> None:
    tls = bench_tls.make(tmp_path)
    static = tmp_path / "static"
    for name in TLS_SCENARIOS:
        config = _config(name)
        assert config["server"]["tls"] is True
        assert "litellm" not in config["langs"] and "portkey" not in config["langs"]
        nginx = render.gateway_nginx(config, tmp_path, 8081, PEERS, static, tls)
        assert "listen 127.0.0.1:8081 ssl;" in nginx
        assert f"ssl_certificate {tls.cert};" in nginx
        assert f"ssl_certificate_key {tls.key};" in nginx
        assert "ssl_protocols TLSv1.2 TLSv1.3;" in nginx
        haproxy = render_peers.gateway_haproxy(config, tmp_path, 8082, PEERS, tls)
        assert f"bind 127.0.0.1:8082 ssl crt {tls.combined}\n" in haproxy
        caddy = render_peers.gateway_caddy(config, tmp_path, 8083, PEERS, tls)
        assert "https://127.0.0.1:8083 {" in caddy
        assert f"tls {tls.cert} {tls.key}\n" in caddy
        li = load_text(render.gateway_li(config, tmp_path, 8084, PEERS, static, (), tls),
                       f"{name}.toml").config.server.tls
        assert (li.mode, li.min_protocol) == ("manual", "1.3")
        assert (li.manual.cert, li.manual.key) == (str(tls.cert), str(tls.key))


def test_without_tls_nothing_is_encrypted(tmp_path: Path) -> None:
    config = _config("proxy_small")
    static = tmp_path / "static"
    nginx = render.gateway_nginx(config, tmp_path, 8081, PEERS, static)
    assert "listen 127.0.0.1:8081;" in nginx and "ssl" not in nginx
    assert "ssl" not in render_peers.gateway_haproxy(config, tmp_path, 8082, PEERS)
    caddy = render_peers.gateway_caddy(config, tmp_path, 8083, PEERS)
    assert "http://127.0.0.1:8083 {" in caddy and "\n    tls " not in caddy
    assert "[server.tls]" not in render.gateway_li(config, tmp_path, 8084, PEERS, static)


def test_servers_are_addressed_over_https(tmp_path: Path) -> None:
    tls = bench_tls.make(tmp_path)
    config = _config("tls_small")
    for lang in ("haproxy", "caddy"):
        server = peers.server(lang, config, tmp_path, 8085, PEERS, tls)
        assert isinstance(server, Server) and server.url == "https://127.0.0.1:8085"
    plain = peers.server("haproxy", _config("proxy_small"), tmp_path, 8085, PEERS)
    assert isinstance(plain, Server) and plain.url == "http://127.0.0.1:8085"


def test_haproxy_and_caddy_accept_the_tls_configs(tmp_path: Path) -> None:
    tls = bench_tls.make(tmp_path)
    config = _config("tls_handshake")
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(render_peers.gateway_haproxy(config, tmp_path, 8080, PEERS, tls))
    checked = subprocess.run([_tool("haproxy"), "-c", "-f", str(conf)], capture_output=True,
                             text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    conf = tmp_path / "Caddyfile"
    conf.write_text(render_peers.gateway_caddy(config, tmp_path, 8080, PEERS, tls))
    checked = subprocess.run([_tool("caddy"), "validate", "--adapter", "caddyfile", "--config",
                              str(conf)], capture_output=True, text=True, check=False,
                             env={**os.environ, **render_peers.caddy_env(config, tmp_path)})
    assert checked.returncode == 0, checked.stdout[-1000:] + checked.stderr[-1000:]


class _Small(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello world\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _serving(tls: bench_tls.BenchTls | None) -> Iterator[int]:
    """A loopback HTTP server (over TLS with ``tls``) answering GET /small."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Small)
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert, tls.key)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()


SMALL = [{"method": "GET", "path": "/small", "status": 200, "body": "hello world\n"}]


def _tls_version(port: int, client: ssl.SSLContext, name: str) -> str | None:
    """The protocol a handshake with ``client`` for ``name`` agrees on (raises on a
    certificate that is not trusted for ``name``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            client.wrap_socket(raw, server_hostname=name) as wrapped:
        return wrapped.version()


def test_the_throwaway_certificate_is_trusted_for_localhost_and_loopback(
        tmp_path: Path) -> None:
    (tmp_path / "ours").mkdir()
    (tmp_path / "theirs").mkdir()
    tls, theirs = bench_tls.make(tmp_path / "ours"), bench_tls.make(tmp_path / "theirs")
    assert tls.cert.parent == tmp_path / "ours" / "tls"
    for private in (tls.key, tls.combined):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert tls.combined.read_bytes() == tls.cert.read_bytes() + tls.key.read_bytes()
    client = bench_tls.client_context(tls.ca)
    with _serving(tls) as port:
        for name in ("localhost", "127.0.0.1"):
            assert _tls_version(port, client, name) == "TLSv1.3"
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            _tls_version(port, client, "example.com")
    with _serving(theirs) as port, pytest.raises(ssl.SSLCertVerificationError):
        _tls_version(port, client, "127.0.0.1")
    # HAProxy's one file serves as chain and key alike.
    combined = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    combined.load_cert_chain(tls.combined)


def test_verify_speaks_https_and_checks_the_certificate(tmp_path: Path) -> None:
    (tmp_path / "ours").mkdir()
    (tmp_path / "other").mkdir()
    ours, other = bench_tls.make(tmp_path / "ours"), bench_tls.make(tmp_path / "other")
    with _serving(ours) as port:
        assert loads.verify(port, SMALL, {}, ours.ca) == []
        refused = loads.verify(port, SMALL, {}, other.ca)
        assert len(refused) == 1 and "CERTIFICATE_VERIFY_FAILED" in refused[0]
    with _serving(None) as port:
        # A TLS scenario must not pass against a plain-HTTP listener.
        assert loads.verify(port, SMALL, {}) == []
        assert loads.verify(port, SMALL, {}, ours.ca) != []


def test_the_harness_verifies_over_https_once_and_retries_only_a_failing_peer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Path | None]] = []
    answers = {"li": [], "haproxy": ["GET /small: status 502"]}

    def fake_verify(port: int, requests: Any, fixtures: Any, ca: Path | None = None
                    ) -> list[str]:
        calls.append((lang, ca))
        return answers[lang]

    monkeypatch.setattr(loads, "verify", fake_verify)
    monkeypatch.setattr(harness.time, "sleep", lambda seconds: None)
    config = _config("tls_small")
    scenario = harness.Scenario(config, timing=False, rows=[])
    scenario.tls = bench_tls.make(tmp_path)
    upstreams = harness.Upstreams(config, tmp_path)
    for lang in ("li", "haproxy"):
        server = Server(lang, ["true"], 8086, tmp_path / f"{lang}.log", scheme="https")
        scenario._serve(lang, "default", server, upstreams, {})
    assert calls == [("li", scenario.tls.ca), ("haproxy", scenario.tls.ca),
                     ("haproxy", scenario.tls.ca)]
    assert scenario.failed
