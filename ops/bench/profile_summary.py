"""Sum py-spy raw samples (``-f raw``) by function and by cost category.

A sample's category is decided by its innermost frame: a kernel call made from Python
(socket send/recv, epoll, fcntl), HTTP head and body framing (workers/http1.py and the
llhttp calls in it), trio's scheduler and I/O manager, or the rest of li-httpd's own code
(routing, policy, proxy logic, logging). Used by ``bash ops/bench/profile``.
"""

from __future__ import annotations

import sys
from collections import Counter

CATEGORIES = (
    ("syscalls", ("SocketIO.send_all", "SocketIO.recv", "SocketIO.readable_now",
                  "socket.accept", "_real_close", "SharedState._lock", "SharedState._unlock",
                  "EpollIOManager._update_registrations", "EpollIOManager.get_events")),
    ("http framing", ("http1.py",)),
    ("trio scheduling", ("trio/", "outcome/")),
)
OWN_CODE = ("workers/", "config/", "shm/", "supervisor/", "actors/", "li_httpd")


def category(frame: str) -> str:
    for name, markers in CATEGORIES:
        if any(marker in frame for marker in markers):
            return name
    return "li-httpd logic" if any(marker in frame for marker in OWN_CODE) else "other"


def main(path: str) -> None:
    own: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    total = 0
    with open(path) as handle:
        for line in handle:
            stack, _, count_text = line.rstrip().rpartition(" ")
            count = int(count_text)
            innermost = stack.split(";")[-1]
            total += count
            own[innermost.split(" (")[0]] += count
            kinds[category(innermost)] += count
    print(f"samples: {total}")
    print("by category (innermost frame):")
    for name, count in kinds.most_common():
        print(f"  {count / total * 100:5.1f}%  {name}")
    print("top functions (own time):")
    for name, count in own.most_common(15):
        print(f"  {count / total * 100:5.1f}%  {name}")


if __name__ == "__main__":
    main(sys.argv[1])
