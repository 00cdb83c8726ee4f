"""The stream's protocol wakes its reader only for what the reader waits for.

A keep-alive every 15 s per held stream used to wake the reader's task (five coroutine
frames, a new future and timer) only for it to find nothing and wait again. The protocol is
fed bytes here directly, as the event loop feeds it: no socket needed to see who is woken.
"""

from __future__ import annotations

import asyncio

import pytest

from bridge.multisafepay.sse import StreamConnection

pytestmark = pytest.mark.anyio

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def waiting(conn: StreamConnection) -> asyncio.Future[None]:
    conn._waiter = future = asyncio.get_running_loop().create_future()
    return future


async def test_the_head_wakes_the_reader() -> None:
    conn = StreamConnection(b"", 0.0)
    woken = waiting(conn)
    conn.data_received(HEAD)
    assert woken.done() and conn.status == 200


async def test_a_keep_alive_is_dropped_and_wakes_nobody_but_counts_as_a_line() -> None:
    conn = StreamConnection(b"", 0.0)
    conn.data_received(HEAD)
    woken = waiting(conn)
    line_at = conn.line_at
    await asyncio.sleep(0.01)  # the loop's clock moves on
    conn.data_received(chunk(b"data: ping\n\n") + chunk(b"data:\n\n") + chunk(b": comment\n"))
    assert conn.messages == []
    assert not woken.done()
    assert conn.line_at > line_at  # the idle deadline moved: the stream is alive


async def test_a_message_wakes_the_reader_even_after_a_keep_alive() -> None:
    conn = StreamConnection(b"", 0.0)
    conn.data_received(HEAD)
    woken = waiting(conn)
    conn.data_received(chunk(b"data: ping\n\nevent: session.order\ndata: {}\n\n"))
    assert woken.done()
    assert [(m.event, m.data) for m in conn.messages] == [("session.order", "{}")]


async def test_the_end_and_garbage_wake_the_reader() -> None:
    conn = StreamConnection(b"", 0.0)
    conn.data_received(HEAD)
    woken = waiting(conn)
    conn.data_received(b"0\r\n\r\n")
    assert woken.done() and conn.ended
    garbled = StreamConnection(b"", 0.0)
    garbled.data_received(HEAD)
    woken = waiting(garbled)
    garbled.data_received(b"zz\r\n")
    assert woken.done() and garbled.error is not None
