"""The `li-httpd` command line: argument parsing and dispatch, nothing else.

Each subcommand lives in its own module; this one only wires arguments to them and
turns their results into exit codes (0 ok, 1 config error, 2 start/bind error).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from li_httpd.config import VERSION

from . import commands
from .ctl import run as ctl_command
from .setup_tls import DEFAULT_CERT_DIR
from .setup_tls import run as setup_tls

EXIT_BROKEN_PIPE = 1
"""Exit code when the reader of stdout went away (the Python docs' SIGPIPE recipe)."""


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE",
                        help="config file (default: $LI_HTTPD_CONFIG, then "
                             "/etc/li-httpd/li-httpd.toml, then the embedded dev default; "
                             "':embedded:' forces the embedded default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="li-httpd",
        description="AI/agent-native HTTP gateway.",
    )
    parser.add_argument("--version", action="version", version=f"li-httpd {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate-config", help="check a config; print ok or errors")
    _add_config_option(validate)

    explain = sub.add_parser("explain-config", help="print the canonical config")
    _add_config_option(explain)

    route = sub.add_parser("explain-route", help="show which route a request would take")
    _add_config_option(route)
    route.add_argument("--method", required=True)
    route.add_argument("--host", required=True)
    route.add_argument("--path", required=True)
    route.add_argument("-H", "--header", action="append", default=[], metavar="NAME=VALUE",
                       help="request header (repeatable)")

    ctl = sub.add_parser("ctl", help="talk to a running master: status, reload, "
                                     "rotate-tickets, reopen, renew (ACME: renew the "
                                     "certificate now), stop")
    _add_config_option(ctl)
    ctl.add_argument("--socket", metavar="PATH", help="control socket (default: from the "
                                                      "config's server.control_socket)")
    ctl.add_argument("ctl_command", metavar="COMMAND",
                     choices=("status", "reload", "rotate-tickets", "reopen", "renew", "stop"))
    ctl.add_argument("--json", action="store_true", help="print the raw JSON answer")

    censor = sub.add_parser("setup-censor", help="write leak_censor.generated.toml (JSON "
                                                 "deny paths) from SQL migrations and "
                                                 "OpenAPI documents")
    censor.add_argument("--sql", action="extend", nargs="+", default=[], metavar="PATH",
                        help="SQL migration file, or directory of *.sql (read in sorted "
                             "order); repeatable")
    censor.add_argument("--openapi", action="extend", nargs="+", default=[], metavar="PATH",
                        help="OpenAPI 3 document (.json, .yaml, .yml) or a directory of "
                             "them; repeatable")
    censor.add_argument("--out", default="leak_censor.generated.toml", metavar="FILE",
                        help="file to write (default: leak_censor.generated.toml in the "
                             "current directory)")
    censor.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when FILE is missing or would change "
                             "(for CI)")

    tls = sub.add_parser("setup-tls", help="provision a certificate without starting the "
                                           "gateway: a self-signed development one, or a "
                                           "first ACME issuance for the config's "
                                           "lets_encrypt settings")
    kind = tls.add_mutually_exclusive_group(required=True)
    kind.add_argument("--self-signed", action="store_true",
                      help="generate a self-signed certificate (needs --hosts)")
    kind.add_argument("--acme", action="store_true",
                      help="obtain a certificate from the ACME server of the config's "
                           "[server.tls.lets_encrypt], answering HTTP-01 on its "
                           "http01_bind (the gateway must not be running there)")
    _add_config_option(tls)
    tls.add_argument("--hosts", metavar="NAMES",
                     help="comma-separated DNS names and IP addresses to cover "
                          "(--self-signed)")
    tls.add_argument("--cert-dir", default=DEFAULT_CERT_DIR, metavar="DIR",
                     help=f"directory for dev.crt and dev.key (--self-signed; created 0700; "
                          f"default {DEFAULT_CERT_DIR})")
    tls.add_argument("--valid-days", type=int, default=90, metavar="DAYS",
                     help="validity (--self-signed; default 90)")
    tls.add_argument("--force", action="store_true", help="replace existing files")

    sub.add_parser("hash-key", help="print the SHA-256 of an API key read from stdin "
                                    "(for [auth] keys)")

    start = sub.add_parser("start", help="validate, bind, fork workers and serve "
                                         "(foreground)")
    _add_config_option(start)

    # Listed for --help; its own options are parsed by li_httpd.ops.mock_upstream.
    sub.add_parser("mock-upstream", help="run the fake OpenAI-compatible upstream "
                                         "(see mock-upstream --help)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["mock-upstream"]:
        return _quiet_on_broken_pipe(lambda: commands.mock_upstream(arguments[1:]))
    args = build_parser().parse_args(arguments)
    handlers = {
        "validate-config": commands.validate_config,
        "explain-config": commands.explain_config,
        "explain-route": commands.explain_route,
        "start": commands.start,
        "hash-key": commands.hash_key,
        "setup-censor": commands.setup_censor,
        "setup-tls": setup_tls,
        "ctl": ctl_command,
    }
    return _quiet_on_broken_pipe(lambda: handlers[args.command](args))


def _quiet_on_broken_pipe(command: Callable[[], int]) -> int:
    """Run a command whose stdout may be a pipe that closes early (``li-httpd ctl status
    | head -1``): stop quietly, as the Python docs recommend for SIGPIPE, instead of a
    BrokenPipeError traceback. Output is flushed inside the ``try`` so that a broken pipe
    surfaces here and not in the interpreter's final flush."""
    try:
        code = command()
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit; point it at devnull so that flush cannot
        # fail a second time and print "Exception ignored ... BrokenPipeError".
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return code


if __name__ == "__main__":
    sys.exit(main())
