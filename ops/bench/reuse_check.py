"""Cost of the reuse check of an idle pooled connection, two ways, on a socketpair.

``python -m li_httpd.ops.bench.reuse_check`` prints nanoseconds per check of a healthy
idle socket (nothing pending: the common case) for ``recv(1, MSG_PEEK | MSG_DONTWAIT)``,
which fails with EAGAIN and so allocates a bytes object and raises
``BlockingIOError`` each time, and for ``poll(0)`` on a poll object registered once
(what :meth:`li_httpd.workers.sockio.SocketIO.readable_now` does). Both are one syscall.

Only the standard library:

May import: nothing else.
"""

from __future__ import annotations

import select
import socket
import timeit

_PEEK = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)
CHECKS = 200_000


def main() -> int:
    idle, peer = socket.socketpair()
    idle.setblocking(False)
    poller = select.poll()
    poller.register(idle.fileno(), select.POLLIN)

    def peek() -> bool:
        try:
            idle.recv(1, _PEEK)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return True

    def poll() -> bool:
        return bool(poller.poll(0))

    for name, check in (("recv(MSG_PEEK)", peek), ("poll(0)", poll)):
        assert check() is False
        best = min(timeit.repeat(check, number=CHECKS, repeat=5)) / CHECKS
        print(f"{name:<16} {best * 1e9:7.0f} ns per check")
    peer.close()
    assert peek() and poll()  # both see the close
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
