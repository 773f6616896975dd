"""The in-process request-cost harness serves real proxied requests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from li_httpd.ops.bench.inproc import measure

ROOT = Path(__file__).resolve().parents[2]


async def test_measure_proxies_every_request() -> None:
    for kind in ("get", "chat", "chat_noacct", "chat_budget"):
        wall, cpu = await measure(50, kind)
        assert cpu > 0 and 0 < wall < 1.0  # per request; a hang or an error would raise


def test_runs_as_a_script_with_any_install() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "ops/bench/inproc.py"), "30"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("30 get requests: ") and "us/request CPU" in done.stdout
