"""Server-sent events as the gateway relays them: event boundaries and the one way an
SSE response fails (pure: no I/O, no trio).

:class:`SseScanner` follows the relayed body bytes of a ``text/event-stream`` response
and knows, after every piece, whether the stream stands at an event boundary and how
many events have ended so far. Lines end with ``\\r\\n``, ``\\r`` or ``\\n`` (the WHATWG
event-stream grammar); an event ends at a blank line that follows at least one non-blank
line (a field or a comment: a comment-only block counts as an event here). The start of
the stream is a boundary, and so is any run of blank lines after an event. Each piece
costs time in its own length only: the scanner keeps two bytes of context from the
stream's end, never the bytes before them.

:class:`SseRelay` is the SSE side of one relayed response. It forwards only complete
events: the bytes of an event that has begun but not ended are held until its blank
line arrives (an SSE parser dispatches nothing before that blank line, so holding them
delays no event). When the stream then fails, the half event is dropped, never sent, and
the client's parser reads exactly the events that arrived whole, then one terminal
``event: error`` (see :meth:`SseRelay.error_end`). An event longer than
:data:`HOLD_LIMIT` is forwarded as it arrives (the gateway's memory per stream stays
bounded, and a stream that is not really SSE is not held forever); if such a stream
fails mid-event, the half event is ended with a blank line before the error event, so
the error event still parses as an event of its own.
"""

from __future__ import annotations

import re

import orjson

from .responses import ERROR_TYPES

HOLD_LIMIT = 64 * 1024
"""The most bytes of one unfinished event the gateway holds back."""

EVENT_END = re.compile(rb"[^\r\n](?>\r\n|\r|\n)[\r\n]")
"""A non-blank line's last byte, its line end, and the first byte of a blank line's line
end (a blank line exists once its line end has begun; a ``\\n`` after that ``\\r`` only
completes it). Atomic: ``\\r\\n`` is one line end, never ``\\r`` then a blank line."""

_LINE_END = b"\r\n"
_START = b"\n\n"
"""The state at the start of a stream: as if after an event's blank line."""


class SseScanner:
    """Event boundaries of an event stream fed piece by piece; see the module docstring."""

    __slots__ = ("_tail", "events")

    def __init__(self) -> None:
        self._tail = _START
        self.events = 0
        """Events ended so far."""

    def feed(self, data: bytes) -> int:
        """Follow ``data``, the next bytes of the stream. Returns how many of its first
        bytes end at an event boundary: all of them when the stream stands at one after
        ``data``, else the end of the last event that ends in ``data``, else 0."""
        if not data:
            return 0
        tail = self._tail
        stream = tail + data
        if b"\r" not in stream and b"\n\n\n" not in stream:
            # Fast path, the common shape: every blank line is one "\n\n" after a
            # non-blank line, except the tail's own (a boundary already counted).
            ended = stream.count(b"\n\n") - stream.startswith(b"\n\n")
            self._tail = stream[-2:]
            if not ended:
                return len(data) if self.at_boundary else 0
            self.events += ended
            return len(data) if self.at_boundary else stream.rfind(b"\n\n") + 2 - len(tail)
        found = EVENT_END.findall(stream)  # the two-byte tail holds no whole match
        # The next piece needs two bytes of context; a final \r\n is one line end, the
        # same as \n from here on (and the \r before it no longer matters).
        self._tail = (stream[-3:-2] + b"\n") if stream.endswith(b"\r\n") else stream[-2:]
        if not found:
            return len(data) if self.at_boundary else 0
        self.events += len(found)
        if self.at_boundary:
            return len(data)
        end = 0
        for match in EVENT_END.finditer(stream):
            end = match.end()
        return end - len(tail)

    @property
    def context(self) -> bytes:
        """The stream's last bytes as the scanner keeps them: searching ``EVENT_END`` in
        ``context + data`` finds the events that end in the next piece ``data``."""
        return self._tail

    @property
    def at_boundary(self) -> bool:
        """True when the stream stands between events (no event has begun)."""
        # The last byte ends a line; the line was blank when a line end precedes it.
        tail = self._tail
        return tail[-1] in _LINE_END and tail[0] in _LINE_END


class SseRelay:
    """The SSE side of one relayed response: which bytes go to the client now, and how
    the stream ends when it fails. ``chunked``: the client's response is chunked (else
    the close ends it: an HTTP/1.0 client)."""

    __slots__ = ("_ended", "_held", "_held_bytes", "_open_sent", "chunked", "hold_limit",
                 "scanner")

    def __init__(self, chunked: bool, hold_limit: int = HOLD_LIMIT) -> None:
        self.chunked = chunked
        self.hold_limit = hold_limit
        self.scanner = SseScanner()
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._open_sent = False
        """Part of the unfinished event went out already (it outgrew HOLD_LIMIT)."""
        self._ended = False
        """The stream's last bytes were handed out (:meth:`finish` or :meth:`error_end`)."""

    def relay(self, data: bytes) -> bytes:
        """What of the stream so far the client may have after ``data`` arrived: the
        events that are complete now (plus, for an event beyond HOLD_LIMIT, its bytes as
        they come)."""
        end = self.scanner.feed(data)
        if self._open_sent:
            if not end:
                return data
            self._open_sent = False
            self._hold(data[end:])
            return data[:end]
        if not end:
            self._hold(data)
            if self._held_bytes <= self.hold_limit:
                return b""
            self._open_sent = True
            return self._release()
        out = data[:end]
        if self._held:
            self._held.append(out)
            out = self._release()
        self._hold(data[end:])
        return out

    def finish(self) -> bytes:
        """The bytes still held when the upstream's own framing says the body is
        complete: they go out as they are (the upstream ended its stream there)."""
        self._ended = True
        return self._release()

    @property
    def complete(self) -> bool:
        """True when the upstream's stream so far ends at an event boundary."""
        return self.scanner.at_boundary

    @property
    def client_between_events(self) -> bool:
        """True when what the client has received ends between events (always, unless
        an event beyond HOLD_LIMIT is under way): the gateway may write an event or a
        comment of its own now without splitting one of the upstream's."""
        return not self._open_sent

    def error_end(self, code: int, message: str, request_id: bytes) -> bytes:
        """The last bytes of a failed stream: the held half event is dropped (a half
        event already partly sent is ended with a blank line instead), then one
        ``event: error`` whose data is the gateway's JSON error for status ``code`` (the
        same object as its JSON error responses), then the terminal chunk (a chunked
        response; otherwise the caller closes the connection). Nothing (``b""``) once
        the stream has ended: a second failure while the first one's bytes are being
        sent must not add a second end."""
        if self._ended:
            return b""
        self._ended = True
        self._release()
        event = b"event: error\ndata: " + orjson.dumps({"error": {
            "type": ERROR_TYPES.get(code, "error"), "code": code, "message": message,
            "request_id": request_id.decode("ascii", "replace")}}) + b"\n\n"
        if self._open_sent:
            event = b"\n\n" + event
            self._open_sent = False
        if self.chunked:
            return b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event)
        return event

    def _hold(self, data: bytes) -> None:
        if data:
            self._held.append(data)
            self._held_bytes += len(data)

    def _release(self) -> bytes:
        held = self._held
        if not held:
            return b""
        out = held[0] if len(held) == 1 else b"".join(held)
        self._held = []
        self._held_bytes = 0
        return out


__all__ = ["EVENT_END", "HOLD_LIMIT", "SseRelay", "SseScanner"]
