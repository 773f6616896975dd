"""Golden lines: timestamps, access (human and JSON), diagnostics, audit."""

from __future__ import annotations

import calendar

import orjson
from li_httpd.ops.log.records import (
    ERROR,
    INFO,
    WARN,
    AccessRecord,
    AuditRecord,
    DiagnosticRecord,
    Formatter,
    Timestamps,
    access_level,
    message_text,
    token,
)
from li_httpd.ops.log.redact import Redactor

T0 = calendar.timegm((2026, 11, 21, 23, 59, 59)) + 0.123
STAMP = "2026-11-21T23:59:59.123Z"


def fmt() -> Formatter:
    return Formatter(Redactor())


def test_timestamp_rfc3339_utc_millis() -> None:
    stamps = Timestamps()
    assert stamps.format(T0) == STAMP
    assert stamps.format(T0 + 0.001) == "2026-11-21T23:59:59.124Z"
    assert stamps.format(T0 - 0.123) == "2026-11-21T23:59:59.000Z"
    # rounding to the nearest millisecond may carry into the next second, day and year
    assert stamps.format(calendar.timegm((2026, 12, 31, 23, 59, 59)) + 0.9996) == \
        "2027-01-01T00:00:00.000Z"
    assert stamps.format(0.0) == "1970-01-01T00:00:00.000Z"


def test_access_human_golden() -> None:
    record: AccessRecord = ("access", T0, "req-1", "chat", "127.0.0.1:5555", 200, "completed",
                            12.3456, 10, 20, "POST", "/v1/chat?a=<redacted>", "10.0.0.7:40000",
                            "team-a")
    assert fmt().access(record) == (
        f"{STAMP} info req-1 chat 127.0.0.1:5555 200 completed 12.35 10 20 POST "
        f"/v1/chat?a=<redacted> 10.0.0.7:40000 team-a\n").encode()


def test_access_human_missing_values_and_levels() -> None:
    record: AccessRecord = ("access", T0, None, None, "", 404, "rejected", 0.0, 0, 0, None,
                            None, None, None)
    assert fmt().access(record) == \
        f"{STAMP} warn - - - 404 rejected 0.00 0 0 - - - -\n".encode()
    record = ("access", T0, b"r2", b"route", b"[::1]:80", 502, "upstream_error", 1.005, 5, 0,
              b"GET", b"/", b"[::1]:5", None)
    assert fmt().access(record) == \
        f"{STAMP} error r2 route [::1]:80 502 upstream_error 1.00 5 0 GET / [::1]:5 -\n".encode()
    assert (access_level(399), access_level(400), access_level(599)) == (INFO, WARN, ERROR)


def test_access_human_fields_never_split_or_break_the_line() -> None:
    record: AccessRecord = ("access", T0, 'id with "space"\n', "r", "p", 200, "completed", 1.0,
                            1, 2, None, "/a b", None, None)
    line = fmt().access(record)
    assert line.count(b"\n") == 1
    expected = (STAMP + r' info "id with \"space\"\n" r p 200 completed 1.00 1 2 - "/a b" - -'
                + "\n")
    assert line == expected.encode()
    assert token("") == "-"
    assert token("plain") == "plain"
    assert token("caf\u00e9") == "caf\u00e9"


def test_access_json() -> None:
    record: AccessRecord = ("access", T0, "req-1", "chat", "127.0.0.1:5555", 201, "completed",
                            3.14159,
                            10, 20, b"POST", b"/v1/x", b"127.0.0.1:4000", "key-a")
    line = fmt().access(record, json=True)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert orjson.loads(line) == {
        "ts": STAMP, "level": "info", "request_id": "req-1", "route": "chat",
        "peer": "127.0.0.1:5555", "status": 201, "outcome": "completed", "latency_ms": 3.14,
        "bytes_in": 10,
        "bytes_out": 20, "method": "POST", "path": "/v1/x", "client": "127.0.0.1:4000",
        "key_id": "key-a",
    }
    no_path: AccessRecord = ("access", T0, None, "c", "p", 200, "completed", 1.0, 0, 0,
                             None, None, None, None)
    decoded = orjson.loads(fmt().access(no_path, json=True))
    assert decoded["path"] is None and decoded["key_id"] is None


def test_diagnostic_human_golden() -> None:
    record: DiagnosticRecord = ("diagnostic", T0, WARN, "upstream refused",
                                {"request_id": "req-9", "peer": "10.0.0.2:8000", "try": 2,
                                 "detail": "connection reset", "ok": False, "none": None})
    assert fmt().diagnostic(record) == (
        f'{STAMP} warn req-9 upstream refused peer=10.0.0.2:8000 try=2 '
        f'detail="connection reset" ok=false none=-\n'.encode()
    )


