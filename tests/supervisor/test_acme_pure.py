"""The ACME pure cores: the renewal schedule (table), the HTTP-01 token match and
responder (hostile targets get nothing and read nothing outside the token directory), and
the classification of failures into the closed vocabulary."""

from __future__ import annotations

import datetime
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import requests
from acme import challenges, errors, messages
from hypothesis import given
from hypothesis import strategies as st
from li_httpd.actors.acme import Renewer
from li_httpd.actors.acme_client import AcmeError, classify
from li_httpd.actors.acme_schedule import needs_issue, renewal_time, retry_delay
from li_httpd.actors.acme_tokens import TokenStore
from li_httpd.config.acme_paths import challenge_token
from li_httpd.config.model import Tls, TlsLetsEncrypt
from li_httpd.supervisor import acme as supervisor_acme
from li_httpd.workers.acme_responder import key_authorization

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
MIN = datetime.timedelta(minutes=1)
TOKEN = "A" * 20 + "b-_9" * 5 + "z" * 3  # 43 characters


@pytest.mark.parametrize(("lifetime", "renew_before", "jitter", "ari", "expected"), [
    # 90-day certificate, 30 d margin (= lifetime / 3): renew 30 d before expiry.
    (90 * DAY, 30 * DAY, 0.0, None, T0 + 60 * DAY),
    # Jitter moves it earlier by up to a tenth of the margin.
    (90 * DAY, 30 * DAY, 1.0, None, T0 + 57 * DAY),
    (90 * DAY, 30 * DAY, 0.5, None, T0 + 58.5 * DAY),
    # A smaller renew_before wins over lifetime / 3.
    (90 * DAY, 10 * DAY, 0.0, None, T0 + 80 * DAY),
    # A short certificate (45 d, or pebble's minutes): lifetime / 3 wins.
    (45 * DAY, 30 * DAY, 0.0, None, T0 + 30 * DAY),
    (30 * MIN, 30 * DAY, 0.0, None, T0 + 20 * MIN),
    # The CA's ARI time wins, but never after expiry.
    (90 * DAY, 30 * DAY, 1.0, T0 + 70 * DAY, T0 + 70 * DAY),
    (90 * DAY, 30 * DAY, 0.0, T0 + 100 * DAY, T0 + 90 * DAY),
    # Out-of-range jitter is clamped.
    (90 * DAY, 30 * DAY, 7.0, None, T0 + 57 * DAY),
])
def test_renewal_time(lifetime: datetime.timedelta, renew_before: datetime.timedelta,
                      jitter: float, ari: datetime.datetime | None,
                      expected: datetime.datetime) -> None:
    assert renewal_time(T0, T0 + lifetime, renew_before, jitter, ari) == expected


@given(lifetime=st.integers(1, 400 * 86400), before=st.integers(86400, 60 * 86400),
       jitter=st.floats(0, 1))
def test_renewal_time_lies_in_the_last_third_and_before_expiry(
        lifetime: int, before: int, jitter: float) -> None:
    end = T0 + datetime.timedelta(seconds=lifetime)
    when = renewal_time(T0, end, datetime.timedelta(seconds=before), jitter)
    # margin <= lifetime / 3, jitter <= margin / 10: never before 63 % of the lifetime.
    assert T0 + datetime.timedelta(seconds=lifetime) * 0.63 <= when < end


@pytest.mark.parametrize(("failures", "not_after", "expected"), [
    (1, None, MIN), (2, None, 2 * MIN), (3, None, 4 * MIN), (7, None, 60 * MIN),
    (100, None, 60 * MIN),
    (5, T0 + 5 * MIN, 5 * MIN),  # never sleep past the expiry of a still-valid cert
    (5, T0 - MIN, 16 * MIN),  # already expired: the plain backoff
])
def test_retry_delay(failures: int, not_after: datetime.datetime | None,
                     expected: datetime.timedelta) -> None:
    assert retry_delay(failures, T0, not_after) == expected


