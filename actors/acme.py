"""The ACME actor: a forked process that keeps ``cert_dir/acme.pem`` valid.

Started by the master for the current generation when ``tls.mode = "lets_encrypt"``
(supervisor/acme.py restarts it with backoff when it dies). It is synchronous: the
acme library blocks (network, one-second polls), and nothing else runs here.

Loop: empty the token store (a killed predecessor may have left tokens); when the
certificate on disk is missing, expired, does not name every configured domain, does
not hold the key of its certificate (a file edited by hand), or its renewal time has
come (or the master forwarded ``ctl renew`` as SIGUSR1), order a new
one (actors/acme_client.py, HTTP-01 answered by the workers from the token store);
otherwise sleep until the renewal time (actors/acme_schedule.py), waking every
:data:`TICK` seconds to notice SIGUSR1 or the master's death. A failure keeps the old
files (the workers go on serving the old certificate) and retries after a backoff of 1
minute doubling to 1 hour.

Every step is one message to the master (PUSH over ``ipc://`` in its 0700 runtime
directory, orjson), which logs it, counts it and, for ``issued``, validates the new pair
and switches every worker to it:

- ``{"acme": "attempt", "domains": [...], "reason": ...}``
- ``{"acme": "issued", "not_after": ISO, "chain": N}``
- ``{"acme": "failed", "kind": FailureKind, "detail": ..., "retry_in_s": S}``
- ``{"acme": "scheduled", "next_renewal": ISO, "unix": S}``
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import zmq
from li_httpd.config import LoadedConfig
from li_httpd.config.acme_paths import ACME_PAIR, challenge_directory
from li_httpd.config.model import Tls

from .acme_client import AcmeClient, AcmeError, contact_of, directory_url, recorded_contact
from .acme_schedule import needs_issue, renewal_time, retry_delay
from .acme_tokens import TokenStore

TICK = 0.25
Report = Callable[[dict[str, Any]], None]


def _iso(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class OnDisk:
    names: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    pem: bytes
    key_matches: bool
    """Whether the key in the file is the leaf's private key. The actor writes both in
    one file with one rename, so a mismatch means the file was changed by hand or
    damaged: it is reissued at once rather than kept until the renewal time."""


def on_disk(cert_path: str, key_path: str) -> OnDisk | None:
    """The certificate the workers serve (None: missing or unreadable)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        with open(cert_path, "rb") as handle:
            pem = handle.read()
        leaf = x509.load_pem_x509_certificate(pem)
        alternatives = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    try:
        with open(key_path, "rb") as handle:
            key = serialization.load_pem_private_key(handle.read(), password=None)
        public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        key_matches = key.public_key().public_bytes(*public) == \
            leaf.public_key().public_bytes(*public)
    except (OSError, ValueError, TypeError):
        key_matches = False
    return OnDisk(tuple(alternatives.value.get_values_for_type(x509.DNSName)),
                  leaf.not_valid_before_utc, leaf.not_valid_after_utc, pem, key_matches)


