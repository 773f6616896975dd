"""Log files on disk: modes, appends, reopen, rotation and compression (sync, no trio).

Modes: directories are created 0750 and files 0640 (SPEC §9), set with chmod after
creation so the exact mode holds under any umask. Existing files and directories keep
the mode the operator gave them.

Appends: every process (each worker, and the master) opens each file itself with
``O_APPEND`` and writes a whole batch of complete lines with one ``os.write``. On
Linux a ``write`` to a regular file holds the inode lock for its whole length, so
batches from several processes never interleave mid-line on local filesystems (not
guaranteed on NFS). A short write (disk full) finishes with further writes; such a
batch may then interleave, which beats losing it.

Rotation is done by the MASTER only, synchronously, about once a second
(:class:`Rotator`), because only one process may rename files. One rotation of
``access.log``:

1. backups are shifted ``access.log.1`` -> ``.2`` ... (plain or ``.gz``); those that
   would go past ``max_backups`` are deleted;
2. ``access.log`` is renamed to ``access.log.1`` and a new empty ``access.log`` is
   created at once (0640), so the file always exists;
3. the master sends SIGUSR1 to the workers and reopens its own files; processes keep
   appending to the renamed inode (``.1``) until they reopen, so no line is lost;
4. after a grace period (:data:`REOPEN_GRACE`, ten writer flush intervals) ``.1`` is
   compressed to ``.1.gz`` in a background thread and backups beyond ``max_backups``
   are pruned. Compressing earlier could lose lines still being appended to ``.1``.

Age: Linux ``os.stat`` has no birth time on Python 3.11 and ``st_ctime`` changes on
every write, so the start of a file's age is kept in a sidecar ``.<name>.born`` next
to it: ``<inode> <epoch seconds>``. A file whose inode differs from the sidecar's (first
sight, or replaced by an external ``mv`` + SIGUSR1 as with logrotate) starts its age
when the master first sees it; the sidecar survives master restarts, so frequent
restarts do not postpone age rotation. An empty file is never rotated for age (its age
restarts instead), so idle sinks do not fill the disk with empty backups.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

from li_httpd.config.model import Rotation

DIR_MODE: Final = 0o750
FILE_MODE: Final = 0o640
REOPEN_GRACE: Final = 1.0
"""Seconds between rotating a file (and signalling SIGUSR1) and compressing its backup."""

_APPEND_FLAGS: Final = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
_OPEN_ATTEMPTS: Final = 5
_COPY_CHUNK: Final = 1 << 20


# -- directories and files ------------------------------------------------------------------


def ensure_dir(path: str) -> None:
    """Create directory ``path`` and its missing parents, each with mode exactly 0750.

    Raises OSError (permission, a file in the way). Safe against another process
    creating the same directories at the same time.
    """
    missing: list[str] = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(directory, DIR_MODE)


def open_append(path: str) -> int:
    """An ``O_APPEND`` fd on ``path``, creating the file with mode exactly 0640 if absent.

    ``O_EXCL`` tells whether this call created the file, so only a new file gets its
    mode set. Raises OSError; the directory must exist (:func:`ensure_dir`).
    """
    for _ in range(_OPEN_ATTEMPTS):
        try:
            fd = os.open(path, _APPEND_FLAGS | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            try:
                return os.open(path, _APPEND_FLAGS)
            except FileNotFoundError:
                continue  # removed between the two opens: create it again
        try:
            os.fchmod(fd, FILE_MODE)
        except OSError:
            os.close(fd)
            raise
        return fd
    raise FileNotFoundError(f"cannot open {path}: it keeps disappearing")


def write_all(fd: int, data: bytes) -> None:
    """Write ``data`` with one ``os.write`` (more only after a short write). Raises OSError."""
    written = os.write(fd, data)
    while written < len(data):
        more = os.write(fd, data[written:])
        if more <= 0:
            raise OSError(f"short write on fd {fd}")
        written += more


def prepare(paths: Iterable[str]) -> None:
    """Create the directories and files of ``paths`` now (0750 / 0640); raises OSError.

    The master calls this before forking, so a log directory it cannot write stops
    startup with a clear error instead of surfacing later as counted write errors.
    """
    for path in paths:
        ensure_dir(os.path.dirname(os.path.abspath(path)))
        os.close(open_append(path))


class LogFiles:
    """The append-only fds of one process, by path. Never raises after construction.

    Failures (open, write) are counted in :attr:`errors` per path; a failed path is
    opened again at the next write, so a log directory restored by an operator starts
    receiving lines again without a restart.
    """

    __slots__ = ("_fds", "errors")

    def __init__(self, paths: Iterable[str]) -> None:
        self._fds: dict[str, int | None] = dict.fromkeys(paths)
        self.errors: dict[str, int] = dict.fromkeys(self._fds, 0)
        """Failed opens and writes per path (monotonic)."""
        for path in self._fds:
            self._fds[path] = self._open(path)

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(self._fds)

    def _open(self, path: str) -> int | None:
        try:
            ensure_dir(os.path.dirname(os.path.abspath(path)))
            return open_append(path)
        except OSError:
            self.errors[path] += 1
            return None

    def write(self, path: str, data: bytes) -> bool:
        """Append ``data`` (complete lines) to ``path``; False (and counted) on failure."""
        if not data:
            return True
        fd = self._fds.get(path)
        if fd is None:
            if path not in self._fds:
                return False
            fd = self._fds[path] = self._open(path)
            if fd is None:
                return False
        try:
            write_all(fd, data)
        except OSError:
            self.errors[path] += 1
            return False
        return True

    def reopen(self) -> None:
        """Open every path again and close the old fds (after a rename by rotation or
        logrotate). The new fd is opened before the old one is closed; a path that
        cannot be opened keeps its old fd, so lines still land somewhere.
        """
        for path, old in self._fds.items():
            new = self._open(path)
            if new is None:
                continue
            self._fds[path] = new
            if old is not None:
                with contextlib.suppress(OSError):
                    os.close(old)

    def close(self) -> None:
        """Close every fd (idempotent)."""
        for path, fd in self._fds.items():
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds[path] = None


# -- rotation (master only) -----------------------------------------------------------------


def backup_path(path: str, number: int, compressed: bool = False) -> str:
    """``path.N`` or ``path.N.gz``."""
    return f"{path}.{number}.gz" if compressed else f"{path}.{number}"


def backups(path: str) -> dict[int, list[str]]:
    """Existing backups of ``path`` by number (``.N`` and/or ``.N.gz``)."""
    directory, name = os.path.split(os.path.abspath(path))
    found: dict[int, list[str]] = {}
    pattern = re.compile(re.escape(name) + r"\.([1-9][0-9]{0,5})(\.gz)?")
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return found
    for entry in entries:
        match = pattern.fullmatch(entry)
        if match is not None:
            found.setdefault(int(match.group(1)), []).append(os.path.join(directory, entry))
    return found


def _sidecar(path: str) -> str:
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.born")


def _read_born(path: str, inode: int) -> float | None:
    try:
        with open(_sidecar(path), encoding="ascii") as file:
            saved_inode, born = file.read().split()
        return float(born) if int(saved_inode) == inode else None
    except (OSError, ValueError):
        return None


def _write_born(path: str, inode: int, born: float) -> None:
    """Atomically record when the file with ``inode`` started (temp file + rename)."""
    sidecar = _sidecar(path)
    temporary = f"{sidecar}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        write_all(fd, f"{inode} {born:.3f}\n".encode("ascii"))
    finally:
        os.close(fd)
    os.replace(temporary, sidecar)


def born(path: str, now: float) -> float | None:
    """When the current ``path`` started (for max_age), recording ``now`` on first sight.

    None if the file does not exist.
    """
    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        return None
    started = _read_born(path, inode)
    if started is None:
        _write_born(path, inode, now)
        return now
    return started


def rotate(path: str, max_backups: int, now: float) -> str:
    """Rotate ``path`` unconditionally (steps 1-2 of the module docstring); returns
    ``path.1``. With ``max_backups == 0`` the backup still exists until :func:`prune`
    deletes it after the reopen grace. Raises OSError.
    """
    existing = backups(path)
    for number in sorted(existing, reverse=True):
        for old in existing[number]:
            if number >= max(max_backups, 1):
                os.unlink(old)
            else:
                compressed = old.endswith(".gz")
                os.replace(old, backup_path(path, number + 1, compressed))
    first = backup_path(path, 1)
    os.replace(path, first)
    fd = open_append(path)
    try:
        inode = os.fstat(fd).st_ino
    finally:
        os.close(fd)
    _write_born(path, inode, now)
    return first


def rotate_if_needed(path: str, rotation: Rotation, now: float) -> str | None:
    """Rotate ``path`` when it is larger than ``max_size`` or older than ``max_age``.

    ``now`` is wall-clock seconds (``time.time()``), injected so tests drive the age.
    Returns the backup just made (``path.1``), or None when nothing was due (or the
    file does not exist). The caller must then have every process reopen (SIGUSR1) and
    may compress the backup only after :data:`REOPEN_GRACE` (:class:`Rotator` does
    both). Raises OSError.
    """
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    started = born(path, now)
    if started is None:
        return None
    too_big = stat.st_size > rotation.max_size
    too_old = (now - started) * 1000 >= rotation.max_age
    if not (too_big or too_old):
        return None
    if stat.st_size == 0:
        _write_born(path, stat.st_ino, now)
        return None
    return rotate(path, rotation.max_backups, now)


def prune(path: str, max_backups: int) -> list[str]:
    """Delete backups numbered above ``max_backups`` (plain and .gz); returns them."""
    removed: list[str] = []
    for number, files in backups(path).items():
        if number > max_backups:
            for old in files:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(old)
                    removed.append(old)
    return removed


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def compress(path: str) -> str:
    """gzip ``path`` into ``path.gz`` atomically and delete ``path``; returns ``path.gz``.

    Writes ``path.gz.tmp``, fsyncs it, renames it over ``path.gz``, fsyncs the
    directory, and only then unlinks ``path``: a crash at any point leaves either the
    plain backup or the complete .gz, never a truncated .gz under the final name. The
    .gz keeps the original's mtime. Blocking and CPU-bound (zlib releases the GIL):
    the master runs it in a background thread. Raises OSError.
    """
    target = f"{path}.gz"
    temporary = f"{target}.tmp"
    stat = os.stat(path)
    try:
        with open(path, "rb") as source:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                         FILE_MODE)
            os.fchmod(fd, FILE_MODE)
            with open(fd, "wb") as raw:
                with gzip.GzipFile(filename=os.path.basename(path), mode="wb", fileobj=raw,
                                   mtime=int(stat.st_mtime)) as packed:
                    shutil.copyfileobj(source, packed, _COPY_CHUNK)
                raw.flush()
                os.fsync(raw.fileno())
        os.utime(temporary, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(target)))
    os.unlink(path)
    return target


class Rotator:
    """The master's rotation driver: call :meth:`tick` about once a second.

    ``tick(now)`` rotates every due file and returns True when the master must tell
    the workers to reopen (send SIGUSR1, and reopen its own :class:`~.master.MasterLog`).
    :data:`REOPEN_GRACE` seconds later (measured with the same ``now``), it compresses
    the new backup (if ``rotation.compress``) and prunes old ones in a background
    thread, so the master's loop never waits for gzip. A file is not rotated again
    while its previous backup is still pending or being compressed (the shift would
    rename ``.1`` under the compressor). Errors never escape: they are handed to
    ``on_error(path, exc)`` from :meth:`tick`, in the master's thread.

    The compress thread touches only the files it was given (no stdio, no locks shared
    with the main thread), so the master may fork workers while it runs.
    """

    def __init__(self, paths: Iterable[str], rotation: Rotation, *,
                 grace: float = REOPEN_GRACE,
                 on_error: Callable[[str, BaseException], None] | None = None) -> None:
        self.paths = tuple(paths)
        self.rotation = rotation
        self.grace = grace
        self.on_error = on_error
        self._pending: dict[str, tuple[float, str]] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._errors: deque[tuple[str, BaseException]] = deque()

    def busy(self) -> bool:
        """True while a backup waits for its grace period or is being compressed."""
        return bool(self._pending) or any(t.is_alive() for t in self._threads.values())

    def _finish(self, path: str, backup: str) -> None:
        try:
            if (self.rotation.compress and self.rotation.max_backups > 0
                    and os.path.exists(backup)):
                compress(backup)
            prune(path, self.rotation.max_backups)
        except Exception as exc:  # reported from tick(), in the master's thread
            self._errors.append((path, exc))

    def _report(self, path: str, exc: BaseException) -> None:
        if self.on_error is not None:
            self.on_error(path, exc)

    def tick(self, now: float) -> bool:
        """Rotate what is due, start due compressions; True if files must be reopened."""
        for path, thread in list(self._threads.items()):
            if not thread.is_alive():
                thread.join()
                del self._threads[path]
        for path, (due, backup) in list(self._pending.items()):
            if now >= due:
                del self._pending[path]
                thread = threading.Thread(target=self._finish, args=(path, backup),
                                          name=f"li-log-compress {os.path.basename(path)}",
                                          daemon=True)
                self._threads[path] = thread
                thread.start()
        rotated = False
        for path in self.paths:
            if path in self._pending or path in self._threads:
                continue
            try:
                made = rotate_if_needed(path, self.rotation, now)
            except OSError as exc:
                self._report(path, exc)
                continue
            if made is not None:
                self._pending[path] = (now + self.grace, made)
                rotated = True
        while self._errors:
            self._report(*self._errors.popleft())
        return rotated

    def wait(self, timeout: float | None = None) -> None:
        """Wait for running compressions and report their errors. Backups still in
        their grace period are not started (at master exit their plain files stay and
        are valid logs; a later master compresses nothing retroactively)."""
        for thread in list(self._threads.values()):
            thread.join(timeout)
        while self._errors:
            self._report(*self._errors.popleft())
