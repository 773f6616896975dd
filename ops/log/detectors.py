"""Built-in secret detectors, by id: the one place their patterns live (pure).

Log redaction uses them on every string written to any sink; the response leak censor
will use the same ids (``li_httpd.config.checks.DETECTOR_IDS``), so a format added here
is caught in both places. Detectors are built in, never user regexes: each pattern is
anchored on a vendor prefix or structure so ordinary text (paths, slugs, ids) does not
match, and each has near-miss negatives in tests/log/test_detectors.py.

What each id matches:

``openai_sk``
    OpenAI API keys: ``sk-proj-`` / ``sk-svcacct-`` / ``sk-admin-`` followed by 40+
    base64url characters; legacy ``sk-`` + exactly 48 letters/digits; any ``sk-`` key
    carrying the ``T3BlbkFJ`` marker. Not ``sk-ant-`` (that is ``anthropic_key``), not
    dash-separated slugs such as ``sk-ski-trip-2024``.
``anthropic_key``
    Anthropic keys: ``sk-ant-<kind><2 digits>-`` + 32+ base64url characters
    (``sk-ant-api03-…``, ``sk-ant-admin01-…``).
``aws_access_key``
    AWS access key ids: ``AKIA``/``ASIA``/``ABIA``/``ACCA`` + 16 uppercase letters or
    digits as a whole word; and a 40-character secret access key when it follows an
    ``aws_secret_access_key`` label (``=`` or ``:``), label included in the match
    (a bare secret key has no structure to recognise).
``github_token``
    GitHub tokens: ``ghp_``/``gho_``/``ghu_``/``ghs_``/``ghr_`` + 36..255 letters or
    digits; fine-grained ``github_pat_`` + 22..255 word characters.
``jwt_bearer``
    JSON Web Tokens (``eyJ…`` header ``.`` ``eyJ…`` payload ``.`` optional signature,
    base64url) anywhere; and ``Bearer <credential>`` with a credential of 20+
    token68 characters in free text (a logged ``Authorization`` header value is
    redacted whole by the header rule anyway).
``pem_private``
    PEM private keys: ``-----BEGIN [RSA |EC |OPENSSH |ENCRYPTED |PGP ]PRIVATE KEY[ BLOCK]-----``
    through the matching ``-----END …-----`` line; when no END line follows (a
    truncated key), everything to the end of the text, since the rest is key
    material. Not public keys or certificates.
``slack_token``
    Slack tokens ``xoxb-``/``xoxp-``/``xoxa-``/``xoxo-``/``xoxr-``/``xoxs-``/``xoxe-``
    followed by 1..3 digit groups and a 8+ character tail; app tokens
    ``xapp-<digit>-…``; incoming-webhook URLs ``https://hooks.slack.com/services/T…/B…/…``.
``google_api_key``
    Google API keys: ``AIza`` + exactly 35 base64url characters.
``stripe_key``
    Stripe secret and restricted keys ``sk_live_``/``sk_test_``/``rk_live_``/``rk_test_``
    + 16+ letters or digits, and webhook secrets ``whsec_`` + 24+. Publishable keys
    (``pk_live_``) are public by design and are not matched.

All ids are compiled into one alternation (:func:`pattern`) so a value is scanned once,
whatever the number of detectors. At one position the first id in :data:`ORDER` wins;
hits never overlap. :data:`PATTERNS` exposes the sources so a bytes scanner (the censor)
can compile ``re.compile(source.encode())`` versions without copying them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from li_httpd.config.checks import CENSOR_ONLY_DETECTORS, DETECTOR_IDS

_B64URL = r"[A-Za-z0-9_-]"

PATTERNS: dict[str, str] = {
    "pem_private": (
        r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
        r"(?:[\s\S]*?-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|[\s\S]*)"
    ),
    "anthropic_key": rf"\bsk-ant-[a-z]{{2,10}}[0-9]{{2}}-{_B64URL}{{32,}}",
    "openai_sk": (
        rf"\bsk-(?:(?:proj|svcacct|admin)-{_B64URL}{{40,}}"
        r"|[A-Za-z0-9]{48}(?![A-Za-z0-9_-])"
        rf"|(?!ant-){_B64URL}{{8,}}T3BlbkFJ{_B64URL}{{8,}})"
    ),
    "aws_access_key": (
        r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b"
        r"|(?i:aws_?secret_?access_?key)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])"
    ),
    "github_token": r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b",
    "jwt_bearer": (
        rf"\beyJ{_B64URL}{{8,}}\.eyJ{_B64URL}{{8,}}\.{_B64URL}*"
        r"|\b[Bb]earer\s+[A-Za-z0-9._~+/-]{20,}=*"
    ),
    "slack_token": (
        r"\bxox[abeoprs]-(?:[0-9]+-){1,3}[0-9A-Za-z][0-9A-Za-z-]{7,}"
        r"|\bxapp-[0-9]-[A-Z0-9]{6,}-[0-9]{6,}-[a-f0-9]{16,}"
        r"|https://hooks\.slack\.com/services/T[A-Z0-9]{6,}/B[A-Z0-9]{6,}/[A-Za-z0-9]{16,}"
    ),
    "google_api_key": rf"\bAIza{_B64URL}{{35}}(?!{_B64URL})",
    "stripe_key": r"\b(?:[sr]k_(?:live|test)_[0-9A-Za-z]{16,247}|whsec_[0-9A-Za-z]{24,})\b",
}
"""Regex source per detector id (no capturing groups of their own)."""

CENSOR_ONLY_PATTERNS: dict[str, str] = {
    # A run of 32..200 token characters with a digit, a lower- and an upper-case letter,
    # standing alone (longer runs are data such as base64 images, not credentials). The
    # censor also requires a high Shannon entropy of the run before it counts as a hit.
    "generic_high_entropy": (
        r"(?<![A-Za-z0-9+/_=-])(?=[A-Za-z0-9+/_-]{0,199}[0-9])"
        r"(?=[A-Za-z0-9+/_-]{0,199}[a-z])(?=[A-Za-z0-9+/_-]{0,199}[A-Z])"
        r"[A-Za-z0-9+/_-]{32,200}={0,2}(?![A-Za-z0-9+/_=-])"
    ),
}
"""Sources of the opt-in censor detectors (``CENSOR_ONLY_DETECTORS``); never used for logs."""

ORDER: tuple[str, ...] = ("pem_private", "anthropic_key", "openai_sk", "aws_access_key",
                          "github_token", "jwt_bearer", "slack_token", "google_api_key",
                          "stripe_key")
"""Priority when two detectors could match at the same position (longest formats first)."""

assert set(ORDER) == set(PATTERNS) == set(DETECTOR_IDS), "detector ids out of sync"
assert set(CENSOR_ONLY_PATTERNS) == set(CENSOR_ONLY_DETECTORS), "censor-only ids out of sync"

DETECTORS: dict[str, re.Pattern[str]] = {name: re.compile(source)
                                         for name, source in PATTERNS.items()}
"""One compiled pattern per id, for callers that test a single detector."""

Hit = tuple[int, int, str]
"""``(start, end, detector_id)`` of one match, as string offsets."""


@functools.lru_cache(maxsize=64)
def _combined(ids: frozenset[str]) -> re.Pattern[str] | None:
    unknown = ids.difference(PATTERNS)
    if unknown:
        raise ValueError(f"unknown detector ids: {', '.join(sorted(unknown))}")
    parts = [f"(?P<{name}>{PATTERNS[name]})" for name in ORDER if name in ids]
    return re.compile("|".join(parts)) if parts else None


def pattern(ids: Iterable[str] = DETECTOR_IDS) -> re.Pattern[str] | None:
    """The single alternation for ``ids`` (group name = detector id), or None for no ids.

    Cached per id set, so callers may call it per value; raises ValueError for an id
    that is not built in (config validation refuses those earlier).
    """
    return _combined(frozenset(ids))


def find(text: str, ids: Iterable[str] = DETECTOR_IDS) -> list[Hit]:
    """Every non-overlapping secret in ``text``, left to right."""
    compiled = pattern(ids)
    if compiled is None:
        return []
    return [(m.start(), m.end(), m.lastgroup or "") for m in compiled.finditer(text)]


def replacement(match: re.Match[str]) -> str:
    """``re.sub`` callback for :func:`pattern`: ``[REDACTED:<id>]``."""
    return f"[REDACTED:{match.lastgroup}]"


def redact_text(text: str, ids: Iterable[str] = DETECTOR_IDS) -> str:
    """``text`` with each hit replaced by ``[REDACTED:<id>]``; unchanged if none."""
    compiled = pattern(ids)
    if compiled is None:
        return text
    return compiled.sub(replacement, text)
