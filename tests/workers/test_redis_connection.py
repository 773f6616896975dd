"""The pipelined Redis connection against a scripted in-memory server: who reads which
reply, and that a request waiting for several replies is woken to read its own."""

from __future__ import annotations

import trio
import trio.testing
from li_httpd.workers.redis_client import Connection
from li_httpd.workers.resp import encode_command, encode_reply


async def test_a_two_reply_request_queued_behind_a_reader_gets_its_replies(
        autojump_clock: trio.abc.Clock) -> None:
    """A one-reply request is reading when a two-reply request (a release riding along
    with an admission) queues behind it. When the first one's reply comes, the reading
    passes to the second one, which must be woken (it waits on its last reply) instead
    of waiting out its timeout with its replies already received."""
    client, server = trio.testing.memory_stream_pair()
    conn = Connection(client)
    results: dict[str, object] = {}

    async def first() -> None:
        results["first"] = await conn.request(encode_command("ECHO", "a"))

    async def second() -> None:
        with trio.move_on_after(5) as scope:
            results["second"] = await conn.request(
                encode_command("ECHO", "b") + encode_command("ECHO", "c"), 2)
        results["second_timed_out"] = scope.cancelled_caught
        results["second_at"] = trio.current_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await trio.testing.wait_all_tasks_blocked()  # first is writing, then reading
        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert conn.reading
        await server.receive_some()
        await server.send_all(encode_reply(b"a") + encode_reply(b"b") + encode_reply(b"c"))
    assert results["first"] == [b"a"]
    assert results["second"] == [b"b", b"c"]
    assert not results["second_timed_out"]
    assert not conn.broken and not conn.pending


async def test_a_reader_that_gives_up_hands_the_reading_to_a_two_reply_request(
        autojump_clock: trio.abc.Clock) -> None:
    """A reader whose timeout fires before its reply hands the reading to the request
    behind it, which reads on (and drops the abandoned reply) instead of waiting out
    its own timeout."""
    client, server = trio.testing.memory_stream_pair()
    conn = Connection(client)
    results: dict[str, object] = {}

    async def first() -> None:
        with trio.move_on_after(1):
            await conn.request(encode_command("ECHO", "a"))

    async def second() -> None:
        with trio.move_on_after(5) as scope:
            results["second"] = await conn.request(
                encode_command("ECHO", "b") + encode_command("ECHO", "c"), 2)
        results["second_timed_out"] = scope.cancelled_caught

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(2)  # first has given up
        await server.receive_some()
        await server.send_all(encode_reply(b"a") + encode_reply(b"b") + encode_reply(b"c"))
    assert results["second"] == [b"b", b"c"]
    assert not results["second_timed_out"]
    assert not conn.broken and not conn.pending
