"""The RESP2 codec: tables, round-trip properties, malformed input, bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from li_httpd.workers.resp import (
    MAX_ARRAY,
    MAX_BULK,
    MAX_DEPTH,
    MAX_LINE,
    MAX_REPLY,
    NEED_MORE,
    ProtocolError,
    Reply,
    ReplyError,
    ReplyParser,
    encode_command,
    encode_reply,
    parse_all,
)

COMMANDS = [
    (("PING",), b"*1\r\n$4\r\nPING\r\n"),
    (("SET", b"k", 12), b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n"),
    (("GET", ""), b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n"),
    (("ECHO", b"a\r\nb"), b"*2\r\n$4\r\nECHO\r\n$4\r\na\r\nb\r\n"),
    (("X", -5, "é"), b"*3\r\n$1\r\nX\r\n$2\r\n-5\r\n$2\r\n\xc3\xa9\r\n"),
]


@pytest.mark.parametrize(("args", "wire"), COMMANDS)
def test_encode_command(args: tuple[bytes | str | int, ...], wire: bytes) -> None:
    assert encode_command(*args) == wire


def test_encode_command_refuses_nothing_and_other_types() -> None:
    with pytest.raises(ValueError):
        encode_command()
    with pytest.raises(TypeError):
        encode_command("SET", True)
    with pytest.raises(TypeError):
        encode_command("SET", 1.5)  # type: ignore[arg-type]


REPLIES: list[tuple[bytes, Reply]] = [
    (b"+OK\r\n", b"OK"),
    (b"+\r\n", b""),
    (b"-ERR unknown command\r\n", ReplyError("ERR unknown command")),
    (b"-NOSCRIPT No matching script\r\n", ReplyError("NOSCRIPT No matching script")),
    (b":0\r\n", 0),
    (b":-42\r\n", -42),
    (b":9223372036854775807\r\n", 9223372036854775807),
    (b"$5\r\nhello\r\n", b"hello"),
    (b"$0\r\n\r\n", b""),
    (b"$4\r\na\r\nb\r\n", b"a\r\nb"),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (b"*3\r\n:1\r\n$1\r\nx\r\n$-1\r\n", [1, b"x", None]),
    (b"*2\r\n*1\r\n:1\r\n*0\r\n", [[1], []]),
    (b"*2\r\n-ERR a\r\n:2\r\n", [ReplyError("ERR a"), 2]),
]


@pytest.mark.parametrize(("wire", "reply"), REPLIES)
def test_parse_table(wire: bytes, reply: Reply) -> None:
    assert parse_all(wire) == [reply]


@pytest.mark.parametrize(("wire", "reply"), REPLIES)
def test_parse_byte_by_byte(wire: bytes, reply: Reply) -> None:
    parser = ReplyParser()
    for index in range(len(wire) - 1):
        parser.feed(wire[index:index + 1])
        assert parser.next() is NEED_MORE
    parser.feed(wire[-1:])
    assert parser.next() == reply
    assert parser.next() is NEED_MORE


def test_error_kind() -> None:
    assert ReplyError("NOSCRIPT No matching script").kind == "NOSCRIPT"


MALFORMED = [
    (b"?x\r\n", "unknown reply type"),
    (b"\r\n", "empty reply line"),
    (b":12a\r\n", "not an integer"),
    (b":\r\n", "not an integer"),
    (b":--1\r\n", "not an integer"),
    (b": 1\r\n", "not an integer"),
    (b":1" + b"0" * 20 + b"\r\n", "not an integer"),
    (b"$-2\r\n", "bulk string length -2"),
    (b"$%d\r\n" % (MAX_BULK + 1), "bulk string length"),
    (b"$3\r\nabcd\r\n", "not followed by CRLF"),
    (b"*-2\r\n", "array length -2"),
    (b"*%d\r\n" % (MAX_ARRAY + 1), "array length"),
    (b"*1\r\n" * (MAX_DEPTH + 1), "nested deeper"),
    (b"+OK\n", "bare LF"),
    (b"+O\rK\r\n", "bare CR"),
    (b"+" + b"x" * (MAX_LINE + 2), "without CRLF"),
]


@pytest.mark.parametrize(("wire", "message"), MALFORMED)
def test_malformed_is_a_clear_error(wire: bytes, message: str) -> None:
    parser = ReplyParser()
    parser.feed(wire)
    with pytest.raises(ProtocolError, match=message):
        parser.next()
    with pytest.raises(ProtocolError):  # the parser stays failed
        parser.next()


def test_truncated_input_is_an_error_for_parse_all() -> None:
    with pytest.raises(ProtocolError, match="truncated"):
        parse_all(b"*2\r\n:1\r\n")


def test_a_huge_declared_bulk_is_refused_before_reading_it() -> None:
    parser = ReplyParser()
    parser.feed(b"$999999999999\r\n")
    with pytest.raises(ProtocolError):
        parser.next()


replies: st.SearchStrategy[Reply] = st.recursive(
    st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.binary(max_size=64)
    | st.text(alphabet=st.characters(blacklist_characters="\r\n",
                                     blacklist_categories=("Cs",)), max_size=20
              ).map(ReplyError),
    lambda children: st.lists(children, max_size=5), max_leaves=20)


def _depth(reply: Reply) -> int:
    return 1 + max(map(_depth, reply), default=0) if isinstance(reply, list) else 0


@given(st.lists(replies, max_size=5), st.data())
def test_round_trip_under_any_split(values: list[Reply], data: st.DataObject) -> None:
    values = [v for v in values if _depth(v) <= MAX_DEPTH]
    wire = b"".join(encode_reply(v) for v in values)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    parser = ReplyParser()
    got: list[Reply] = []
    start = 0
    for cut in [*cuts, len(wire)]:
        parser.feed(wire[start:cut])
        start = cut
        while (reply := parser.next()) is not NEED_MORE:
            got.append(reply)
    assert got == values
    assert parser.pending == 0


@given(st.lists(st.binary(max_size=40) | st.integers(-(2**63), 2**63 - 1), min_size=1,
                max_size=8))
def test_a_command_is_an_array_of_bulk_strings(args: list[bytes | int]) -> None:
    assert parse_all(encode_command(*args)) == [
        [a if isinstance(a, bytes) else b"%d" % a for a in args]]


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_hang_nor_crash(wire: bytes) -> None:
    """Any input ends in replies, NEED_MORE or ProtocolError, in bounded steps."""
    parser = ReplyParser()
    parser.feed(wire)
    try:
        for _ in range(len(wire) + 2):
            if parser.next() is NEED_MORE:
                break
        else:
            raise AssertionError("more replies than bytes")
    except ProtocolError:
        pass


def test_one_reply_is_bounded_in_total_not_only_per_part() -> None:
    """Each bulk string and array is within its bound, but together they would make one
    reply of gigabytes: refused once it passes MAX_REPLY, not held in memory."""
    parser = ReplyParser()
    chunk = b"$%d\r\n%s\r\n" % (MAX_BULK, b"x" * MAX_BULK)
    parser.feed(b"*%d\r\n" % MAX_ARRAY)
    with pytest.raises(ProtocolError, match="larger than"):
        for _ in range(MAX_REPLY // MAX_BULK + 2):
            parser.feed(chunk)
            assert parser.next() is NEED_MORE
