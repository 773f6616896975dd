"""The master under awkward timing (found by review at 9447c3b): a new worker that dies
while its generation starts, log-reopen signals that reach a worker before it listens
for them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from .conftest import Gateway, MockUpstream, gateway_config

pytestmark = pytest.mark.integration


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(child) for child in text)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _status_when_answering(gateway: Gateway, timeout: float = 30.0) -> dict[str, object]:
    give_up = time.monotonic() + timeout
    while True:
        try:
            return gateway.status()
        except Exception:
            if time.monotonic() > give_up:
                raise
            time.sleep(0.1)


def test_a_new_worker_dying_during_a_reload_is_not_forgotten(mock: MockUpstream,
                                                             start_gateway) -> None:
    """One new worker stops before reporting ready, the other dies after it did. The
    master must notice the death (the reload fails, the old generation keeps serving),
    and a later SIGTERM must still end everything. At 9447c3b the dead worker's slot
    kept its pid forever: never respawned, and the stop waited for it without end."""
    gateway = start_gateway(gateway_config(mock.origin, workers=2))
    before = _children(gateway.pid)
    gateway.config_path.write_text(gateway.config_path.read_text().replace(
        "[routes]\n", '[routes]\n"GET /added" = "static:healthcheck"\n'))
    gateway.signal(signal.SIGHUP)
    give_up = time.monotonic() + 10
    new: list[int] = []
    while not new:  # stop the first new worker before it can report ready
        assert time.monotonic() < give_up, "the reload forked no workers"
        new = sorted(_children(gateway.pid) - before)
        time.sleep(0.001)
    stopped = new[0]
    os.kill(stopped, signal.SIGSTOP)
    while len(new) < 2:
        assert time.monotonic() < give_up, "the reload forked one worker"
        new = sorted(_children(gateway.pid) - before)
        time.sleep(0.001)
    dying = next(pid for pid in new if pid != stopped)
    time.sleep(1.5)  # the running one reports ready
    os.kill(dying, signal.SIGKILL)
    time.sleep(0.3)
    # The master may already have given the generation up and killed it.
    with contextlib.suppress(ProcessLookupError):
        os.kill(stopped, signal.SIGCONT)
    status = _status_when_answering(gateway)
    workers = status["workers"]
    assert isinstance(workers, list)
    for worker in workers:
        if worker["pid"]:
            assert _alive(worker["pid"]), worker
    with gateway.client() as client:
        assert client.get("/health").status_code == 200
    gateway.signal(signal.SIGTERM)
    assert gateway.wait(25) == 0


def test_log_reopen_right_after_a_respawn_does_not_kill_the_new_worker(
        mock: MockUpstream, start_gateway) -> None:
    gateway = start_gateway(gateway_config(mock.origin, workers=2))
    os.kill(gateway.workers()[0], signal.SIGKILL)
    give_up = time.monotonic() + 1.5
    while time.monotonic() < give_up:  # SIGUSR1 fans out to every worker, new ones too
        gateway.signal(signal.SIGUSR1)
        time.sleep(0.01)
    time.sleep(1.0)
    assert "killed by SIGUSR1" not in gateway.output.text()
    assert len(gateway.workers()) == 2


def test_a_failed_reload_leaves_the_masters_logs_where_they_were(
        mock: MockUpstream, start_gateway, tmp_path: Path) -> None:
    """The new config moves the logs and adds a listener whose port is taken: the
    reload fails, so the master keeps writing (and rotating) the old files."""
    gateway = start_gateway(gateway_config(mock.origin, workers=1))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    moved = tmp_path / "moved-logs"
    try:
        text = gateway.config_path.read_text()
        text = text.replace('listen = "127.0.0.1:0"',
                            f'listen = ["127.0.0.1:0", "127.0.0.1:{taken.getsockname()[1]}"]')
        text = text.replace(f'dir = "{gateway.log_dir}"', f'dir = "{moved}"')
        assert str(moved) in text
        gateway.config_path.write_text(text)
        reply = gateway.ctl("reload")
        assert reply.returncode == 1, reply.stdout + reply.stderr
        os.kill(gateway.workers()[0], signal.SIGKILL)
        time.sleep(1.0)
    finally:
        taken.close()
    assert "worker 0 exited" in (gateway.log_dir / "error.log").read_text()
    assert not (moved / "error.log").exists() or \
        "worker 0 exited" not in (moved / "error.log").read_text()


def test_a_reload_right_after_the_actor_died_does_not_wait_for_it(
        mock: MockUpstream, start_gateway) -> None:
    gateway = start_gateway(gateway_config(mock.origin, workers=1))
    workers = set(gateway.workers())
    actor = next(pid for pid in _children(gateway.pid) if pid not in workers)
    gateway.config_path.write_text(gateway.config_path.read_text().replace(
        "[routes]\n", '[routes]\n"GET /added" = "static:healthcheck"\n'))
    os.kill(actor, signal.SIGKILL)
    time.sleep(0.05)
    started = time.monotonic()
    reply = gateway.ctl("reload")
    assert reply.returncode == 0, reply.stdout + reply.stderr
    assert time.monotonic() - started < 10  # at 9447c3b: a 30 s timeout, then failure
    with gateway.client() as client:
        assert client.get("/added").status_code == 200
