"""Each built-in detector: true positives (exact span) and near-miss negatives.

Secrets are assembled from parts at run time so the repository holds no string that a
secret scanner would flag.
"""

from __future__ import annotations

import pytest
from li_httpd.config.checks import DETECTOR_IDS
from li_httpd.ops.log import detectors

ALNUM = "a1B2c3D4e5F6g7H8i9J0"


def rep(text: str, length: int) -> str:
    return (text * (length // len(text) + 1))[:length]


POSITIVES: dict[str, list[str]] = {
    "openai_sk": [
        "sk-" + "proj-" + rep("A1b2_C3d4-", 60),
        "sk-" + "svcacct-" + rep(ALNUM, 50),
        "sk-" + rep(ALNUM, 48),
        "sk-" + rep(ALNUM, 20) + "T3Blbk" + "FJ" + rep(ALNUM, 20),
    ],
    "anthropic_key": [
        "sk-" + "ant-api03-" + rep("Ab_9-", 93) + "AA",
        "sk-" + "ant-admin01-" + rep(ALNUM, 40),
    ],
    "aws_access_key": [
        "AKIA" + "IOSFODNN7EXAMPLE",
        "ASIA" + "Q3EGVQ4NZX2PA7TB",
        "aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        'AWS_SECRET_ACCESS_KEY: "' + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ],
    "github_token": [
        "ghp_" + rep(ALNUM, 36),
        "ghs_" + rep(ALNUM, 40),
        "github_" + "pat_" + rep("11ABC_def", 82),
    ],
    "jwt_bearer": [
        "eyJhbGciOiJIUzI1NiJ9" + "." + "eyJzdWIiOiIxMjM0NTY3ODkwIn0" + "."
        + "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "eyJhbGciOiJub25lIn0" + "." + "eyJzdWIiOiJhZG1pbiJ9" + ".",
        "Bearer " + rep(ALNUM, 32),
        "bearer " + rep(ALNUM, 24) + "==",
    ],
    "pem_private": [
        "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD9\n"
        "-----END RSA PRIVATE KEY-----",
        "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0\\n-----END PRIVATE KEY-----",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
        "-----END OPENSSH PRIVATE KEY-----",
    ],
    "slack_token": [
        "xoxb-" + "123456789012-1234567890123-" + rep(ALNUM, 24),
        "xoxp-" + "1-2-3-" + rep("0a1b2c3d", 32),
        "xapp-" + "1-A0123456789-4567891234567-" + rep("0123456789abcdef", 64),
        "https://hooks.slack.com/services/" + "T01234567/B01234567/" + rep(ALNUM, 24),
    ],
    "google_api_key": [
        "AIza" + rep("Sy_0-9aZ", 35),
    ],
    "stripe_key": [
        "sk_" + "live_" + rep(ALNUM, 24),
        "rk_" + "test_" + rep(ALNUM, 99),
        "whsec_" + rep(ALNUM, 32),
    ],
}

NEGATIVES: dict[str, list[str]] = {
    "openai_sk": [
        "sk-short",
        "task-" + rep(ALNUM, 48),
        "/blog/sk-ski-trip-to-the-mountains-in-winter-2024-and-more",
        "sk-" + rep(ALNUM, 47),
        "sk-" + rep(ALNUM, 49),
        "sk-" + "proj-" + rep(ALNUM, 20),
    ],
    "anthropic_key": [
        "sk-" + "ant-api03-short",
        "sk-" + "ant-" + rep(ALNUM, 40),
    ],
    "aws_access_key": [
        "AKIA" + "IOSFODNN7EXAMPL",
        "akia" + "iosfodnn7example",
        "AKIA" + "IOSFODNN7EXAMPLEX",
        "aws_secret_access_key = short",
        rep("wJalrXUtnFEMI/K7MDENG", 40),
    ],
    "github_token": [
        "ghp_" + rep(ALNUM, 35),
        "ghx_" + rep(ALNUM, 36),
        "github_" + "pat_short",
    ],
    "jwt_bearer": [
        "eyJhbGciOiJIUzI1NiJ9.notapayload.signature",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0",
        "Bearer short",
        "bearing " + rep(ALNUM, 32),
    ],
    "pem_private": [
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYI\n-----END PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----",
        "BEGIN PRIVATE KEY",
    ],
    "slack_token": [
        "xoxb-notatoken-at-all",
        "xoxz-123456789-" + rep(ALNUM, 24),
        "xoxb-123456",
        "https://hooks.slack.com/services/",
    ],
    "google_api_key": [
        "AIza" + rep("Sy_0-9aZ", 34),
        "AIza" + rep("Sy_0-9aZ", 36),
        "AIzb" + rep("Sy_0-9aZ", 35),
    ],
    "stripe_key": [
        "pk_" + "live_" + rep(ALNUM, 24),
        "sk_" + "live_short",
        "mask_" + "live_" + rep(ALNUM, 24),
    ],
}


def test_every_configured_id_has_a_detector_and_cases() -> None:
    assert set(detectors.DETECTORS) == set(DETECTOR_IDS)
    assert set(POSITIVES) == set(DETECTOR_IDS) == set(NEGATIVES)


@pytest.mark.parametrize(("detector_id", "secret"),
                         [(d, s) for d, secrets in POSITIVES.items() for s in secrets])
def test_true_positive_exact_span(detector_id: str, secret: str) -> None:
    text = f"before {secret} after"
    hits = detectors.find(text)
    assert hits == [(7, 7 + len(secret), detector_id)]
    assert detectors.find(text, [detector_id]) == hits
    assert detectors.DETECTORS[detector_id].search(text) is not None
    assert detectors.redact_text(text) == f"before [REDACTED:{detector_id}] after"


@pytest.mark.parametrize(("detector_id", "text"),
                         [(d, t) for d, texts in NEGATIVES.items() for t in texts])
def test_near_miss_is_not_a_secret(detector_id: str, text: str) -> None:
    assert detectors.find(f"x {text} y") == [], detector_id
    assert detectors.redact_text(text) == text


def test_truncated_pem_redacts_to_the_end() -> None:
    text = "key=-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk"
    assert detectors.redact_text(text) == "key=[REDACTED:pem_private]"


def test_several_hits_and_subsets() -> None:
    github = "ghp_" + rep(ALNUM, 36)
    google = "AIza" + rep("Sy_0-9aZ", 35)
    text = f"{github} and {google}"
    assert [hit[2] for hit in detectors.find(text)] == ["github_token", "google_api_key"]
    assert detectors.find(text, ["google_api_key"]) == [(len(github) + 5, len(text),
                                                         "google_api_key")]
    assert detectors.find(text, []) == []
    assert detectors.redact_text(text, []) == text
    with pytest.raises(ValueError, match="unknown detector"):
        detectors.find(text, ["nope"])


def test_patterns_compile_for_bytes_scanners() -> None:
    import re

    secret = "ghp_" + rep(ALNUM, 36)
    for source in detectors.PATTERNS.values():
        re.compile(source.encode())
    assert re.search(detectors.PATTERNS["github_token"].encode(), secret.encode())
