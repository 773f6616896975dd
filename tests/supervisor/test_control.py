"""The control socket's server side, without a master: stale files, foreign files, slow
clients (found by review at 9447c3b: a regular file at the path was deleted, a client
trickling bytes held the master's loop, and a busy master lost its socket)."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from li_httpd.supervisor.control import ControlError, ControlServer, request


@pytest.fixture
def directory() -> Iterator[Path]:
    # Unix socket paths are short-limited: not under pytest's tmp_path.
    with tempfile.TemporaryDirectory(prefix="lictl-") as name:
        yield Path(name)


def _status(_command: str) -> dict[str, Any]:
    return {"ok": True, "state": "serving"}


def _serve_in_background(server: ControlServer, stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.is_set():
            server.serve_one(_status)
            time.sleep(0.01)
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_a_regular_file_at_the_path_is_never_replaced(directory: Path) -> None:
    important = directory / "control.sock"
    important.write_text("not a socket")
    with pytest.raises(ControlError, match="not a socket"):
        ControlServer(str(important))
    assert important.read_text() == "not a socket"


def test_a_stale_socket_file_is_replaced(directory: Path) -> None:
    path = str(directory / "control.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens: a master that died
    server = ControlServer(path)
    stop = threading.Event()
    thread = _serve_in_background(server, stop)
    try:
        assert request(path, "status", timeout=5)["state"] == "serving"
    finally:
        stop.set()
        thread.join()
        server.close()


def test_a_busy_master_keeps_its_socket(directory: Path) -> None:
    """A master that is not answering right now (a reload in progress) is still there:
    a second master must refuse to start rather than take its socket over."""
    path = str(directory / "control.sock")
    busy = ControlServer(path)  # listening, never serving
    try:
        with pytest.raises(ControlError, match="another li-httpd master") as refused:
            ControlServer(path)
        # ... and says how to run a second gateway beside it.
        assert "[server] control_socket" in str(refused.value)
    finally:
        busy.close()


def test_a_deferred_request_is_answered_later(directory: Path) -> None:
    """ctl reload: the master keeps the connection and answers when the reload ends,
    without blocking its loop meanwhile."""
    path = str(directory / "control.sock")
    server = ControlServer(path)
    replies: list[dict[str, object]] = []
    client = threading.Thread(target=lambda: replies.append(request(path, "reload", 5)))
    client.start()
    try:
        pending = None
        for _ in range(200):
            pending = server.serve_one(lambda command: None)
            if pending is not None:
                break
            time.sleep(0.01)
        assert pending is not None
        assert not replies
        pending.answer({"ok": True, "result": "unchanged"})
        client.join(5)
        assert replies == [{"ok": True, "result": "unchanged"}]
    finally:
        server.close()


def test_a_trickling_client_is_cut_off_after_the_request_deadline(directory: Path) -> None:
    path = str(directory / "control.sock")
    server = ControlServer(path)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    done = threading.Event()

    def trickle() -> None:
        for byte in b'{"command"':
            if done.is_set():
                return
            try:
                client.send(bytes([byte]))
            except OSError:
                return
            time.sleep(0.5)

    writer = threading.Thread(target=trickle, daemon=True)
    writer.start()
    started = time.monotonic()
    try:
        server.serve_one(_status)  # must return on its own, within the deadline
        elapsed = time.monotonic() - started
    finally:
        done.set()
        writer.join()
        client.close()
        server.close()
    assert elapsed < 3.0
