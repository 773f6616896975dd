"""`li-httpd setup-tls --acme -c CONFIG`: a first ACME issuance without starting the
gateway.

Reads ``[server.tls.lets_encrypt]`` from the config, answers the CA's HTTP-01 requests
itself on ``http01_bind`` (a small threaded HTTP server using the workers' responder
decision and the same token store, so it serves exactly what the gateway would), obtains
the certificate into ``cert_dir`` and prints where the files are. The gateway started
afterwards with the same config serves that certificate and renews it.
"""

from __future__ import annotations

import argparse
import http.server
import sys
import threading

from li_httpd.actors.acme_client import AcmeClient, AcmeError, directory_url
from li_httpd.actors.acme_tokens import TokenStore
from li_httpd.config import ConfigError, load
from li_httpd.config.acme_paths import challenge_directory
from li_httpd.config.checks import split_host_port
from li_httpd.workers.acme_responder import key_authorization

EXIT_OK = 0
EXIT_FAILED = 1


def responder(address: tuple[str, int], directory: str) -> http.server.ThreadingHTTPServer:
    """An HTTP-01 responder on ``address`` serving the tokens in ``directory``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer()

        def do_HEAD(self) -> None:
            self._answer()

        def _answer(self) -> None:
            body = key_authorization(directory, self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the CA's validators fetch a few times; not worth a line each

    server = http.server.ThreadingHTTPServer(address, Handler)
    server.daemon_threads = True
    return server


def run(args: argparse.Namespace) -> int:
    try:
        config = load(args.config).config
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem.render(exc.filename), file=sys.stderr)
        return EXIT_FAILED
    tls = config.server.tls
    if tls.mode != "lets_encrypt":
        print("li-httpd setup-tls --acme: the config's [server.tls] mode is "
              f"{tls.mode!r}, not \"lets_encrypt\"", file=sys.stderr)
        return EXIT_FAILED
    settings = tls.lets_encrypt
    bind = split_host_port(settings.http01_bind)
    assert bind is not None  # validated
    try:
        store = TokenStore(challenge_directory(tls.cert_dir))
        server = responder(bind, store.directory)
    except OSError as exc:
        print(f"li-httpd setup-tls --acme: cannot answer HTTP-01 on "
              f"{settings.http01_bind}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(f"ACME directory {directory_url(settings)}; answering HTTP-01 on "
          f"{settings.http01_bind}", flush=True)
    try:
        acme = AcmeClient(settings, tls.cert_dir)
        account = acme.register()
        print(f"account {account}", flush=True)
        if acme.contact_updated:
            print(f"account contact updated to {acme.contact_updated}", flush=True)
        issued = acme.issue(settings.domains, store)
    except AcmeError as exc:
        print(f"li-httpd setup-tls --acme: issuance failed ({exc.kind}): {exc.detail}",
              file=sys.stderr)
        return EXIT_FAILED
    finally:
        server.shutdown()
        server.server_close()
    print(f"wrote {issued.path} ({issued.chain_length} certificates, leaf first, "
          "then the key)\n"
          f"names {','.join(settings.domains)}  expires "
          f"{issued.not_after:%Y-%m-%d %H:%M:%S} UTC")
    return EXIT_OK
