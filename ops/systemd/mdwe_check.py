"""Does li-httpd run under the unit's ``MemoryDenyWriteExecute=yes``?

systemd 252 implements that setting as a seccomp filter: ``mmap`` with both PROT_WRITE
and PROT_EXEC, any ``mprotect``/``pkey_mprotect`` adding PROT_EXEC, and ``shmat`` with
SHM_EXEC fail with EPERM. This script installs the same rules on itself (libseccomp
through ctypes, the library systemd links), checks that the filter bites, and then, with
every process it starts inheriting it:

- loads the native code the service loads (cryptography's Rust and cffi OpenSSL
  bindings, httptools, orjson, pyzmq when installed, ssl, every li_httpd subpackage)
  and makes a libffi closure (a ctypes callback: libffi 3.4's static trampolines need
  no W+X page);
- runs ``li-httpd mock-upstream`` and ``li-httpd start`` with a self-signed TLS
  listener and two workers, sends a request and a streamed request through it, and
  stops it with SIGTERM.

Not covered, because nothing here uses it: cffi's ABI-mode ``ffi.callback()``, which
does need W+X memory and fails under the setting (cryptography, pyzmq and trio use no
such callbacks; API-mode ``@ffi.def_extern`` callbacks are fine). A new dependency that
uses it, or a JIT, means dropping the setting.

Exit 0: works under the filter; 1: something failed (the unit must drop the setting);
77: the filter cannot be installed here (no libseccomp or seccomp refused), nothing
was checked. Run with the project's venv Python: ``.venv/bin/python
ops/systemd/mdwe_check.py``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import importlib
import mmap
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

SKIP = 77
SHM_EXEC = 0o100000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7
START_TIMEOUT = 30.0


def _act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def install_filter() -> str | None:
    """Install systemd's MemoryDenyWriteExecute rules; an error message, or None."""
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        return f"libseccomp not found ({exc})"
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.restype = ctypes.c_int
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        return "seccomp_init failed"
    write_exec = mmap.PROT_WRITE | mmap.PROT_EXEC
    rules = [("mmap", write_exec, write_exec), ("mprotect", mmap.PROT_EXEC, mmap.PROT_EXEC),
             ("pkey_mprotect", mmap.PROT_EXEC, mmap.PROT_EXEC),
             ("shmat", SHM_EXEC, SHM_EXEC)]
    try:
        for syscall, mask, value in rules:
            number = lib.seccomp_syscall_resolve_name(syscall.encode())
            if number < 0:
                continue
            cmp = _ArgCmp(2, SCMP_CMP_MASKED_EQ, mask, value)
            rc = lib.seccomp_rule_add_array(ctx, _act_errno(errno.EPERM), number, 1,
                                            ctypes.byref(cmp))
            if rc < 0:
                return f"seccomp_rule_add({syscall}): {os.strerror(-rc)}"
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            return f"seccomp_load: {os.strerror(-rc)}"
    finally:
        lib.seccomp_release(ctx)
    return None


def filter_bites() -> bool:
    """A W+X anonymous mapping, and making a mapping executable, must be refused (EPERM)."""
    try:
        mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        pass
    else:
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    refused = libc.mprotect(address, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_EXEC) != 0
    return refused and ctypes.get_errno() == errno.EPERM


def native_code() -> None:
    """Load the service's native extensions and make libffi closures."""
    import ssl

    import _cffi_backend  # type: ignore[import-untyped]
    import httptools
    import li_httpd.actors
    import li_httpd.config
    import li_httpd.shm
    import li_httpd.supervisor.master
    import li_httpd.workers
    import orjson
    from cryptography import x509
    from cryptography.hazmat.bindings._rust import openssl as rust_openssl
    from cryptography.hazmat.bindings.openssl.binding import Binding
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    assert li_httpd.actors and li_httpd.config and li_httpd.shm and li_httpd.workers
    assert li_httpd.supervisor.master
    key = ec.generate_private_key(ec.SECP256R1())
    key.public_key().verify(key.sign(b"x", ec.ECDSA(hashes.SHA256())), b"x",
                            ec.ECDSA(hashes.SHA256()))
    assert rust_openssl.openssl_version_text()
    assert x509.Name([]) is not None
    assert orjson.loads(orjson.dumps({"a": [1, 2]})) == {"a": [1, 2]}
    assert httptools.parse_url(b"/v1/chat?x=1").path == b"/v1/chat"
    assert ssl.create_default_context().minimum_version >= ssl.TLSVersion.TLSv1_2

    # cryptography's OpenSSL bindings: a cffi API-mode module inside _rust.abi3.so.
    assert Binding().lib.OpenSSL_version_num() > 0
    assert _cffi_backend.__version__

    try:  # pyzmq may not be installed (yet); import by name so mypy need not find it
        zmq = importlib.import_module("zmq")
    except ImportError:
        pass
    else:
        context = zmq.Context()
        context.socket(zmq.PAIR).close()
        context.term()

    compare_t = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int),
                                 ctypes.POINTER(ctypes.c_int))

    def compare(a: ctypes._Pointer[ctypes.c_int], b: ctypes._Pointer[ctypes.c_int]) -> int:
        return int(a[0]) - int(b[0])

    values = (ctypes.c_int * 4)(3, 1, 4, 2)
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.qsort(values, len(values), ctypes.sizeof(ctypes.c_int), compare_t(compare))
    assert list(values) == [1, 2, 3, 4]


