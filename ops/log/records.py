"""Record shapes, levels, timestamps and line formatting (pure).

Theory of operation: the request path builds one plain tuple per record (a tuple
literal costs far less than an object or a formatted string) and appends it to the
per-process :class:`~.queue.LogQueue`. The writer later turns batches of tuples into
lines with a :class:`Formatter`, which is where the timestamps are printed and every
string passes the :class:`~.redact.Redactor`. The first item of each tuple is its kind,
so a type checker narrows ``record[0] == "access"`` to :data:`AccessRecord`.

Line formats (``ts`` is RFC 3339 UTC with milliseconds, ``2026-11-21T23:59:59.123Z``;
``-`` stands for a missing value; a token containing a space, a quote or a control
character is printed as a JSON string so a line always splits back into its fields):

- access, human: ``ts level request_id route peer status outcome latency_ms bytes_in
  bytes_out method path client key_id`` with ``latency_ms`` to 2 decimals (the path's
  query values are already redacted by the caller). The level follows the status:
  ``info`` below 400, ``warn`` for 4xx, ``error`` for 5xx, so ``[log.access] level =
  "warn"`` keeps only failures. JSON: one object with the same keys.
- diagnostic (error file, stderr), human: ``ts level request_id message key=value...``
  (``request_id`` is taken from the fields; the message has control characters
  escaped so one record is always one line). JSON: ``ts, level, request_id, message``
  then the fields.
- audit: always JSONL: ``ts, request_id, key_id, client_cert, route, model, method, path,
  status, outcome, decision, peer, latency_ms, ttfb_ms, bytes_in, bytes_out``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Final, Literal

import orjson

from .redact import Redactor

Level = Literal["trace", "debug", "info", "warn", "error"]
LEVEL_NAMES: Final[tuple[Level, ...]] = ("trace", "debug", "info", "warn", "error")
TRACE, DEBUG, INFO, WARN, ERROR = range(5)
LEVELS: Final[dict[str, int]] = {name: number for number, name in enumerate(LEVEL_NAMES)}
"""Level name -> number; higher is more severe. Records carry the number."""

Decision = Literal["allow", "deny", "rate_limited", "error"]
Text = str | bytes
"""Strings from the request path may stay bytes; the formatter decodes them (latin-1)."""

AccessRecord = tuple[
    Literal["access"],
    float,        # ts: seconds since the epoch (time.time())
    Text | None,  # request_id
    Text | None,  # route
    Text | None,  # peer ("ip:port")
    int,          # status
    str,          # outcome: how the request ended (completed, upstream_cut, ...)
    float,        # latency_ms
    int,          # bytes_in
    int,          # bytes_out
    Text | None,  # method
    Text | None,  # path (query values redacted)
    Text | None,  # client ("ip:port")
    Text | None,  # key_id of the caller's API key
]
Attempts = Sequence[tuple[str, str, str | None]]
"""A request's upstream attempts in order: (pool, peer, failure or None for the attempt
that answered). Peer ``-``: the pool had no peer up."""
TokenUsage = tuple[int, int, int, int, float]
"""input, output, cache-read and cache-write tokens, and the cost in USD."""
CensorHits = tuple[Mapping[str, int], Mapping[str, int]]
"""What the leak censor found in the response: counts per detector id and per JSON deny
path (never the secret itself)."""
AuditRecord = tuple[
    Literal["audit"],
    float,         # ts
    Text | None,   # request_id
    Text | None,   # key_id
    Text | None,   # route
    Text | None,   # model
    Text | None,   # method
    Text | None,   # path
    int,           # status
    str,           # outcome
    str,           # decision: allow | deny | rate_limited | error
    Text | None,   # peer
    float,         # latency_ms
    float | None,  # ttfb_ms
    int,           # bytes_in
    int,           # bytes_out
    Attempts | None,  # attempts: only when an attempt failed
    TokenUsage | None,  # the usage the upstream reported, priced
    CensorHits | None,  # what the leak censor found
    Text | None,   # client_cert: the verified client certificate's identity (mTLS)
]
DiagnosticRecord = tuple[
    Literal["diagnostic"],
    float,               # ts
    int,                 # level number (see LEVELS)
    Text,                # message
    Mapping[str, object],  # fields (request_id, if any, is printed in its own column)
]
Record = AccessRecord | AuditRecord | DiagnosticRecord
Kind = Literal["access", "audit", "diagnostic"]


def access_level(status: int) -> int:
    """The level of an access line: info below 400, warn for 4xx, error for 5xx."""
    if status >= 500:
        return ERROR
    if status >= 400:
        return WARN
    return INFO


class Timestamps:
    """RFC 3339 UTC timestamps with milliseconds, with the date-time part cached.

    Lines come in bursts within the same second, so ``strftime`` runs about once a
    second; the milliseconds are rounded to nearest so ``x.123`` prints ``.123`` despite
    binary floating point.
    """

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, ts: float) -> str:
        millis = round(ts * 1000)
        second, milli = divmod(millis, 1000)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{milli:03d}Z"


def _decode(value: Text) -> str:
    return value if isinstance(value, str) else value.decode("latin-1")


def token(value: str | None) -> str:
    """One space-free field of a human line: ``-`` if empty, JSON-quoted if it needs to be."""
    if not value:
        return "-"
    if value.isprintable() and " " not in value and '"' not in value:
        return value
    return _json_text(value)


def _json_text(value: str) -> str:
    return orjson.dumps(value.encode("utf-8", "backslashreplace").decode("utf-8")).decode()


def message_text(value: str) -> str:
    """Free text on one line: control characters (and backslashes) escaped when present."""
    if value.isprintable():
        return value
    return value.encode("unicode_escape").decode("ascii")


def _field_text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return token(value)
    return _json_bytes(value).decode()


def _scrub_surrogates(value: object) -> object:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_scrub_surrogates(k): _scrub_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_surrogates(v) for v in value]
    return value


def _json_bytes(value: object) -> bytes:
    """orjson, with lone surrogates (from surrogateescape'd input) escaped, not fatal."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return orjson.dumps(_scrub_surrogates(value))


class Formatter:
    """Turns records into finished lines (bytes ending in ``\\n``), redacting every string.

    Owned by one writer (not thread-safe: the timestamp cache is shared state).
    """

    __slots__ = ("redactor", "timestamps")

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.timestamps = Timestamps()

    def _text(self, value: Text | None) -> str | None:
        return None if value is None else self.redactor.text(_decode(value))

    def access(self, record: AccessRecord, json: bool = False) -> bytes:
        (_, ts, request_id, route, peer, status, outcome, latency_ms, bytes_in, bytes_out,
         method, path, client, key_id) = record
        text = self._text
        level = LEVEL_NAMES[access_level(status)]
        if json:
            obj: dict[str, object] = {
                "ts": self.timestamps.format(ts), "level": level,
                "request_id": text(request_id), "route": text(route), "peer": text(peer),
                "status": status, "outcome": outcome, "latency_ms": round(latency_ms, 2),
                "bytes_in": bytes_in, "bytes_out": bytes_out, "method": text(method),
                "path": text(path), "client": text(client), "key_id": text(key_id),
            }
            return _json_bytes(obj) + b"\n"
        line = (f"{self.timestamps.format(ts)} {level} {token(text(request_id))} "
                f"{token(text(route))} {token(text(peer))} {status} {token(outcome)} "
                f"{latency_ms:.2f} {bytes_in} {bytes_out} {token(text(method))} "
                f"{token(text(path))} {token(text(client))} {token(text(key_id))}\n")
        return line.encode("utf-8", "backslashreplace")

    def audit(self, record: AuditRecord) -> bytes:
        (_, ts, request_id, key_id, route, model, method, path, status, outcome, decision,
         peer, latency_ms, ttfb_ms, bytes_in, bytes_out, attempts, usage, censor,
         client_cert) = record
        text = self._text
        obj: dict[str, object] = {
            "ts": self.timestamps.format(ts), "request_id": text(request_id),
            "key_id": text(key_id), "client_cert": text(client_cert),
            "route": text(route), "model": text(model),
            "method": text(method), "path": text(path), "status": status,
            "outcome": outcome, "decision": text(decision), "peer": text(peer),
            "latency_ms": round(latency_ms, 2),
            "ttfb_ms": None if ttfb_ms is None else round(ttfb_ms, 2),
            "bytes_in": bytes_in, "bytes_out": bytes_out,
            "input_tokens": None if usage is None else usage[0],
            "output_tokens": None if usage is None else usage[1],
            "cache_read_tokens": None if usage is None else usage[2],
            "cache_write_tokens": None if usage is None else usage[3],
            "cost_usd": None if usage is None else round(usage[4], 8),
            "attempts": None if attempts is None else [
                {"pool": pool, "peer": text(peer_label), "failure": failure}
                for pool, peer_label, failure in attempts],
            "censor": None if censor is None else {"detectors": dict(censor[0]),
                                                   "paths": dict(censor[1])},
        }
        return _json_bytes(obj) + b"\n"

    def diagnostic(self, record: DiagnosticRecord, json: bool = False,
                   color: bool = False) -> bytes:
        _, ts, level_number, message, raw_fields = record
        fields = self.redactor.fields(raw_fields)
        request_id = fields.pop("request_id", None)
        level = LEVEL_NAMES[level_number]
        msg = self.redactor.text(message if isinstance(message, str | bytes) else str(message))
        if json:
            obj: dict[str, object] = {"ts": self.timestamps.format(ts), "level": level,
                                      "request_id": request_id, "message": msg}
            for key, value in fields.items():
                obj.setdefault(key, value)  # a field cannot overwrite ts/level/message
            return _json_bytes(obj) + b"\n"
        shown_level = _COLORS[level_number] + level + _RESET if color else level
        rid = token(request_id) if isinstance(request_id, str) else _field_text(request_id)
        parts = [self.timestamps.format(ts), shown_level, rid, message_text(msg)]
        parts.extend(f"{token(key)}={_field_text(value)}" for key, value in fields.items())
        return (" ".join(parts) + "\n").encode("utf-8", "backslashreplace")


_COLORS: Final = ("\x1b[2m", "\x1b[36m", "\x1b[32m", "\x1b[33m", "\x1b[1;31m")
_RESET: Final = "\x1b[0m"
