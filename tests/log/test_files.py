"""Log files: modes, multi-process appends, reopen, rotation by size and age, gzip."""

from __future__ import annotations

import gzip
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from li_httpd.config.model import Rotation
from li_httpd.config.units import Millis, Size
from li_httpd.ops.log import files
from li_httpd.ops.log.files import LogFiles, Rotator, compress, rotate_if_needed

MINUTE_MS = 60_000


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def lines(path: Path | str) -> list[str]:
    with open(path, encoding="utf-8") as file:
        return file.read().splitlines()


def gz_lines(path: Path | str) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return file.read().splitlines()


# -- modes --------------------------------------------------------------------------------


@pytest.mark.usefixtures("umask_000")
def test_modes_under_a_permissive_umask(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "logs"
    files.ensure_dir(str(target))
    for directory in (tmp_path / "a", tmp_path / "a" / "b", target):
        assert mode(directory) == 0o750
    path = target / "access.log"
    fd = files.open_append(str(path))
    os.close(fd)
    assert mode(path) == 0o640
    files.prepare([str(tmp_path / "other" / "error.log")])
    assert mode(tmp_path / "other") == 0o750
    assert mode(tmp_path / "other" / "error.log") == 0o640


@pytest.mark.usefixtures("umask_000")
def test_existing_files_and_dirs_keep_their_mode(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    path = tmp_path / "access.log"
    path.write_text("old\n")
    os.chmod(path, 0o600)
    files.ensure_dir(str(tmp_path))
    os.close(files.open_append(str(path)))
    assert (mode(tmp_path), mode(path)) == (0o755, 0o600)


# -- appends and reopen ---------------------------------------------------------------------


def _writer_child(path: str, tag: str, count: int, batch: int) -> None:
    log = LogFiles([path])
    pending: list[bytes] = []
    for n in range(count):
        # varying lengths so line boundaries fall everywhere in the page cache
        pending.append(f"{tag} {n:05d} {'x' * (n % 97)} end\n".encode())
        if len(pending) == batch:
            assert log.write(path, b"".join(pending))
            pending.clear()
    if pending:
        assert log.write(path, b"".join(pending))
    log.close()


def test_two_processes_append_without_interleaving(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.log")
    count = 10_000
    pids = []
    for tag in ("A", "B"):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            status = 1
            try:
                _writer_child(path, tag, count, batch=37)
                status = 0
            finally:
                os._exit(status)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    seen: dict[str, list[int]] = {"A": [], "B": []}
    got = lines(path)
    assert len(got) == 2 * count
    for line in got:
        tag, number, padding, end = line.split(" ")
        assert end == "end" and padding == "x" * (int(number) % 97)
        seen[tag].append(int(number))
    assert seen["A"] == list(range(count))
    assert seen["B"] == list(range(count))


def test_reopen_after_rename_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "access.log")
    log = LogFiles([path])
    for n in range(100):
        log.write(path, f"{n}\n".encode())
    os.rename(path, path + ".1")
    for n in range(100, 150):  # still the old inode until reopen
        log.write(path, f"{n}\n".encode())
    log.reopen()
    for n in range(150, 200):
        log.write(path, f"{n}\n".encode())
    log.close()
    old, new = lines(path + ".1"), lines(path)
    assert old == [str(n) for n in range(150)]
    assert new == [str(n) for n in range(150, 200)]
    assert mode(path) == 0o640  # the reopened (new) file is created 0640 too


def test_write_failures_are_counted_and_recovered(tmp_path: Path) -> None:
    directory = tmp_path / "gone"
    path = str(directory / "error.log")
    (tmp_path / "gone").write_text("a file where the directory should be")
    log = LogFiles([path])
    assert log.errors[path] == 1
    assert not log.write(path, b"lost\n")
    assert log.errors[path] == 2
    os.unlink(directory)
    assert log.write(path, b"back\n")  # the directory and file are created again
    assert lines(path) == ["back"]
    assert not log.write(str(tmp_path / "unknown.log"), b"x\n")
    log.close()


# -- rotation -------------------------------------------------------------------------------


def rotation(max_size: int = 10 * 1024 * 1024, max_age_ms: int = 7 * 24 * 3_600_000,
             backups: int = 3, gzip_backups: bool = True) -> Rotation:
    return Rotation(max_size=Size(max_size), max_age=Millis(max_age_ms),
                    max_backups=backups, compress=gzip_backups)


def test_rotation_by_size_keeps_max_backups_and_gzips(tmp_path: Path) -> None:
    path = str(tmp_path / "access.log")
    policy = rotation(max_size=900, backups=3)
    log = LogFiles([path])
    errors: list[tuple[str, BaseException]] = []
    rotator = Rotator([path], policy, grace=1.0,
                      on_error=lambda p, e: errors.append((p, e)))
    now = 1_000_000.0
    written: list[str] = []
    reopen_count = 0
    for round_number in range(8):
        chunk = [f"r{round_number} line {n:03d} {'y' * 20}" for n in range(30)]
        written.extend(chunk)
        log.write(path, "".join(f"{line}\n" for line in chunk).encode())  # 990 bytes
        if rotator.tick(now):
            reopen_count += 1
            log.write(path, b"")  # nothing pending: reopen comes next
            log.reopen()  # what SIGUSR1 does in every process
        now += 2.0  # past the grace: the next tick compresses the backup
        rotator.tick(now)
        rotator.wait(5)
    assert errors == []
    assert reopen_count == 8
    names = sorted(os.listdir(tmp_path))
    assert names == [".access.log.born", "access.log", "access.log.1.gz",
                     "access.log.2.gz", "access.log.3.gz"]
    for name in names[2:]:
        assert mode(tmp_path / name) == 0o640
    kept = (gz_lines(path + ".3.gz") + gz_lines(path + ".2.gz") + gz_lines(path + ".1.gz")
            + lines(path))
    assert kept == written[-90:]  # rounds 5, 6, 7 in the three backups; current is empty
    assert lines(path) == []
    log.close()


def test_lines_written_after_rename_reach_the_backup_before_compression(
        tmp_path: Path) -> None:
    """A worker that has not reopened yet still appends to .1; the grace covers it."""
    path = str(tmp_path / "audit.jsonl")
    worker = LogFiles([path])
    worker.write(path, b"a\n" * 2000)
    rotator = Rotator([path], rotation(max_size=1000), grace=1.0)
    assert rotator.tick(100.0)
    worker.write(path, b"late\n")  # the worker has not handled SIGUSR1 yet
    assert not rotator.tick(100.5)  # within the grace: nothing compressed
    assert os.path.exists(path + ".1") and rotator.busy()
    worker.reopen()
    worker.write(path, b"new\n")
    rotator.tick(101.5)
    rotator.wait(5)
    assert gz_lines(path + ".1.gz") == ["a"] * 2000 + ["late"]
    assert lines(path) == ["new"]
    assert not os.path.exists(path + ".1")
    rotator.tick(102.0)
    assert not rotator.busy()
    worker.close()


def test_max_backups_counts_existing_compressed_backups(tmp_path: Path) -> None:
    path = tmp_path / "error.log"
    for number in (1, 2):
        with gzip.open(f"{path}.{number}.gz", "wt") as file:
            file.write(f"backup {number}\n")
    path.write_text("current\n" * 200)
    made = rotate_if_needed(str(path), rotation(max_size=1000, backups=2), 50.0)
    assert made == f"{path}.1"
    assert gz_lines(f"{path}.2.gz") == ["backup 1"]
    assert not os.path.exists(f"{path}.3.gz")
    assert path.read_text() == ""
    assert files.prune(str(path), 1) == [f"{path}.2.gz"]


def test_zero_backups_deletes_after_the_grace(tmp_path: Path) -> None:
    path = str(tmp_path / "access.log")
    Path(path).write_text("x" * 2000)
    rotator = Rotator([path], rotation(max_size=1000, backups=0), grace=1.0)
    assert rotator.tick(10.0)
    assert os.path.exists(path + ".1")
    rotator.tick(11.0)
    rotator.wait(5)
    assert sorted(os.listdir(tmp_path)) == [".access.log.born", "access.log"]


def test_rotation_by_age_with_an_injected_clock(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("first\n")
    policy = rotation(max_age_ms=MINUTE_MS)
    t0 = 1_700_000_000.0
    assert rotate_if_needed(str(path), policy, t0) is None  # first sight starts the age
    assert rotate_if_needed(str(path), policy, t0 + 59.9) is None
    assert rotate_if_needed(str(path), policy, t0 + 60.0) == f"{path}.1"
    assert lines(f"{path}.1") == ["first"]
    # the new (empty) file's age starts at the rotation; empty files are not rotated
    assert rotate_if_needed(str(path), policy, t0 + 130.0) is None
    path.write_text("second\n")
    assert rotate_if_needed(str(path), policy, t0 + 189.0) is None
    assert rotate_if_needed(str(path), policy, t0 + 190.0) == f"{path}.1"
    assert lines(f"{path}.2") == ["first"] and lines(f"{path}.1") == ["second"]


def test_age_restarts_for_a_file_replaced_outside(tmp_path: Path) -> None:
    """logrotate-style `mv` + new file: a new inode starts a new age."""
    path = tmp_path / "access.log"
    path.write_text("a\n")
    policy = rotation(max_age_ms=MINUTE_MS)
    assert rotate_if_needed(str(path), policy, 1000.0) is None
    os.rename(path, tmp_path / "elsewhere.log")
    path.write_text("b\n")
    assert rotate_if_needed(str(path), policy, 1070.0) is None  # age starts at 1070
    assert rotate_if_needed(str(path), policy, 1130.0) == f"{path}.1"
    assert rotate_if_needed(str(tmp_path / "missing.log"), policy, 1130.0) is None


def test_compress_is_atomic_and_keeps_content_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "access.log.1"
    content = "".join(f"line {n}\n" for n in range(5000))
    path.write_text(content)
    os.utime(path, (1_600_000_000, 1_600_000_000))
    target = compress(str(path))
    assert target == f"{path}.gz"
    assert not path.exists() and not Path(f"{target}.tmp").exists()
    assert gzip.decompress(Path(target).read_bytes()).decode() == content
    assert int(os.stat(target).st_mtime) == 1_600_000_000
    assert mode(target) == 0o640
    with pytest.raises(FileNotFoundError):
        compress(str(path))
    assert sorted(os.listdir(tmp_path)) == ["access.log.1.gz"]


def test_rotator_reports_errors_instead_of_raising(tmp_path: Path) -> None:
    path = tmp_path / "ro" / "access.log"
    path.parent.mkdir()
    path.write_text("x" * 2000)
    errors: list[str] = []
    rotator = Rotator([str(path)], rotation(max_size=1000), grace=0.0,
                      on_error=lambda p, e: errors.append(type(e).__name__))
    Path(f"{path}.3").mkdir()  # the oldest "backup" is a directory: unlink fails
    assert not rotator.tick(1.0)
    assert errors == ["IsADirectoryError"]
    assert Path(path).stat().st_size == 2000  # nothing renamed; retried next tick
