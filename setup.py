"""Optional mypyc build of the request path (everything else is in pyproject.toml).

By default this adds nothing: ``pip install .`` and ``pip install -e .`` give the usual
pure-Python package. With ``LI_HTTPD_COMPILE=1`` (and mypy, which ships mypyc, in the
build environment: ``pip install --no-build-isolation`` from a venv that has the dev
extra) the modules in :data:`COMPILED` are also compiled to C extensions that sit next
to their ``.py`` files and are imported instead of them. ``bash ops/build-wheel`` builds
that wheel (the distributable one); use non-editable installs of it, the source stays
the one source of truth.

mypyc names a module after its path, and our folders become ``li_httpd.<folder>`` only
through ``[tool.setuptools.package-dir]``, which mypy cannot follow. So, like
``ops/typecheck``, the build makes a staging tree ``build/compiled/stage/li_httpd/<folder>``
of symlinks to the source folders and hands mypyc the staged paths with
``--explicit-package-bases``: the extensions come out as ``li_httpd.workers.http1`` etc.,
which setuptools places in the package folders the ``.py`` files are copied to.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup

COMPILED = [
    "workers/acme_responder.py",
    "workers/admission.py",
    "workers/backend_health.py",
    "workers/censor.py",
    "workers/client_cert.py",
    "workers/connection.py",
    "workers/context.py",
    "workers/exchange.py",
    "workers/housekeeping.py",
    "workers/http1.py",
    "workers/identity.py",
    "workers/json_fields.py",
    "workers/json_redact.py",
    "workers/metrics_server.py",
    "workers/policy.py",
    "workers/port.py",
    "workers/proxy.py",
    "workers/redis_blocking.py",
    "workers/redis_client.py",
    "workers/resp.py",
    "workers/responses.py",
    "workers/retry.py",
    "workers/shared_limits.py",
    "workers/sockio.py",
    "workers/sse.py",
    "workers/static.py",
    "workers/static_response.py",
    "workers/tls_io.py",
    "workers/upstream.py",
    "workers/usage.py",
    "workers/waitline.py",
    "workers/worker.py",
    "shm/budget.py",
    "shm/circuit.py",
    "shm/gcra.py",
    "shm/health.py",
    "shm/readiness.py",
    "shm/saturation.py",
    "shm/state.py",
    "shm/waitqueue.py",
    "config/paths.py",
    "config/matching.py",
    "config/router.py",
    "ops/log/queue.py",
    "ops/log/records.py",
    "ops/log/redact.py",
    "ops/log/writer.py",
]
"""Every module a worker runs per request: all of workers/ and shm/, the router with its
path and host matching, and the log pipeline's request side (what the worker enqueues,
redacts and formats). Not supervisor/ or actors/ (the master and its actors), nor the
rest of config/ (loaded once per config). tests/test_compiled.py checks the list;
docs/DEPENDENCIES.md has the measurements and mypyc's differences from CPython."""

_FOLDERS = ("supervisor", "workers", "actors", "shm", "config", "ops")


BUILD = Path("build", "compiled")
"""The compiled build's own build tree: a later plain build (``build/lib``) must never
pick up a stale extension from it."""


def _compiled_extensions() -> list[object]:
    try:
        from mypyc.build import mypycify  # ships with mypy (the dev extra)
    except ImportError:
        raise SystemExit("LI_HTTPD_COMPILE=1 needs mypy (mypyc) in the build environment: "
                         "pip install --no-build-isolation from a venv that has it") from None
    root = Path(__file__).resolve().parent
    stage = root / BUILD / "stage"
    (stage / "li_httpd").mkdir(parents=True, exist_ok=True)
    for folder in _FOLDERS:
        link = stage / "li_httpd" / folder
        if not link.is_symlink():
            link.symlink_to(root / folder, target_is_directory=True)
    os.environ["MYPYPATH"] = str(stage)
    paths = [str(BUILD / "stage" / "li_httpd" / p) for p in COMPILED]
    return mypycify(["--explicit-package-bases", "--config-file", str(root / "pyproject.toml"),
                     *paths],
                    group_name="li_httpd", target_dir=str(BUILD / "c"))


if os.environ.get("LI_HTTPD_COMPILE") == "1":
    if "editable_wheel" in sys.argv:
        # build_ext --inplace would drop .so files into the source folders, where they
        # would shadow every later edit of the .py files.
        raise SystemExit("LI_HTTPD_COMPILE=1 is for non-editable installs (pip install .)")
    setup(ext_modules=_compiled_extensions(),
          options={"build": {"build_base": str(BUILD)}})
else:
    setup()