class Renewer:
    def __init__(self, tls: Tls, report: Report, alive: Callable[[], bool]) -> None:
        self.tls = tls
        self.settings = tls.lets_encrypt
        self.report = report
        self.alive = alive
        self.forced = False
        self.client: AcmeClient | None = None
        self.failures = 0
        self.store = TokenStore(challenge_directory(tls.cert_dir))
        self.cert_path = self.key_path = os.path.join(tls.cert_dir, ACME_PAIR)

    def force(self, *_: object) -> None:
        self.forced = True

    def run(self) -> None:
        self.store.clear()
        self._refresh_contact()
        scheduled = ""
        planned: tuple[bytes, datetime.datetime] | None = None
        """The renewal time of the certificate on disk, drawn once per certificate (a
        new jitter draw on every turn could move it past ``now`` again and again)."""
        while self.alive():
            now = datetime.datetime.now(datetime.UTC)
            current = on_disk(self.cert_path, self.key_path)
            reason = self._reason(current, now)
            if reason is None:
                assert current is not None
                if planned is None or planned[0] != current.pem:
                    planned = current.pem, self._renewal_time(current)
                when = planned[1]
                if when > now:
                    if _iso(when) != scheduled:
                        scheduled = _iso(when)
                        self.report({"acme": "scheduled", "next_renewal": scheduled,
                                     "unix": int(when.timestamp())})
                    self._sleep_until(when)
                    continue
                reason = "renewal due"
            self.forced = False
            scheduled = ""
            self._attempt(reason, current, now)

    def _reason(self, current: OnDisk | None, now: datetime.datetime) -> str | None:
        domains = self.settings.domains
        if current is None:
            return "no certificate yet"
        if needs_issue(current.names, current.not_after, domains, now):
            return "expired" if current.not_after <= now else "the domains changed"
        if not current.key_matches:
            return "the key does not match the certificate"
        if self.forced:
            return "renewal forced (ctl renew)"
        return None

    def _renewal_time(self, current: OnDisk) -> datetime.datetime:
        if current.not_after <= datetime.datetime.now(datetime.UTC):
            return current.not_after
        ari = None
        with contextlib.suppress(AcmeError):
            ari = self._client().ari_time(current.pem)
        before = datetime.timedelta(milliseconds=self.settings.renew_before)
        return renewal_time(current.not_before, current.not_after, before,
                            random.random(), ari)

    def _refresh_contact(self) -> None:
        """An account registered here earlier with another contact (the email changed in
        the config) gets the configured one now, not at the next issuance; after a
        failure the next issuance's registration tries again."""
        recorded = recorded_contact(self.tls.cert_dir, directory_url(self.settings))
        if recorded is None or recorded == contact_of(self.settings):
            return
        try:
            client = self._client()
            client.register()
        except AcmeError as failure:
            self.client = None
            self.report({"acme": "contact_failed", "kind": failure.kind,
                         "detail": failure.detail})
            return
        if client.contact_updated:
            self.report({"acme": "contact_updated", "contact": client.contact_updated})

    def _client(self) -> AcmeClient:
        if self.client is None:
            self.client = AcmeClient(self.settings, self.tls.cert_dir)
        return self.client

    def _attempt(self, reason: str, current: OnDisk | None, now: datetime.datetime) -> None:
        self.report({"acme": "attempt", "domains": list(self.settings.domains),
                     "reason": reason})
        try:
            issued = self._client().issue(self.settings.domains, self.store)
        except AcmeError as failure:
            self.client = None  # a fresh directory, nonce and account lookup next time
            self.failures += 1
            delay = retry_delay(self.failures, now, current.not_after if current else None)
            self.report({"acme": "failed", "kind": failure.kind, "detail": failure.detail,
                         "retry_in_s": int(delay.total_seconds())})
            self._sleep_until(now + delay)
            return
        self.failures = 0
        self.report({"acme": "issued", "not_after": _iso(issued.not_after),
                     "chain": issued.chain_length})

    def _sleep_until(self, when: datetime.datetime) -> None:
        """Sleep until ``when``, ``ctl renew`` or the master's death."""
        while self.alive() and not self.forced:
            left = (when - datetime.datetime.now(datetime.UTC)).total_seconds()
            if left <= 0:
                return
            time.sleep(min(TICK, left))


def run_actor(endpoint: str, loaded: LoadedConfig) -> int:
    """Body of the forked actor process: keep the certificate valid until the master
    goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the master coordinates stops
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parent = os.getppid()
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.setsockopt(zmq.LINGER, 1000)  # the last "issued" must reach the master
    socket.connect(endpoint)

    def report(message: dict[str, Any]) -> None:
        with contextlib.suppress(zmq.Again):
            socket.send(orjson.dumps(message), zmq.NOBLOCK)

    renewer = Renewer(loaded.config.server.tls, report, lambda: os.getppid() == parent)
    signal.signal(signal.SIGUSR1, renewer.force)  # ctl renew
    try:
        renewer.run()
    finally:
        socket.close()
        context.term()
    return 0
