"""The SSE reader against a misbehaving server: every fault ends in StreamError, never a hang,
a crash or unbounded memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager

import anyio
import pytest
from anyio.abc import SocketStream

from bridge.multisafepay.sse import StreamError, StreamRejected, sse_messages

pytestmark = pytest.mark.anyio

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
GOOD = b'event: session.order\ndata: {"order_id":"o","status":"initialized"}\n\n'

Behaviour = Callable[[SocketStream], Awaitable[None]]


@asynccontextmanager
async def server(behaviour: Behaviour) -> AsyncIterator[str]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(client: SocketStream) -> None:
        async with client:
            await client.receive()  # the request
            try:
                await behaviour(client)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    async with listener:
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handle)
            try:
                yield f"http://127.0.0.1:{port}/events/stream/"
            finally:
                tg.cancel_scope.cancel()


async def read_all(url: str, idle: float = 0.5) -> list:
    got = []
    async with aclosing(sse_messages(url, "tok", idle_timeout=idle, connect_timeout=1)) as stream:
        async for m in stream:
            got.append(m)
    return got


async def garbage(c: SocketStream) -> None:
    await c.send(HEAD + GOOD + b"\xff\xfe\x00garbage\n\n")


async def huge_line(c: SocketStream) -> None:
    await c.send(HEAD + GOOD)
    for _ in range(100):
        await c.send(b"data: " + b"x" * 8192)


async def slow_drip(c: SocketStream) -> None:
    await c.send(HEAD + GOOD + b"data: ")
    for _ in range(100):
        await anyio.sleep(0.05)
        await c.send(b"x")


async def cut_mid_message(c: SocketStream) -> None:
    await c.send(HEAD + GOOD + b'event: session.order\ndata: {"order_id":"o","sta')
    await c.aclose()


async def silent(c: SocketStream) -> None:
    await c.send(HEAD + GOOD)
    await anyio.sleep(5)


async def not_sse(c: SocketStream) -> None:
    await c.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 2\r\n\r\nhi")


async def refused(c: SocketStream) -> None:
    await c.send(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")


@pytest.mark.parametrize("behaviour", [garbage, huge_line, slow_drip, silent, not_sse])
async def test_faults_raise_stream_error_after_the_good_messages(behaviour: Behaviour) -> None:
    async with server(behaviour) as url:
        got: list = []
        with anyio.fail_after(10), pytest.raises(StreamError) as info:
            async with aclosing(sse_messages(url, "tok", idle_timeout=0.5)) as stream:
                async for m in stream:
                    got.append(m)
    assert not isinstance(info.value, StreamRejected)
    assert len(got) == (0 if behaviour is not_sse else 1)


async def test_cut_mid_message_ends_the_stream_without_the_partial_message() -> None:
    async with server(cut_mid_message) as url:
        with anyio.fail_after(10):
            got = await read_all(url)
    assert [m.data for m in got] == ['{"order_id":"o","status":"initialized"}']


async def test_token_refused_is_rejected() -> None:
    async with server(refused) as url:
        with anyio.fail_after(10), pytest.raises(StreamRejected):
            await read_all(url)


async def test_connection_refused_and_bad_url() -> None:
    with pytest.raises(StreamError):
        await read_all("http://127.0.0.1:1/events/stream/")
    with pytest.raises(StreamError):
        await read_all("http://[bad/")


async def test_a_slow_reader_gets_every_message_of_a_fast_stream() -> None:
    """Flow control: the socket is paused while messages wait, and nothing is dropped."""
    many = 500

    async def burst(c: SocketStream) -> None:
        await c.send(HEAD + GOOD * many)

    async with server(burst) as url:
        got = []
        with anyio.fail_after(20):
            async with aclosing(sse_messages(url, "tok", idle_timeout=5)) as stream:
                async for m in stream:
                    got.append(m)
                    if len(got) % 50 == 0:
                        await anyio.sleep(0.01)  # the reader falls behind now and then
    assert len(got) == many


async def test_chunked_response_and_keepalives() -> None:
    async def chunked(c: SocketStream) -> None:
        head = HEAD.replace(b"connection: close", b"transfer-encoding: chunked")
        body = b"data: ping\n\n" + GOOD
        await c.send(head + b"%x\r\n" % len(body) + body + b"\r\n")
        await c.send(b"0\r\n\r\n")

    async with server(chunked) as url:
        with anyio.fail_after(10):
            got = await read_all(url)
    assert [m.event for m in got] == ["session.order"]


@pytest.mark.parametrize(
    "anyio_backend", [("asyncio", {"use_uvloop": True})], ids=["uvloop"], indirect=False
)
async def test_the_reader_on_uvloop_as_the_daemon_runs_it(anyio_backend: object) -> None:
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    async with server(cut_mid_message) as url:
        with anyio.fail_after(10):
            got = await read_all(url)
    assert [m.event for m in got] == ["session.order"]


async def test_a_cancelled_reader_drops_its_connection() -> None:
    closed = anyio.Event()
    first = anyio.Event()

    async def hold(c: SocketStream) -> None:
        await c.send(HEAD + GOOD)
        try:
            await c.receive()  # nothing comes; returns or raises once the client hangs up
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
        closed.set()

    async with server(hold) as url:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def read() -> None:
                    async with aclosing(sse_messages(url, "tok", idle_timeout=30)) as stream:
                        async for _ in stream:
                            first.set()

                tg.start_soon(read)
                await first.wait()  # the reader now waits on a silent stream
                tg.cancel_scope.cancel()
            await closed.wait()
