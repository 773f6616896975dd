"""Shared fixtures for the config and routing suites.

- ``cli``: runs the real ``li-httpd`` command line as a subprocess (never with the
  machine's /etc/li-httpd config: ``LI_HTTPD_CONFIG`` is removed and ``-c`` is always
  passed by the callers).
- ``config_env``: a session-wide scratch directory (symlinks resolved) with the files
  config tests point at: a static root, a symlink to it and freshly generated TLS
  certificates (valid, expired, not yet valid, expiring soon, garbage). Test data
  files refer to them with ``@NAME@`` placeholders; ``config_env.fill(text)`` substitutes
  them. No PEM file is committed to the repository.

Hypothesis profiles (registered and loaded here, before any test module is imported, so
every ``@settings(...)`` in the suite inherits from the loaded one):

- ``ci``: loaded when the environment variable ``CI`` is set (CI runs with ``CI=true``;
  empty, ``0`` and ``false`` count as unset).
  ``derandomize=True`` (each test's examples come from a seed derived from the test
  itself, so every run of the same code tries the same examples), ``database=None`` (no
  examples carried over from earlier runs), ``deadline=None`` (no timing-dependent
  failures on a loaded machine), ``print_blob=True`` and a fixed ``max_examples``.
- ``dev`` (the default elsewhere): random exploration with the local example database
  (``.hypothesis/``, which replays earlier failures first), ``deadline=None`` and
  ``print_blob=True``.

``HYPOTHESIS_PROFILE=NAME`` picks a profile explicitly (it wins over ``CI``); pytest's
``--hypothesis-profile NAME`` wins over both. Test files may set ``max_examples`` and
suppress health checks per test, but never ``derandomize``, ``database``, ``deadline``
or ``print_blob``: those belong to the profile.

Reproducing a failure: a failing property prints its shrunk example and a line
``@reproduce_failure('<version>', b'<blob>')``; add that decorator to the test to replay
exactly that example under any profile. Under ``ci`` the run is deterministic anyway:
``CI=true .venv/bin/python -m pytest -p no:cacheprovider 'tests/path.py::test_name'``
tries the same examples again. Under ``dev``, ``--hypothesis-seed=N`` fixes the seed
(pytest's header shows the profile in use).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, settings

CLI_TIMEOUT = 60

HYPOTHESIS_CI_MAX_EXAMPLES = 100
"""Examples per property under ``ci`` unless a test sets its own ``max_examples``."""

# Both start from Hypothesis' own defaults, not from whatever profile is loaded now
# (Hypothesis loads its built-in "ci" by itself when it sees CI).
settings.register_profile(
    "ci", settings.get_profile("default"), derandomize=True, database=None, deadline=None,
    print_blob=True, max_examples=HYPOTHESIS_CI_MAX_EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", settings.get_profile("default"), deadline=None,
                          print_blob=True)


def hypothesis_profile(environ: Mapping[str, str]) -> str:
    """``HYPOTHESIS_PROFILE`` if set, else ``ci`` when ``CI`` is set (to anything but
    empty, ``0`` or ``false``), else ``dev``."""
    if environ.get("HYPOTHESIS_PROFILE"):
        return environ["HYPOTHESIS_PROFILE"]
    return "ci" if environ.get("CI", "").lower() not in ("", "0", "false") else "dev"


settings.load_profile(hypothesis_profile(os.environ))


def _cli_command() -> list[str]:
    script = Path(sys.executable).with_name("li-httpd")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "li_httpd.supervisor.cli"]


def _cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LI_HTTPD_CONFIG"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def cli() -> RunCli:
    """``cli("validate-config", "-c", path)`` -> CompletedProcess with text output."""
    command = _cli_command()
    env = _cli_env()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, *args], capture_output=True, text=True, env=env,
                              timeout=CLI_TIMEOUT, check=False)

    return run


def make_certificate(directory: Path, name: str, *, not_before: datetime.datetime,
                     not_after: datetime.datetime, ip: str | None = None
                     ) -> tuple[Path, Path]:
    """A self-signed EC certificate and its key, written as PEM files (``ip``: also valid
    for that address)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api.example.com")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("api.example.com"),
            *([x509.IPAddress(ipaddress.ip_address(ip))] if ip else [])]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / f"{name}.pem"
    key_path = directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def make_ca_certificate(path: Path) -> Path:
    """A self-signed CA certificate (basicConstraints CA:TRUE) written as PEM; the key is
    thrown away (the config checks only need the CA file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test client CA")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=300))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


@dataclass(frozen=True)
class ConfigEnv:
    root: Path
    placeholders: dict[str, str]

    def fill(self, text: str) -> str:
        for name, value in self.placeholders.items():
            text = text.replace(f"@{name}@", value)
        leftover = [part for part in text.split("@") if part.isupper() and part.isidentifier()]
        assert not leftover, f"unknown placeholders: {leftover}"
        return text


@pytest.fixture(scope="session")
def config_env(tmp_path_factory: pytest.TempPathFactory) -> ConfigEnv:
    root = Path(os.path.realpath(tmp_path_factory.mktemp("config_env")))
    www = root / "www"
    www.mkdir()
    (www / "index.html").write_text("<h1>hello</h1>\n")
    assets = root / "assets"
    assets.mkdir()
    link = root / "www-link"
    link.symlink_to(www, target_is_directory=True)
    (root / "plain-file").write_text("not a directory\n")
    certs = root / "certs"
    certs.mkdir()
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    valid = make_certificate(certs, "valid", not_before=now - day, not_after=now + 300 * day)
    expired = make_certificate(certs, "expired", not_before=now - 400 * day,
                               not_after=now - 10 * day)
    not_yet = make_certificate(certs, "notyet", not_before=now + 10 * day,
                               not_after=now + 400 * day)
    expiring = make_certificate(certs, "expiring", not_before=now - 80 * day,
                                not_after=now + 5 * day)
    garbage = certs / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                       "-----END CERTIFICATE-----\n")
    placeholders = {
        "TMP": str(root),
        "WWW": str(www),
        "ASSETS": str(assets),
        "WWW_LINK": str(link),
        "PLAIN_FILE": str(root / "plain-file"),
        "MISSING": str(root / "does-not-exist"),
        "CERT": str(valid[0]),
        "KEY": str(valid[1]),
        "EXPIRED_CERT": str(expired[0]),
        "EXPIRED_KEY": str(expired[1]),
        "NOTYET_CERT": str(not_yet[0]),
        "NOTYET_KEY": str(not_yet[1]),
        "EXPIRING_CERT": str(expiring[0]),
        "EXPIRING_KEY": str(expiring[1]),
        "GARBAGE_CERT": str(garbage),
        "CLIENT_CA": str(make_ca_certificate(certs / "client-ca.pem")),
        **make_generated_censor_files(root / "censor"),
    }
    return ConfigEnv(root, placeholders)


def make_generated_censor_files(directory: Path) -> dict[str, str]:
    """Generated leak-censor files for the generated_* reject cases: one valid, one not
    generated, one edited, one out of date, one with an invalid path (placeholders
    GEN_OK, GEN_FOREIGN, GEN_EDITED, GEN_STALE, GEN_BAD_PATH)."""
    from li_httpd.config import censorgen

    directory.mkdir()
    out: dict[str, str] = {}
    for name in ("ok", "edited", "stale", "bad_path"):
        sub = directory / name
        sub.mkdir()
        sql = sub / "001_users.sql"
        sql.write_text("CREATE TABLE users (id int, password_hash text);\n")
        source = censorgen.Source("sql", "001_users.sql", censorgen.digest(sql.read_bytes()))
        finding = censorgen.Finding("password_hash", "001_users.sql", 1, "users.password_hash")
        text = censorgen.render([finding], [source], ["001_users.sql"], [])
        target = sub / censorgen.DEFAULT_NAME
        if name == "edited":
            text = text.replace('"$..password_hash",', '"$..password_hash", "$..ssn",')
        elif name == "stale":
            sql.write_text("CREATE TABLE users (id int, password_hash text, ssn text);\n")
        elif name == "bad_path":
            text = censorgen.rehash(text.replace('"$..password_hash"', '"$..pass word"'))
        target.write_text(text)
        out[f"GEN_{name.upper()}"] = str(target)
    foreign = directory / "foreign.toml"
    foreign.write_text('json_deny_paths = ["$..password"]\n')
    out["GEN_FOREIGN"] = str(foreign)
    return out


# -- redis-server --------------------------------------------------------------------------

REDIS_SERVER = "/usr/bin/redis-server"


@dataclass
class RedisServer:
    """A private ``redis-server`` on a loopback port (no persistence)."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = ()
    """More redis-server options (TLS, requirepass)."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it (again, on the same port) and wait until it answers PING."""
        import socket
        import time

        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.directory),
             "--protected-mode", "no", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        give_up = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                pass
            if time.monotonic() > give_up or self.process.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def command(self, *args: str) -> bytes:
        """One command over a fresh connection; the raw reply (for test checks)."""
        import socket

        payload = b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(payload)
            return conn.recv(65536)


def free_port() -> int:
    """A loopback TCP port nothing listens on now (for servers that cannot take port 0)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def require_redis() -> None:
    """Skip when redis-server is not installed; fail instead under
    ``LI_HTTPD_REQUIRE_EXTERNAL=1`` (CI installs it)."""
    if not os.path.exists(REDIS_SERVER):
        if os.environ.get("LI_HTTPD_REQUIRE_EXTERNAL") == "1":
            pytest.fail(f"{REDIS_SERVER} not installed (LI_HTTPD_REQUIRE_EXTERNAL=1)")
        pytest.skip(f"{REDIS_SERVER} not installed")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server per test module."""
    require_redis()
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
