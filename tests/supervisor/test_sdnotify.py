"""sd_notify against real AF_UNIX datagram sockets (a path in tmp_path and an abstract
name), standing in for systemd's notification socket."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from li_httpd.supervisor import sdnotify


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5.0)
    return sock


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = str(tmp_path / "notify.sock")
    with _receiver(path) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        yield sock


def _nothing_queued(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    return False


def test_ready(listener: socket.socket) -> None:
    assert sdnotify.ready() is True
    assert listener.recv(4096) == b"READY=1"


def test_ready_with_status(listener: socket.socket) -> None:
    assert sdnotify.ready("serving 4 workers") is True
    assert listener.recv(4096) == b"READY=1\nSTATUS=serving 4 workers"


def test_each_call_is_one_datagram(listener: socket.socket) -> None:
    assert sdnotify.stopping() is True
    assert sdnotify.status("draining 3 connections") is True
    assert sdnotify.notify("READY=1", "STATUS=ok") is True
    assert listener.recv(4096) == b"STOPPING=1"
    assert listener.recv(4096) == b"STATUS=draining 3 connections"
    assert listener.recv(4096) == b"READY=1\nSTATUS=ok"
    assert _nothing_queued(listener)


def test_status_newlines_cannot_inject_fields(listener: socket.socket) -> None:
    assert sdnotify.status("line one\nREADY=1\r\nthree") is True
    assert listener.recv(4096) == b"STATUS=line one READY=1 three"


def test_reloading_carries_monotonic_usec(listener: socket.socket) -> None:
    before = time.monotonic_ns() // 1000
    assert sdnotify.reloading() is True
    after = time.monotonic_ns() // 1000
    lines = listener.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    assert len(lines) == 2
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert value.isdigit()
    assert before <= int(value) <= after
    assert after - before < 5_000_000


def test_reloading_with_status(listener: socket.socket) -> None:
    assert sdnotify.reloading("generation 2") is True
    lines = listener.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=")
    assert lines[2:] == ["STATUS=generation 2"]


def test_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"li-httpd-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    with _receiver("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready() is True
        assert sdnotify.reloading() is True
        assert sock.recv(4096) == b"READY=1"
        assert sock.recv(4096).startswith(b"RELOADING=1\nMONOTONIC_USEC=")


@pytest.mark.parametrize("value", [None, "", "@", "relative/notify.sock", "vsock:2:1234"])
def test_unset_or_unsupported_does_nothing(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready("x") is False
    assert sdnotify.reloading() is False
    assert sdnotify.stopping() is False
    assert sdnotify.status("x") is False


def test_no_fields_sends_nothing(listener: socket.socket) -> None:
    assert sdnotify.notify() is False
    assert _nothing_queued(listener)


def test_missing_path_returns_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent.sock"))
    assert sdnotify.ready() is False
    assert sdnotify.stopping() is False


def test_closed_receiver_returns_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gone.sock"
    _receiver(str(path)).close()  # the file stays, nobody listens: ECONNREFUSED
    assert path.exists()
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert sdnotify.ready() is False


def test_not_a_socket_returns_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "plain-file"
    path.write_text("")
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert sdnotify.ready() is False


def test_unreachable_abstract_name_returns_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", f"@li-httpd-nobody-{os.getpid()}-{time.monotonic_ns()}")
    assert sdnotify.ready() is False


def test_embedded_nul_returns_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # os.environ refuses NUL bytes, so patch the module's view of the address instead.
    monkeypatch.setattr(sdnotify, "_address", lambda: str(tmp_path) + "/a\0b")
    assert sdnotify.ready() is False


def test_oversized_datagram_returns_false(listener: socket.socket) -> None:
    # Larger than any unix datagram the kernel accepts (EMSGSIZE): reported, not raised.
    assert sdnotify.status("x" * (4 * 1024 * 1024)) is False
    assert _nothing_queued(listener)


def test_full_queue_times_out_returns_false(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nobody drains the receiver: fill its queue, then a send must give up, not hang.
    address = os.environ["NOTIFY_SOCKET"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler:
        filler.setblocking(False)
        with pytest.raises(BlockingIOError):
            for _ in range(100_000):
                filler.sendto(b"STATUS=filler", address)
    monkeypatch.setattr(sdnotify, "SEND_TIMEOUT", 0.05)
    started = time.monotonic()
    assert sdnotify.ready() is False
    assert time.monotonic() - started < 2.0
