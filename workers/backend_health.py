"""Is the shared-state backend (Redis) usable, and what to do when it is not. Pure.

One :class:`BackendHealth` per worker. The backend is *up* until a call fails (error,
timeout, refused connection); it is then *down* for ``retry_after_ns``, during which
no call is made at all (a request does not pay the timeout again); the first call after
that is the one probe (concurrent requests keep following the policy): success marks it
up, failure starts another down period. Each change
between up and down is reported once (the caller logs it and counts it), never per
request.

While down (or when a call fails), a decision of kind ``limits``, ``budgets`` or
``circuits`` follows its configured :data:`OnError` policy: ``local`` (use this host's
shared memory, as the local backend does: limits become per host), ``allow`` (admit) or
``deny`` (refuse with 503).
"""

from __future__ import annotations

from typing import Literal

OnError = Literal["local", "allow", "deny"]
Transition = Literal["", "down", "up"]
"""What a call's result changed ("" = nothing)."""


class BackendHealth:
    """Up/down state with a retry backoff (see the module docstring); ``now`` in ns."""

    __slots__ = ("down_until", "is_down", "retry_after_ns")

    def __init__(self, retry_after_ns: int) -> None:
        self.retry_after_ns = retry_after_ns
        self.is_down = False
        self.down_until = 0

    def usable(self, now: int) -> bool:
        """May a call be made now? Up: yes. Down: only once ``retry_after`` has passed,
        and then for one caller, the probe (the next may try ``retry_after`` later, if
        the probe has not brought the backend up by then)."""
        if not self.is_down:
            return True
        if now < self.down_until:
            return False
        self.down_until = now + self.retry_after_ns
        return True

    def failed(self, now: int) -> Transition:
        """A call failed at ``now``: down until ``now + retry_after``."""
        self.down_until = now + self.retry_after_ns
        if self.is_down:
            return ""
        self.is_down = True
        return "down"

    def succeeded(self) -> Transition:
        if not self.is_down:
            return ""
        self.is_down = False
        return "up"


__all__ = ["BackendHealth", "OnError", "Transition"]
