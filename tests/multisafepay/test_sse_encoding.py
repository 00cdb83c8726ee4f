"""The SSE reader asks for an uncompressed stream, and refuses a compressed one.

httpx asks for ``gzip, deflate`` by default, but the reader reads raw bytes: a gzip-encoded
stream used to decode to zero messages and a clean end. Tested against a real server that
compresses whenever the request allows it.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager

import anyio
import pytest
from anyio.abc import SocketStream

from bridge.multisafepay.sse import StreamError, StreamMessage, sse_messages

pytestmark = pytest.mark.anyio

BODY = b'event: session.order\ndata: {"order_id":"o","status":"initialized"}\n\n'


@asynccontextmanager
async def gzip_server(*, always: bool) -> AsyncIterator[tuple[str, list[str]]]:
    """Answers gzip-encoded when the request accepts gzip (or ``always``); records the
    requests' Accept-Encoding."""
    seen: list[str] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(client: SocketStream) -> None:
        async with client:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await client.receive()
            headers = dict(
                line.split(":", 1)
                for line in request.decode("latin-1").split("\r\n")[1:]
                if ":" in line
            )
            accept = next(
                (v.strip() for k, v in headers.items() if k.lower() == "accept-encoding"), ""
            )
            seen.append(accept)
            compress = always or "gzip" in accept
            body = gzip.compress(BODY) if compress else BODY
            head = (
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n"
                + (b"content-encoding: gzip\r\n" if compress else b"")
                + b"\r\n"
            )
            await client.send(head + body)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield f"http://127.0.0.1:{port}/events/stream/", seen
        finally:
            tg.cancel_scope.cancel()


async def read_all(url: str) -> list[StreamMessage]:
    got: list[StreamMessage] = []
    async with aclosing(sse_messages(url, "tok", idle_timeout=2, connect_timeout=2)) as stream:
        async for message in stream:
            got.append(message)
    return got


async def test_the_stream_asks_for_identity_and_gets_its_messages() -> None:
    async with gzip_server(always=False) as (url, seen):
        got = await read_all(url)
    assert seen == ["identity"]
    assert [(m.event, m.data) for m in got] == [
        ("session.order", '{"order_id":"o","status":"initialized"}')
    ]


async def test_a_compressed_stream_is_an_error_not_a_silent_end() -> None:
    async with gzip_server(always=True) as (url, _seen):
        with pytest.raises(StreamError, match="gzip"):
            await read_all(url)