def test_diagnostic_human_escapes_control_characters() -> None:
    record: DiagnosticRecord = ("diagnostic", T0, ERROR, "line1\nline2\x1b[31m", {})
    assert fmt().diagnostic(record) == \
        f"{STAMP} error - line1\\nline2\\x1b[31m\n".encode()
    assert message_text("tab\there") == "tab\\there"


def test_diagnostic_color_only_the_level() -> None:
    record: DiagnosticRecord = ("diagnostic", T0, ERROR, "boom", {})
    assert fmt().diagnostic(record, color=True) == \
        f"{STAMP} \x1b[1;31merror\x1b[0m - boom\n".encode()


def test_diagnostic_json() -> None:
    record: DiagnosticRecord = ("diagnostic", T0, INFO, "started",
                                {"request_id": None, "workers": 2,
                                 "listen": ["0.0.0.0:443"], "level": "shadowed"})
    assert orjson.loads(fmt().diagnostic(record, json=True)) == {
        "ts": STAMP, "level": "info", "request_id": None, "message": "started",
        "workers": 2, "listen": ["0.0.0.0:443"],
    }


def test_audit_golden() -> None:
    record: AuditRecord = ("audit", T0, "req-1", "key-a", "chat", "gpt-4o", "POST",
                           "/v1/chat/completions", 200, "completed", "allow",
                           "127.0.0.1:5555", 812.345, 95.5, 1200, 5400,
                           (("a", "a/127.0.0.1:1", "status_503"), ("b", "-", "down"),
                            ("c", "c/127.0.0.1:5555", None)), (1000, 250, 64, 0, 0.0005215),
                           ({"openai_sk": 2}, {"$.api_key": 1}), "alice")
    line = fmt().audit(record)
    assert line == (
        b'{"ts":"' + STAMP.encode() + b'","request_id":"req-1","key_id":"key-a",'
        b'"client_cert":"alice","route":"chat","model":"gpt-4o","method":"POST",'
        b'"path":"/v1/chat/completions",'
        b'"status":200,"outcome":"completed","decision":"allow","peer":"127.0.0.1:5555",'
        b'"latency_ms":812.35,"ttfb_ms":95.5,"bytes_in":1200,"bytes_out":5400,'
        b'"input_tokens":1000,"output_tokens":250,"cache_read_tokens":64,'
        b'"cache_write_tokens":0,"cost_usd":0.0005215,'
        b'"attempts":[{"pool":"a","peer":"a/127.0.0.1:1","failure":"status_503"},'
        b'{"pool":"b","peer":"-","failure":"down"},'
        b'{"pool":"c","peer":"c/127.0.0.1:5555","failure":null}],'
        b'"censor":{"detectors":{"openai_sk":2},"paths":{"$.api_key":1}}}\n'
    )
    bare: AuditRecord = ("audit", T0, "req-2", None, "chat", None, "GET", "/", 429,
                         "rejected", "rate_limited", "1.2.3.4:5", 0.5, None, 0, 0, None, None, None,
                         None)
    decoded = orjson.loads(fmt().audit(bare))
    assert list(decoded) == ["ts", "request_id", "key_id", "client_cert", "route", "model",
                             "method", "path", "status", "outcome", "decision", "peer",
                             "latency_ms", "ttfb_ms",
                             "bytes_in", "bytes_out", "input_tokens", "output_tokens",
                             "cache_read_tokens", "cache_write_tokens", "cost_usd",
                             "attempts", "censor"]
    assert decoded["censor"] is None and decoded["client_cert"] is None
    assert decoded["ttfb_ms"] is None and decoded["decision"] == "rate_limited"


def test_lone_surrogates_do_not_break_json_or_human_lines() -> None:
    bad = "/caf\udce9"
    record: AccessRecord = ("access", T0, "r", "c", "p", 200, "completed", 1.0, 0, 0, "GET",
                            bad, None, None)
    assert orjson.loads(fmt().access(record, json=True))["path"] == "/caf\\udce9"
    diagnostic: DiagnosticRecord = ("diagnostic", T0, ERROR, bad, {"path": bad})
    assert b"\\udce9" in fmt().diagnostic(diagnostic)
    assert b"\\udce9" in fmt().diagnostic(diagnostic, json=True)
