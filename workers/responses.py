"""Building response heads and the gateway's own small JSON responses (pure).

Error bodies follow the OpenAI error shape so SDKs show them well:
``{"error": {"message": ..., "type": ..., "code": <status>, "request_id": ...}}``.
They never contain internals: messages are fixed per status or come from
:class:`~.http1.HttpError.message`, which is written for clients.
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterable

import orjson

from .http1 import Header

REASONS: dict[int, bytes] = {
    100: b"Continue", 200: b"OK", 201: b"Created", 202: b"Accepted", 204: b"No Content",
    206: b"Partial Content", 301: b"Moved Permanently", 302: b"Found",
    304: b"Not Modified", 307: b"Temporary Redirect", 308: b"Permanent Redirect",
    400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 409: b"Conflict",
    411: b"Length Required", 412: b"Precondition Failed", 413: b"Content Too Large",
    414: b"URI Too Long", 415: b"Unsupported Media Type", 416: b"Range Not Satisfiable",
    417: b"Expectation Failed", 422: b"Unprocessable Content", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}

ERROR_TYPES: dict[int, str] = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 408: "request_timeout", 413: "payload_too_large",
    414: "uri_too_long", 416: "range_not_satisfiable", 417: "expectation_failed",
    429: "rate_limited", 431: "headers_too_large", 500: "internal_error",
    502: "bad_gateway", 503: "unavailable", 504: "gateway_timeout",
    505: "http_version_not_supported",
}

DEFAULT_MESSAGES: dict[int, str] = {
    404: "no route matches this request",
    405: "method not allowed on this route",
    408: "request timed out",
    413: "request body too large",
    502: "upstream failed",
    503: "no upstream available",
    504: "upstream timed out",
}

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def status_line(status: int) -> bytes:
    reason = REASONS.get(status)
    if reason is None:
        return b"HTTP/1.1 %d Status\r\n" % status
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


STATUS_LINES: dict[int, bytes] = {code: status_line(code) for code in REASONS}


def http_date(epoch: float) -> bytes:
    return email.utils.formatdate(epoch, usegmt=True).encode()


def render_head(status: int, headers: Iterable[Header]) -> bytes:
    line = STATUS_LINES.get(status) or status_line(status)
    return line + b"".join([name + b": " + value + b"\r\n" for name, value in headers]) + \
        b"\r\n"


def error_body(status: int, request_id: bytes, message: str | None = None,
               error_type: str | None = None) -> bytes:
    return orjson.dumps({"error": {
        "message": message or DEFAULT_MESSAGES.get(status) or REASONS.get(status, b"").decode(),
        "type": error_type or ERROR_TYPES.get(status, "error"),
        "code": status,
        "request_id": request_id.decode("ascii", "replace"),
    }})


def json_response(status: int, body: bytes, request_id: bytes, date: bytes, *,
                  keep_alive: bool, extra: Iterable[Header] = (),
                  head_only: bool = False) -> bytes:
    """A complete response with a JSON body (headers only when ``head_only``)."""
    headers: list[Header] = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"x-request-id", request_id),
        (b"date", date),
        *extra,
    ]
    if not keep_alive:
        headers.append((b"connection", b"close"))
    head = render_head(status, headers)
    return head if head_only else head + body


def error_response(status: int, request_id: bytes, date: bytes, *, keep_alive: bool,
                   message: str | None = None, extra: Iterable[Header] = (),
                   head_only: bool = False, error_type: str | None = None) -> bytes:
    return json_response(status, error_body(status, request_id, message, error_type),
                         request_id, date, keep_alive=keep_alive, extra=extra,
                         head_only=head_only)
