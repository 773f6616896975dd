"""WorkerLog end to end under trio (virtual clock), and MasterLog."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from li_httpd.config.model import Log, LogSink, Redact, StderrSink
from li_httpd.ops.log import MasterLog, WorkerLog
from li_httpd.ops.log.sinks import StderrWriter, file_paths, plan


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def devnull() -> Iterator[int]:
    fd = os.open(os.devnull, os.O_WRONLY)
    yield fd
    os.close(fd)


def config(tmp_path: Path, **overrides: object) -> Log:
    return Log(dir=str(tmp_path), **overrides)  # type: ignore[arg-type]


def hit(log: WorkerLog, n: int, status: int = 200) -> None:
    log.access(f"req-{n}", "chat", "127.0.0.1:1", status, "completed", 1.0, 1, 2)


async def test_lines_reach_disk_within_the_flush_interval(
        tmp_path: Path, devnull: int, autojump_clock: trio.testing.MockClock) -> None:
    log = WorkerLog(config(tmp_path), stderr_fd=devnull, color=False)
    access = tmp_path / "access.log"
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        start = trio.current_time()
        hit(log, 1)
        await trio.sleep(0.05)
        assert read_lines(access) == []  # queued, not yet written
        await trio.sleep(0.06)
        assert [line.split()[2] for line in read_lines(access)] == ["req-1"]
        hit(log, 2)
        log.diagnostic("warn", "slow upstream", request_id="req-2", peer="10.0.0.1:80")
        log.diagnostic("info", "below the error sink's level")
        await trio.sleep(0.1)
        assert len(read_lines(access)) == 2
        assert trio.current_time() - start == pytest.approx(0.21)
        nursery.cancel_scope.cancel()
    errors = read_lines(tmp_path / "error.log")
    assert len(errors) == 1 and errors[0].split()[1:4] == ["warn", "req-2", "slow"]
    log.close()


async def test_half_full_queue_wakes_the_writer_early(
        tmp_path: Path, devnull: int, autojump_clock: trio.testing.MockClock) -> None:
    log = WorkerLog(config(tmp_path, queue_size=64), stderr_fd=devnull, color=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        before = trio.current_time()
        for n in range(40):
            hit(log, n)
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == before  # no timer fired: the high-water mark did
        assert len(read_lines(tmp_path / "access.log")) == 40
        nursery.cancel_scope.cancel()
    assert log.dropped == {"access": 0, "audit": 0, "diagnostic": 0}
    log.close()


async def test_overload_drops_are_counted_not_blocking(
        tmp_path: Path, devnull: int, autojump_clock: trio.testing.MockClock) -> None:
    log = WorkerLog(config(tmp_path, queue_size=64), stderr_fd=devnull, color=False)
    for n in range(10):
        log.diagnostic("error", f"diag {n}")
    for n in range(100):  # the writer is not running: the queue overflows
        hit(log, n)
    # 64 slots: 10 diagnostics + 54 access; then the 10 diagnostics go, then 36 access
    assert log.dropped == {"access": 36, "audit": 0, "diagnostic": 10}
    log.close()
    got = read_lines(tmp_path / "access.log")
    assert [line.split()[2] for line in got] == [f"req-{n}" for n in range(36, 100)]
    assert read_lines(tmp_path / "error.log") == []


async def test_reopen_after_rename(tmp_path: Path, devnull: int,
                                   autojump_clock: trio.testing.MockClock) -> None:
    log = WorkerLog(config(tmp_path), stderr_fd=devnull, color=False)
    access = tmp_path / "access.log"
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        for n in range(50):
            hit(log, n)
        await trio.sleep(0.15)
        os.rename(access, tmp_path / "access.log.1")  # logrotate's mv
        for n in range(50, 80):
            hit(log, n)  # queued before the signal: may land in either file
        log.request_reopen()  # SIGUSR1
        for n in range(80, 100):
            hit(log, n)
        await trio.sleep(0.15)
        for n in range(100, 120):
            hit(log, n)
        await trio.sleep(0.15)
        nursery.cancel_scope.cancel()
    log.close()
    old = [line.split()[2] for line in read_lines(tmp_path / "access.log.1")]
    new = [line.split()[2] for line in read_lines(access)]
    assert old + new == [f"req-{n}" for n in range(120)]  # none lost, none duplicated
    assert old == [f"req-{n}" for n in range(50)]
    assert os.stat(access).st_mode & 0o777 == 0o640


async def test_cancellation_and_close_flush_everything(
        tmp_path: Path, devnull: int, autojump_clock: trio.testing.MockClock) -> None:
    log = WorkerLog(config(tmp_path), stderr_fd=devnull, color=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        for n in range(3000):  # several batches
            hit(log, n)
        nursery.cancel_scope.cancel()
    assert len(read_lines(tmp_path / "access.log")) == 3000
    hit(log, 3000)
    log.audit("r", "k", "chat", "m", "POST", "/", 200, "completed", "allow", "p", 1.0, None,
              0, 0)
    log.close()  # graceful stop: nothing left behind
    assert len(read_lines(tmp_path / "access.log")) == 3001
    assert len(read_lines(tmp_path / "audit.jsonl")) == 1
    log.close()
    hit(log, 3002)
    log.flush()  # after close: a no-op, never reopens files
    assert len(read_lines(tmp_path / "access.log")) == 3001


async def test_disabled_and_absolute_sinks(tmp_path: Path, devnull: int,
                                           autojump_clock: trio.testing.MockClock) -> None:
    elsewhere = tmp_path / "audit" / "trail.jsonl"
    cfg = config(tmp_path / "logs", access=LogSink(path="access.log", enabled=False),
                 audit=LogSink(path=str(elsewhere), format="json"),
                 stderr=StderrSink(enabled=False))
    assert file_paths(cfg) == (str(tmp_path / "logs" / "error.log"), str(elsewhere))
    log = WorkerLog(cfg, stderr_fd=devnull, color=False)
    hit(log, 1)
    log.audit("r", "k", "chat", "m", "POST", "/", 200, "completed", "allow", "p", 1.0, 2.0,
              0, 0)
    log.close()
    assert not (tmp_path / "logs" / "access.log").exists()
    assert len(read_lines(elsewhere)) == 1
    assert os.stat(elsewhere.parent).st_mode & 0o777 == 0o750


async def test_access_level_filters_by_status(tmp_path: Path, devnull: int,
                                              autojump_clock: trio.testing.MockClock) -> None:
    cfg = config(tmp_path, access=LogSink(path="access.log", level="warn"))
    assert plan(cfg).access_min_status == 400
    log = WorkerLog(cfg, stderr_fd=devnull, color=False)
    for n, status in enumerate((200, 301, 404, 429, 502)):
        hit(log, n, status)
    log.close()
    assert [line.split()[1] for line in read_lines(tmp_path / "access.log")] == \
        ["warn", "warn", "error"]


async def test_write_errors_never_kill_the_worker(
        tmp_path: Path, devnull: int, autojump_clock: trio.testing.MockClock) -> None:
    (tmp_path / "access.log").mkdir()  # the access file cannot be opened
    log = WorkerLog(config(tmp_path), stderr_fd=devnull, color=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        hit(log, 1)
        log.diagnostic("error", "still logging")
        await trio.sleep(0.3)
        assert log.write_errors >= 2
        nursery.cancel_scope.cancel()
    log.close()
    assert len(read_lines(tmp_path / "error.log")) == 1


async def test_stderr_levels_and_color(tmp_path: Path,
                                       autojump_clock: trio.testing.MockClock) -> None:
    read_end, write_end = os.pipe()
    cfg = config(tmp_path, level="debug", stderr=StderrSink(level="debug", color="always"),
                 redact=Redact(patterns=()))
    log = WorkerLog(cfg, stderr_fd=write_end)
    assert log.enabled("debug") and not log.enabled("trace")
    log.diagnostic("trace", "hidden")
    log.diagnostic("debug", "shown", n=1)
    hit(log, 1)  # access lines never go to stderr
    log.close()
    os.close(write_end)
    data = os.read(read_end, 65536)
    os.close(read_end)
    assert data.count(b"\n") == 1
    assert b" \x1b[36mdebug\x1b[0m - shown n=1\n" in data
    assert read_lines(tmp_path / "error.log") == []  # below the error sink's level


def test_stderr_never_blocks_on_a_full_pipe() -> None:
    read_end, write_end = os.pipe()
    try:
        writer = StderrWriter(write_end)
        line = b"y" * 99 + b"\n"
        for _ in range(20_000):  # 2 MB into a 64 KiB pipe nobody reads
            writer.write(line)
        assert writer.pending <= StderrWriter.MAX_PENDING
        assert writer.dropped > 0 and writer.errors == 0
        os.set_blocking(read_end, False)
        drained = b""
        while True:
            try:
                chunk = os.read(read_end, 1 << 16)
            except BlockingIOError:
                chunk = b""
            drained += chunk
            if not chunk and not writer.pending:
                break
            writer.flush()
        assert set(drained.split(b"\n")[:-1]) == {b"y" * 99}  # whole lines only
        assert drained.count(b"\n") + writer.dropped == 20_000
    finally:
        os.close(read_end)
        os.close(write_end)


def test_master_log_writes_at_once(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    cfg = config(tmp_path / "logs", error=LogSink(path="error.log", level="info"))
    clock = iter([1.5, 2.5])
    master = MasterLog(cfg, stderr_fd=write_end, color=False, clock=lambda: next(clock))
    for name in ("access.log", "error.log", "audit.jsonl"):  # prepared before fork
        assert os.stat(tmp_path / "logs" / name).st_mode & 0o777 == 0o640
    assert master.paths == file_paths(cfg)
    master.diagnostic("debug", "not shown")
    master.diagnostic("info", "li-httpd started", version="0.1.0",
                      authorization="Bearer secret-value")
    assert read_lines(tmp_path / "logs" / "error.log") == [
        "1970-01-01T00:00:01.500Z info - li-httpd started version=0.1.0 "
        "authorization=[REDACTED]"]
    os.rename(tmp_path / "logs" / "error.log", tmp_path / "logs" / "error.log.1")
    master.reopen()
    master.diagnostic("error", "after reopen")
    assert read_lines(tmp_path / "logs" / "error.log") == [
        "1970-01-01T00:00:02.500Z error - after reopen"]
    master.close()
    os.close(write_end)
    assert os.read(read_end, 65536).count(b"\n") == 2
    os.close(read_end)
    assert master.write_errors == 0


def test_master_log_refuses_an_unwritable_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        MasterLog(config(tmp_path / "file" / "logs"))


def test_stderr_line_longer_than_pipe_buf_is_delivered_whole() -> None:
    read_end, write_end = os.pipe()
    try:
        writer = StderrWriter(write_end)
        line = b"z" * 10_000 + b"\n"
        writer.write(b"short\n" + line)
        assert writer.pending == 0
        assert os.read(read_end, 1 << 16) == b"short\n" + line
    finally:
        os.close(read_end)
        os.close(write_end)
