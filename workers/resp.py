"""RESP2, the Redis wire protocol: commands out, replies in. Pure (no I/O, no trio).

Theory of operation. A command is an array of bulk strings (``*N\\r\\n`` then
``$len\\r\\n<bytes>\\r\\n`` per argument): :func:`encode_command`. A reply is one of five
types, told apart by its first byte: ``+`` simple string, ``-`` error, ``:`` integer,
``$`` bulk string (``$-1`` = nil), ``*`` array (``*-1`` = nil; elements are replies).
:class:`ReplyParser` is fed bytes as they arrive and hands out whole replies in order;
it never blocks and never buffers more than the reply it is assembling needs.

The server is trusted but the bytes still cross a network, so the parser is total: any
malformed input raises :class:`ProtocolError` with what was wrong, and every size is
bounded before bytes are awaited (a line longer than :data:`MAX_LINE`, a bulk string
longer than :data:`MAX_BULK`, an array of more than :data:`MAX_ARRAY` elements or nested
deeper than :data:`MAX_DEPTH`, or a reply of more than :data:`MAX_REPLY` bytes in all,
is an error, not a wait for more input). The replies the
gateway's scripts send are a few small integers and strings, far below these bounds.

Reply values: ``bytes`` (simple and bulk strings), ``int``, ``None`` (nil), ``list``
(arrays) and :class:`ReplyError` (an error reply is a value, so that one failed command
in a pipeline does not lose the replies after it; the client raises it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

MAX_LINE = 64 * 1024
"""Longest header line (type byte to CRLF) accepted."""
MAX_BULK = 1024 * 1024
"""Largest bulk string accepted."""
MAX_ARRAY = 4096
"""Most elements in one array reply."""
MAX_DEPTH = 8
"""Deepest array nesting."""
MAX_REPLY = 4 * 1024 * 1024
"""Most bytes in one whole reply (arrays of strings, each within its bound, would
otherwise add up to gigabytes held while the reply is assembled)."""


@dataclass(frozen=True, slots=True)
class ReplyError:
    """An error reply (``-ERR ...``): ``kind`` is its first word (ERR, NOSCRIPT, ...)."""

    message: str

    @property
    def kind(self) -> str:
        return self.message.split(" ", 1)[0]


Reply = Union[bytes, int, None, "list[Reply]", ReplyError]


class ProtocolError(Exception):
    """Bytes that are not a RESP2 reply (or exceed a bound): the connection is unusable."""


Arg = bytes | str | int


def encode_command(*args: Arg) -> bytes:
    """One command as a RESP2 array of bulk strings (str as UTF-8, int in decimal)."""
    if not args:
        raise ValueError("a command has at least one word")
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int) and not isinstance(arg, bool):
            data = b"%d" % arg
        else:
            raise TypeError(f"a command argument is bytes, str or int, not {type(arg).__name__}")
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


def encode_reply(reply: Reply) -> bytes:
    """A reply as the server would send it (bulk form for bytes). For tests and fuzzing:
    ``parse_all(encode_reply(r)) == [r]``."""
    if isinstance(reply, ReplyError):
        if "\r" in reply.message or "\n" in reply.message:
            raise ValueError("an error message is one line")
        return b"-" + reply.message.encode() + b"\r\n"
    if reply is None:
        return b"$-1\r\n"
    if isinstance(reply, bool):
        raise TypeError("no boolean replies in RESP2")
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if isinstance(reply, bytes):
        return b"$%d\r\n%s\r\n" % (len(reply), reply)
    return b"*%d\r\n" % len(reply) + b"".join(encode_reply(item) for item in reply)


class _Array:
    """An array being assembled: how many elements are still to come."""

    __slots__ = ("items", "missing")

    def __init__(self, missing: int) -> None:
        self.items: list[Reply] = []
        self.missing = missing


class ReplyParser:
    """Incremental reply parser: :meth:`feed` bytes, then :meth:`next` until it returns
    :data:`NEED_MORE`. After a :class:`ProtocolError` the parser stays failed."""

    __slots__ = ("_buffer", "_failed", "_size", "_stack")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._stack: list[_Array] = []
        self._failed = ""
        self._size = 0
        """Bytes of the reply being assembled consumed so far (bounded by MAX_REPLY)."""

    def feed(self, data: bytes | bytearray) -> None:
        self._buffer += data

    @property
    def pending(self) -> int:
        """Bytes received and not yet consumed by a whole reply."""
        return len(self._buffer)

    def next(self) -> Reply | NeedMore:
        """The next whole reply, or :data:`NEED_MORE`; raises :class:`ProtocolError`."""
        if self._failed:
            raise ProtocolError(self._failed)
        try:
            return self._next()
        except ProtocolError as exc:
            self._failed = str(exc)
            raise

    def _next(self) -> Reply | NeedMore:
        buffer = self._buffer
        while True:
            end = buffer.find(b"\r\n", 0, MAX_LINE + 2)
            if end < 0:
                if len(buffer) > MAX_LINE + 1:
                    raise ProtocolError(f"reply line without CRLF within {MAX_LINE} bytes")
                if buffer.find(b"\n", 0, MAX_LINE + 2) >= 0:
                    raise ProtocolError("bare LF in a reply line")
                return NEED_MORE
            if end == 0:
                raise ProtocolError("empty reply line")
            kind = buffer[0]
            line = bytes(buffer[1:end])
            if b"\n" in line or b"\r" in line:
                raise ProtocolError("bare CR or LF in a reply line")
            value: Reply
            used = end + 2  # the bytes this step consumes (the line, and a bulk's data)
            if kind == 0x24:
                size = _integer(line)
                if size > 0:
                    used += size + 2
            if self._size + used > MAX_REPLY:
                raise ProtocolError(f"a reply larger than {MAX_REPLY} bytes")
            if kind == 0x2B:  # +
                value = line
                del buffer[:end + 2]
            elif kind == 0x2D:  # -
                value = ReplyError(line.decode("utf-8", "replace"))
                del buffer[:end + 2]
            elif kind == 0x3A:  # :
                value = _integer(line)
                del buffer[:end + 2]
            elif kind == 0x24:  # $
                if size == -1:
                    value = None
                    del buffer[:end + 2]
                elif size < 0 or size > MAX_BULK:
                    raise ProtocolError(f"bulk string length {size} out of range")
                else:
                    stop = end + 2 + size
                    if len(buffer) < stop + 2:
                        return NEED_MORE
                    if buffer[stop:stop + 2] != b"\r\n":
                        raise ProtocolError("bulk string not followed by CRLF")
                    value = bytes(buffer[end + 2:stop])
                    del buffer[:stop + 2]
            elif kind == 0x2A:  # *
                count = _integer(line)
                if count == -1:
                    value = None
                    del buffer[:end + 2]
                elif count < 0 or count > MAX_ARRAY:
                    raise ProtocolError(f"array length {count} out of range")
                elif count == 0:
                    value = []
                    del buffer[:end + 2]
                else:
                    if len(self._stack) >= MAX_DEPTH:
                        raise ProtocolError(f"arrays nested deeper than {MAX_DEPTH}")
                    del buffer[:end + 2]
                    self._size += used
                    self._stack.append(_Array(count))
                    continue
            else:
                raise ProtocolError(f"unknown reply type byte {kind:#04x}")
            # A whole value: hand it out, or add it to the array being assembled.
            self._size += used
            while self._stack:
                top = self._stack[-1]
                top.items.append(value)
                top.missing -= 1
                if top.missing:
                    break
                self._stack.pop()
                value = top.items
            else:
                self._size = 0
                return value


def _integer(line: bytes) -> int:
    digits = line[1:] if line[:1] == b"-" else line
    if not digits or not digits.isdigit() or len(digits) > 19:
        raise ProtocolError(f"not an integer: {line[:32]!r}")
    return int(line)


class NeedMore:
    """The type of :data:`NEED_MORE` (a sentinel, not a reply)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE = NeedMore()


def parse_all(data: bytes) -> list[Reply]:
    """Every whole reply in ``data`` (a trailing partial reply is an error). For tests."""
    parser = ReplyParser()
    parser.feed(data)
    replies: list[Reply] = []
    while True:
        reply = parser.next()
        if isinstance(reply, NeedMore):
            if parser.pending or parser._stack:
                raise ProtocolError("truncated reply")
            return replies
        replies.append(reply)


__all__ = ["MAX_ARRAY", "MAX_BULK", "MAX_DEPTH", "MAX_LINE", "NEED_MORE", "NeedMore",
           "ProtocolError", "Reply", "ReplyError", "ReplyParser", "encode_command",
           "encode_reply", "parse_all"]
