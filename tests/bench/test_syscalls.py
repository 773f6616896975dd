"""The syscall counter attaches to the right worker and reports per-request counts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _require(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing and os.environ.get("LI_HTTPD_REQUIRE_EXTERNAL") == "1":
        pytest.fail(f"{', '.join(missing)} not installed (LI_HTTPD_REQUIRE_EXTERNAL=1)")
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")


def test_counts_syscalls_of_li_and_nginx() -> None:
    _require("strace", "nginx")
    done = subprocess.run(
        [sys.executable, "-m", "li_httpd.ops.bench.syscalls", "--requests", "50",
         "--concurrency", "2", "--li-python", sys.executable],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    headers = [line for line in lines if "syscalls per request" in line]
    assert [h.split()[0].rstrip(",") for h in headers] == ["li", "nginx"], done.stdout
    # Every proxied request reads from the client and writes to it: at least one of
    # each per request, whatever the build.
    assert any(line.split()[0] in ("recvfrom", "read") and float(line.split()[1]) >= 1
               for line in lines if line.startswith("    ")), done.stdout
