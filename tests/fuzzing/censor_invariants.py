"""The leak censor's invariant for fuzzing (``censor`` target): any bytes, split into
pieces anywhere, go through the body censor and the event-stream censor without an
exception, and what comes out holds no secret any detector recognises.

Input format: the first byte picks up to three cut points (from the next three bytes,
modulo the body's length); the rest is the body.
"""

from __future__ import annotations

from li_httpd.config.checks import DETECTOR_IDS
from li_httpd.ops.log import detectors
from li_httpd.workers.censor import ByteCensor, Rules, SseCensor

RULES = Rules(DETECTOR_IDS, "redact", ("$..password", "$.a[*].b"))


def pieces_of(data: bytes) -> list[bytes]:
    if len(data) < 4:
        return [data]
    count, points, body = data[0] % 4, data[1:4], data[4:]
    if not body:
        return [body]
    cuts = sorted({p % (len(body) + 1) for p in points[:count]})
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]


def leaked(out: bytes) -> list[tuple[int, int, str]]:
    return detectors.find(out.decode("latin-1"))


def check_censor_input(data: bytes) -> None:
    pieces = pieces_of(data)
    body = ByteCensor(RULES)
    out = b"".join(body.feed(piece) for piece in pieces) + body.finish()
    assert not leaked(out), (out, leaked(out))
    framed = ByteCensor(RULES, same_length=True)
    fixed = b"".join(framed.feed(piece) for piece in pieces) + framed.finish()
    assert len(fixed) == sum(map(len, pieces))
    assert not leaked(fixed), (fixed, leaked(fixed))
    whole = b"".join(pieces)
    events = SseCensor(RULES)
    sent = b""
    at = 0
    while (end := whole.find(b"\n\n", at)) >= 0:  # whole events, as the relay gives them
        sent += events.feed(whole[at:end + 2])
        at = end + 2
    sent += events.feed(whole[at:] + b"\n\n" if whole[at:] else b"") + events.finish()
    assert not leaked(sent), (sent, leaked(sent))
