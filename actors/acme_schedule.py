"""When to renew an ACME certificate, and how long to wait after a failed attempt. Pure.

Renewal time: the CA's ARI window (RFC 9773) when its directory offers ``renewalInfo``
(the caller passes the time the ``acme`` library picked inside the window); otherwise
``notAfter - min(renew_before, lifetime / 3)``, moved earlier by up to a tenth of that
margin (``jitter`` in [0, 1], drawn by the caller) so many gateways started together do
not all renew in the same second. ``lifetime / 3`` keeps short certificates (pebble's
minutes, Let's Encrypt's coming 45-day ones) from being renewed only at the last moment,
or constantly, when ``renew_before`` is longer than their lifetime.

Retry after a failure: 1 minute doubling up to 1 hour, but never later than the
certificate's expiry when it is still valid (a last try just before it lapses).
"""

from __future__ import annotations

import datetime

RETRY_BASE = datetime.timedelta(minutes=1)
RETRY_MAX = datetime.timedelta(hours=1)
JITTER_SHARE = 0.1


def renewal_time(not_before: datetime.datetime, not_after: datetime.datetime,
                 renew_before: datetime.timedelta, jitter: float,
                 ari: datetime.datetime | None = None) -> datetime.datetime:
    """When to renew a certificate valid from ``not_before`` to ``not_after``."""
    if ari is not None:
        return min(ari, not_after)
    lifetime = max(not_after - not_before, datetime.timedelta(0))
    margin = min(renew_before, lifetime / 3)
    jitter = min(max(jitter, 0.0), 1.0)
    return not_after - margin - margin * (JITTER_SHARE * jitter)


def retry_delay(failures: int, now: datetime.datetime,
                not_after: datetime.datetime | None) -> datetime.timedelta:
    """The wait before the next attempt after ``failures`` (>= 1) failures in a row."""
    delay = min(RETRY_BASE * (1 << min(max(failures - 1, 0), 16)), RETRY_MAX)
    if not_after is not None and now < not_after:
        delay = min(delay, max(not_after - now, datetime.timedelta(seconds=1)))
    return delay


def needs_issue(names: tuple[str, ...], not_after: datetime.datetime | None,
                domains: tuple[str, ...], now: datetime.datetime) -> bool:
    """Whether the certificate on disk (None: none) cannot serve ``domains`` now: missing,
    expired, or not naming every configured domain (the config changed)."""
    if not_after is None or not_after <= now:
        return True
    have = {n.lower() for n in names}
    return not all(d.lower() in have for d in domains)
