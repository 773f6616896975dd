"""Load generation and correctness checks: wrk, the streaming and latency drivers, verify.

Every load function returns a flat ``{metric: (value, unit)}`` dict for one run; the
harness takes the median over runs. ``verify`` checks every server's answers before any
timing: a server that answers wrongly is never measured.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .tls import client_context

Metrics = dict[str, tuple[float, str]]

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_LATENCY_LINE = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(output: str) -> Metrics:
    metrics: Metrics = {}
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not found:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{output}")
    metrics["rps"] = (float(found.group(1)), "req/s")
    for percentile, value, unit in _LATENCY_LINE.findall(output):
        metrics[f"p{percentile}_latency_ms"] = (_ms(value, unit), "ms")
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", output)
    if transfer:
        scale = {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}[transfer.group(2)]
        metrics["transfer_mib_s"] = (float(transfer.group(1)) * scale, "MiB/s")
    requests = re.search(r"(\d+) requests in", output)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       output)
    metrics["requests"] = (float(requests.group(1)) if requests else 0.0, "count")
    metrics["non_2xx"] = (float(bad.group(1)) if bad else 0.0, "count")
    metrics["socket_errors"] = (float(sum(int(g) for g in errors.groups())) if errors else 0.0,
                                "count")
    return metrics


def run_wrk(url: str, threads: int, connections: int, seconds: float, *,
            method: str = "GET", body: str = "", headers: Sequence[str] = ()) -> Metrics:
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
               "--latency", "--timeout", "10s"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        from .render import wrk_script

        script.write(wrk_script(method, body, headers) if method != "GET" or body else "")
    if method != "GET" or body:
        command += ["-s", script.name]
    else:
        for header in headers:
            command += ["-H", header]
    try:
        output = subprocess.run([*command, url], capture_output=True, text=True, check=True,
                                timeout=seconds + 60).stdout
    finally:
        Path(script.name).unlink(missing_ok=True)
    return parse_wrk(output)


def run_driver(module: str, arguments: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run ``python -m li_httpd.ops.bench.drivers.<module> ... --json FILE``."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "out.json"
        command = [sys.executable, "-m", f"li_httpd.ops.bench.drivers.{module}", *arguments,
                   "--json", str(out)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                check=False)
        if result.returncode != 0 or not out.exists():
            raise RuntimeError(f"driver {module} failed ({result.returncode}):\n"
                               f"{result.stdout[-1500:]}{result.stderr[-1500:]}")
        loaded: dict[str, Any] = json.loads(out.read_text())
        return loaded


def sse_metrics(report: Mapping[str, Any]) -> Metrics:
    metrics: Metrics = {}
    for name in ("added_delay_ms", "ttfb_ms", "gap_ms"):
        for percentile in ("p50", "p95", "p99", "max"):
            value = report.get(name, {}).get(percentile)
            if value is not None:
                metrics[f"{name.removesuffix('_ms')}_{percentile}_ms"] = (float(value), "ms")
    for name in ("streams_opened", "completed", "cut_by_driver", "peak_concurrent", "events"):
        if name in report:
            metrics[name] = (float(report[name]), "count")
    errors = report.get("errors", {})
    metrics["stream_errors"] = (float(sum(errors.values()) if isinstance(errors, dict)
                                      else errors), "count")
    if report.get("duration_s"):
        metrics["events_per_s"] = (float(report.get("events", 0)) / float(report["duration_s"]),
                                   "events/s")
    if "driver_cpu_s" in report:
        metrics["driver_cpu_s"] = (float(report["driver_cpu_s"]), "s")
    return metrics


def latency_metrics(report: Mapping[str, Any]) -> dict[str, Metrics]:
    """Per concurrency level (variant ``c<N>``)."""
    levels: dict[str, Metrics] = {}
    for level in report.get("levels", []):
        metrics: Metrics = {"rps": (float(level["rps"]), "req/s")}
        for key, prefix in (("latency_ms", "latency"), ("baseline_latency_ms", "baseline"),
                            ("added_ms", "added")):
            for percentile, value in (level.get(key) or {}).items():
                metrics[f"{prefix}_{percentile}_ms"] = (float(value), "ms")
        metrics["errors"] = (float(level.get("errors", 0)), "count")
        levels[f"c{level['concurrency']}"] = metrics
    return levels


def verify(port: int, requests: Sequence[Mapping[str, Any]],
           fixtures: Mapping[str, bytes], ca: Path | None = None) -> list[str]:
    """Check each ``[verify]`` request; returns the failures (empty when all pass). With
    ``ca`` the requests go over https, the server's certificate checked against it."""
    context = client_context(ca) if ca else None
    failures: list[str] = []
    for spec in requests:
        for _ in range(int(spec.get("repeat", 1))):
            failure = _check(port, spec, fixtures, context)
            if failure:
                failures.append(failure)
                break
    return failures


def _check(port: int, spec: Mapping[str, Any], fixtures: Mapping[str, bytes],
           context: ssl.SSLContext | None = None) -> str | None:
    method = spec.get("method", "GET")
    path = spec["path"]
    body = spec.get("request_body")
    headers = dict(spec.get("headers", {}))
    if method == "POST" and body is None and spec.get("json"):
        body = '{"model":"mock-chat","messages":[{"role":"user","content":"hi"}]}'
    if body is not None:
        headers.setdefault("content-type", "application/json")
    try:
        connection = (http.client.HTTPSConnection("127.0.0.1", port, timeout=30,
                                                  context=context) if context else
                      http.client.HTTPConnection("127.0.0.1", port, timeout=30))
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        content = response.read()
        connection.close()
    except (OSError, http.client.HTTPException) as exc:
        return f"{method} {path}: {exc!r}"
    where = f"{method} {path}"
    if "status" in spec and response.status != spec["status"]:
        return f"{where}: status {response.status}, expected {spec['status']}"
    if "body" in spec and content != spec["body"].encode():
        return f"{where}: body {content[:80]!r}"
    if "fixture" in spec:
        expected = fixtures[spec["fixture"]]
        if hashlib.sha256(content).digest() != hashlib.sha256(expected).digest():
            return f"{where}: body differs from fixture {spec['fixture']} ({len(content)} bytes)"
    if "body_contains" in spec and spec["body_contains"].encode() not in content:
        return (f"{where}: body lacks {spec['body_contains']!r} ({len(content)} bytes, "
                f"ending {content[-60:]!r})")
    return None