@pytest.mark.parametrize(("names", "not_after", "domains", "expected"), [
    ((), None, ("a.test",), True),
    (("a.test",), T0 + DAY, ("a.test",), False),
    (("A.test", "b.test"), T0 + DAY, ("a.test",), False),
    (("a.test",), T0, ("a.test",), True),  # expired
    (("a.test",), T0 + DAY, ("a.test", "b.test"), True),  # a domain was added
])
def test_needs_issue(names: tuple[str, ...], not_after: datetime.datetime | None,
                     domains: tuple[str, ...], expected: bool) -> None:
    assert needs_issue(names, not_after, domains, T0) is expected


@pytest.mark.parametrize(("target", "token"), [
    (f"/.well-known/acme-challenge/{TOKEN}", TOKEN),
    (f"/.well-known/acme-challenge/{TOKEN}x", None),  # 44 characters
    (f"/.well-known/acme-challenge/{TOKEN[:-1]}", None),  # 42
    (f"/.well-known/acme-challenge/{TOKEN}?x=1", None),
    (f"/.well-known/acme-challenge/{TOKEN[:-1]}.", None),
    ("/.well-known/acme-challenge/../../../../../../../../etc/passwd", None),
    ("/.well-known/acme-challenge/%2e%2e%2f%2e%2e%2fetc%2fpasswd", None),
    (f"/.well-known/acme-challenge/{TOKEN[:40]}%2F", None),
    (f"/.well-known/acme-challenge//{TOKEN[:-1]}", None),
    (f"/.well-known/acme-challenge/{TOKEN}/", None),
    (f"/.WELL-KNOWN/acme-challenge/{TOKEN}", None),
    (f"/x/.well-known/acme-challenge/{TOKEN}", None),
    ("/.well-known/acme-challenge/", None),
    ("", None),
])
def test_challenge_token(target: str, token: str | None) -> None:
    assert challenge_token(target) == token


def test_responder_serves_published_tokens_only(tmp_path: Path) -> None:
    store = TokenStore(str(tmp_path / "challenges"))
    assert os.stat(store.directory).st_mode & 0o777 == 0o700
    store.publish(TOKEN, f"{TOKEN}.thumbprint")
    target = f"/.well-known/acme-challenge/{TOKEN}"
    assert key_authorization(store.directory, target) == f"{TOKEN}.thumbprint".encode()
    store.withdraw(TOKEN)
    assert key_authorization(store.directory, target) is None
    with pytest.raises(ValueError, match="token"):
        store.publish("../escape", "x")


def test_hostile_targets_read_nothing_outside_the_directory(tmp_path: Path) -> None:
    directory = tmp_path / "challenges"
    store = TokenStore(str(directory))
    # A secret beside the directory, whose name would be a valid token, and a symlink to
    # it planted inside: neither is served.
    secret_name = "S" * 43
    (tmp_path / secret_name).write_text(f"{secret_name}.secret")
    (tmp_path / "passwd").write_text("root:x:0:0")
    os.symlink(tmp_path / secret_name, directory / secret_name)
    hostile = ["/.well-known/acme-challenge/../passwd",
               f"/.well-known/acme-challenge/../{secret_name}",
               "/.well-known/acme-challenge/%2e%2e/passwd",
               "/.well-known/acme-challenge/..%2fpasswd",
               f"/.well-known/acme-challenge/{secret_name}",  # the symlink
               "/.well-known/acme-challenge/" + "A" * 5000]
    for target in hostile:
        assert key_authorization(store.directory, target) is None, target
    # A file in the directory that is not a key authorization for its token.
    (directory / TOKEN).write_text("not a key authorization")
    assert key_authorization(store.directory, f"/.well-known/acme-challenge/{TOKEN}") is None
    store.clear()
    assert list(directory.iterdir()) == []


@given(st.text(max_size=80))
def test_anything_but_a_strict_token_is_refused(suffix: str) -> None:
    token = challenge_token("/.well-known/acme-challenge/" + suffix)
    assert token is None or (len(token) == 43 and token == suffix
                             and all(c.isascii() and (c.isalnum() or c in "-_") for c in token))


def _problem(code: str, detail: str) -> messages.Error:
    return messages.Error(typ=f"urn:ietf:params:acme:error:{code}", detail=detail)


