"""The master's side of the ACME actor (actors/acme.py); never waits.

Supervision (start per current generation, restart with backoff, replace on reload) is
the health actor's (:class:`~.health.SupervisedActor`). This module turns the actor's
messages into one log line each, counts outcomes (``li_tls_acme_renewals_total{result}``:
``success`` or the failure kind), remembers the next renewal time for ``ctl status``, and
on ``issued`` runs the certificate swap: the master validates the new pair and bumps the
shared counter, so every worker serves it from its next handshake on while established
connections keep theirs. ``ctl renew`` reaches the actor as SIGUSR1.

May import: li_httpd.actors.acme, li_httpd.ops, li_httpd.supervisor.generations,
li_httpd.supervisor.health, li_httpd.supervisor.tls.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any

from li_httpd.actors import acme
from li_httpd.ops import metrics as metrics_env

from .generations import Generation
from .health import SupervisedActor
from .tls import TlsSetupError


class AcmeActor(SupervisedActor):
    name = "acme"

    def __init__(self, *args: Any, current: Callable[[], Generation | None],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.current = current
        """The generation whose certificate an ``issued`` message swaps."""
        self.next_renewal = "-"
        self.renew_pending = False
        """``ctl renew`` was answered but no attempt has been reported since. SIGUSR1 is
        lost when it reaches an actor that is being replaced (a reload) or that has not
        installed its handler yet (the forked child ignores it until then); the actor's
        first ``scheduled`` report comes after that, so the signal is sent again then."""

    def wanted(self, generation: Generation | None) -> bool:
        return generation is not None and \
            generation.loaded.config.server.tls.mode == "lets_encrypt"

    def fork(self, generation: Generation) -> int:
        return self.forker.fork("acme actor", (), lambda: acme.run_actor(
            self.endpoint, generation.loaded))

    def renew(self) -> bool:
        """``ctl renew``: ask the running actor for a renewal now (False: none runs)."""
        if not self.pid:
            return False
        self.renew_pending = True
        self._ask_renewal()
        return True

    def _ask_renewal(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGUSR1)

    def handle(self, message: dict[str, Any]) -> None:
        event = message.get("acme")
        if event == "attempt":
            self.renew_pending = False  # forced or not, a new certificate is on its way
            domains = ",".join(str(d) for d in message.get("domains", []))
            self.say(f"acme: requesting a certificate for {domains} "
                     f"({message.get('reason')})", "info")
        elif event == "scheduled":
            self.next_renewal = str(message.get("next_renewal", "-"))
            self.say(f"acme: next renewal at {self.next_renewal}", "info")
            if self.renew_pending and self.pid:
                self._ask_renewal()
            # The actor found a valid certificate on disk: make sure it is the one served
            # (a generation started by a reload while the files were being replaced
            # would otherwise keep the previous, or temporary, certificate).
            self._swap(message, issued=False)
        elif event == "failed":
            kind = str(message.get("kind", "acme_error"))
            metrics_env.count_acme_renewal(kind)
            self.say(f"acme: issuance failed ({kind}): {message.get('detail')}; "
                     f"retrying in {message.get('retry_in_s')}s; the current certificate "
                     "keeps serving", "error")
        elif event == "issued":
            self._swap(message, issued=True)
        elif event == "contact_updated":
            self.say(f"acme: account contact updated to {message.get('contact')}", "info")
        elif event == "contact_failed":
            self.say(f"acme: could not update the account contact "
                     f"({message.get('kind')}): {message.get('detail')}; the next "
                     "issuance tries again", "warn")

    def _swap(self, message: dict[str, Any], issued: bool) -> None:
        generation = self.current()
        if generation is None or generation.tls is None:
            return
        try:
            swapped = generation.tls.refresh(generation.loaded.config)
        except TlsSetupError as exc:
            if issued:
                metrics_env.count_acme_renewal("local")
            self.say(f"acme: the certificate in cert_dir does not load, the current one "
                     f"keeps serving: {exc}", "error")
            return
        if swapped:
            generation.shared.publish_cert_not_after(generation.tls.not_after_s)
        if not issued:
            if swapped:
                self.say(f"acme: serving the certificate in cert_dir: {generation.tls.note}",
                         "info")
            return
        metrics_env.count_acme_renewal("success")
        self.next_renewal = "-"
        self.say(f"acme: certificate issued (expires {message.get('not_after')}, "
                 f"{message.get('chain')} certificates); "
                 + (f"swapped: {generation.tls.note}" if swapped else "already serving it"),
                 "info")