def _cli(*args: str) -> subprocess.Popen[str]:
    """``li-httpd ARGS`` with output on a pipe (it inherits this process's filter)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LI_HTTPD_CONFIG", None)
    return subprocess.Popen([sys.executable, "-m", "li_httpd.supervisor.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)


def _wait_line(proc: subprocess.Popen[str], pattern: str, seen: list[str]) -> str:
    """The first group of the first output line matching ``pattern``; kills ``proc``
    (so its output ends) if that takes longer than :data:`START_TIMEOUT`."""
    assert proc.stdout is not None
    watchdog = threading.Timer(START_TIMEOUT, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            seen.append(line.rstrip("\n"))
            found = re.search(pattern, line)
            if found:
                return found.group(1)
    finally:
        watchdog.cancel()
    raise RuntimeError(f"no line matching {pattern!r}:\n" + "\n".join(seen))


def serve(scratch: Path) -> None:
    """Run the mock upstream and a TLS gateway with two workers; request; stop."""
    import ssl

    import httpx

    seen: list[str] = []
    mock = _cli("mock-upstream", "--port", "0")
    gateway: subprocess.Popen[str] | None = None
    try:
        upstream = _wait_line(mock, r"listening on (http://\S+)", seen)
        cert_dir = scratch / "certs"
        config = scratch / "li-httpd.toml"
        config.write_text(
            f'[server]\nlisten = "127.0.0.1:0"\nprofile = "dev"\nworkers = 2\n'
            f'shutdown_timeout = "5s"\n\n[server.tls]\nmode = "self_signed"\n'
            f'cert_dir = "{cert_dir}"\n\n[upstreams.main]\npeers = ["{upstream}"]\n\n'
            f'[routes]\n"GET /health" = "static:healthcheck"\n"/v1/*" = "proxy:main"\n')
        gateway = _cli("start", "-c", str(config))
        url = _wait_line(gateway, r"listen=(\S+)", seen)
        status_text = Path(f"/proc/{gateway.pid}/status").read_text()
        assert re.search(r"^Seccomp:\s+2$", status_text, re.M), "filter not inherited"
        context = ssl.create_default_context(cafile=str(cert_dir / "self_signed.crt"))
        with httpx.Client(base_url=url, verify=context, timeout=10) as client:
            assert client.get("/health").json() == {"status": "ok"}
            payload = {"model": "m", "stream": True, "messages": []}
            with client.stream("POST", "/v1/chat/completions?tokens=4", json=payload) as reply:
                lines = [x for x in reply.iter_lines() if x.startswith("data: ")]
            assert lines and lines[-1] == "data: [DONE]", lines
        gateway.send_signal(signal.SIGTERM)
        status = gateway.wait(30)
        if status != 0:
            raise RuntimeError(f"li-httpd exited {status} after SIGTERM:\n" + "\n".join(seen))
    finally:
        for proc in (gateway, mock):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def main() -> int:
    problem = install_filter()
    if problem is not None:
        print(f"mdwe-check: skipped, cannot install the seccomp filter: {problem}")
        return SKIP
    if not filter_bites():
        print("mdwe-check: the filter does not refuse W+X memory; nothing checked")
        return 1
    try:
        native_code()
        with tempfile.TemporaryDirectory(prefix="li-httpd-mdwe-") as scratch:
            serve(Path(scratch))
    except Exception as exc:
        print(f"mdwe-check: FAILED under MemoryDenyWriteExecute: {type(exc).__name__}: {exc}")
        return 1
    print("mdwe-check: ok (native extensions, libffi closures, TLS gateway with 2 workers "
          "under MemoryDenyWriteExecute rules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