def _failed_authz(detail: str) -> messages.AuthorizationResource:
    challenge = messages.ChallengeBody(chall=challenges.HTTP01(token=b"t" * 32),
                                       status=messages.STATUS_INVALID,
                                       error=_problem("unauthorized", detail))
    body = messages.Authorization(
        identifier=messages.Identifier(typ=messages.IDENTIFIER_FQDN, value="gw.test"),
        challenges=[challenge], status=messages.STATUS_INVALID)
    return messages.AuthorizationResource(body=body, uri="https://ca/authz/1")


@pytest.mark.parametrize(("exc", "kind", "detail"), [
    (errors.ValidationError([_failed_authz("got 404")]), "validation",
     "gw.test: unauthorized: got 404"),
    (errors.TimeoutError(), "timeout", "did not complete"),
    (errors.IssuanceError(_problem("badCSR", "no")), "acme_error", "badCSR: no"),
    (_problem("rateLimited", "too many certificates"), "acme_error",
     "rateLimited: too many certificates"),
    (errors.BadNonce("n", "bad"), "acme_error", "BadNonce"),
    (requests.ConnectionError("refused"), "network", "refused"),
    (requests.exceptions.SSLError("certificate verify failed"), "network", "verify failed"),
    (requests.ReadTimeout("slow"), "timeout", "slow"),
    (PermissionError(13, "Permission denied", "/certs/acme.pem"), "local",
     "/certs/acme.pem Permission denied"),
    (AcmeError("validation", "kept"), "validation", "kept"),
])
def test_classify(exc: BaseException, kind: str, detail: str) -> None:
    failure = classify(exc)
    assert failure.kind == kind and detail in failure.detail


def test_a_renewal_asked_while_the_actor_cannot_hear_it_is_asked_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `ctl renew` right after a reload reaches the old actor (being killed) or the new
    # one before it installs its SIGUSR1 handler (ignored): the actor then reports a
    # schedule instead of an attempt, and the master must ask again rather than have
    # answered "ok" for nothing.
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(supervisor_acme.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    actor = supervisor_acme.AcmeActor(None, str(tmp_path), lambda *_: None,  # type: ignore[arg-type]
                                      current=lambda: None)
    actor.pid = 4242
    assert actor.renew()
    assert sent == [(4242, signal.SIGUSR1)]
    actor.pid = 4343  # the replacement actor, which never saw the signal
    actor.handle({"acme": "scheduled", "next_renewal": "2027-01-01T00:00:00Z"})
    assert sent[-1] == (4343, signal.SIGUSR1)
    actor.handle({"acme": "attempt", "domains": ["gw.test"], "reason": "forced"})
    actor.handle({"acme": "scheduled", "next_renewal": "2027-01-02T00:00:00Z"})
    assert len(sent) == 2  # heard: no more signals


def test_the_renewal_time_starts_an_issuance(tmp_path: Path, config_env: Any) -> None:
    # A valid certificate past its renewal time (5 days left of 85: renewal was due 30
    # days before expiry) must be renewed now, not served until it expires while the
    # actor loops rescheduling a time already gone.
    (tmp_path / "acme.pem").write_bytes(  # the chain, then its key
        Path(config_env.placeholders["EXPIRING_CERT"]).read_bytes()
        + Path(config_env.placeholders["EXPIRING_KEY"]).read_bytes())
    tls = Tls(mode="lets_encrypt", cert_dir=str(tmp_path), lets_encrypt=TlsLetsEncrypt(
        email="ops@example.com", domains=("api.example.com",),
        # Nothing listens here: the attempt fails at once (network), no CA needed.
        directory_url="https://127.0.0.1:9/dir"))
    reports: list[dict[str, object]] = []
    turns = iter(range(8))  # then "the master is gone": the backoff sleep ends
    Renewer(tls, reports.append, lambda: next(turns, None) is not None).run()
    events = [r["acme"] for r in reports]
    assert events[:2] == ["attempt", "failed"], reports[:5]
    assert reports[0]["reason"] == "renewal due"
