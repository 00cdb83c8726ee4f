"""The message-bus reader against hostile or unusual servers, over real sockets: every fault ends
in StreamError (never a hang, a crash or unbounded memory), and what RFC 6455 allows (fragments,
pings, TLS) works."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.server import ServerConnection, serve

from bridge.multisafepay.sse import StreamError, StreamMessage, StreamRejected
from bridge.multisafepay.websocket import bus_messages

pytestmark = pytest.mark.anyio

TOKEN = "secret.events.token"
PAYLOAD = {"order_id": "o-1", "status": "initialized", "transaction_id": "890001"}
EVENT = json.dumps({"type": "event", "channel": "session.order", "payload": PAYLOAD})

Then = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def acking_bus(then: Then, **options: Any) -> AsyncIterator[str]:
    """A bus that acks the subscription, then does ``then``."""

    async def handler(ws: ServerConnection) -> None:
        sub = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "ack", "replyId": sub["id"]}))
        await then(ws)

    async with serve(handler, "127.0.0.1", 0, compression=None, **options) as server:
        port = server.sockets[0].getsockname()[1]
        scheme = "wss" if "ssl" in options else "ws"
        yield f"{scheme}://127.0.0.1:{port}/events/"


async def read_all(
    url: str, *, idle: float = 2, limit: float = 10, tls: ssl.SSLContext | None = None
) -> list[StreamMessage]:
    got: list[StreamMessage] = []
    with anyio.fail_after(limit):
        stream = bus_messages(url, TOKEN, connect_timeout=2, idle_timeout=idle, tls=tls)
        async with aclosing(stream) as messages:
            async for message in messages:
                got.append(message)
    return got


def statuses(got: list[StreamMessage]) -> list[str]:
    return [json.loads(m.data)["status"] for m in got]


async def test_fragmented_message_is_assembled() -> None:
    async def then(ws: ServerConnection) -> None:
        third = len(EVENT) // 3
        await ws.send([EVENT[:third], EVENT[third : 2 * third], EVENT[2 * third :]])
        await ws.close()

    async with acking_bus(then) as url:
        got = await read_all(url)
    assert statuses(got) == ["initialized"]


async def test_oversized_fragmented_message_is_a_stream_error() -> None:
    async def then(ws: ServerConnection) -> None:
        await ws.send(json.dumps(json.loads(EVENT)))
        await ws.send(["x" * 10_000 for _ in range(10)])  # 100 KB in small fragments
        await ws.wait_closed()

    got: list[StreamMessage] = []
    async with acking_bus(then) as url:
        with pytest.raises(StreamError, match="over 65536 bytes"):
            with anyio.fail_after(10):
                stream = bus_messages(url, TOKEN, connect_timeout=2, idle_timeout=5)
                async with aclosing(stream) as messages:
                    async for message in messages:
                        got.append(message)
    assert statuses(got) == ["initialized"]  # what came before the fault is kept


async def test_server_pings_are_answered() -> None:
    async def then(ws: ServerConnection) -> None:
        pong = await ws.ping(b"are you there")
        await pong  # answered by the library's protocol layer, not by our code
        await ws.send(EVENT)
        await ws.close()

    async with acking_bus(then) as url:
        got = await read_all(url)
    assert statuses(got) == ["initialized"]


async def test_text_frame_that_is_not_utf8_is_skipped() -> None:
    async def then(ws: ServerConnection) -> None:
        await ws.send(b"\xff\xfe{", text=True)  # a text frame whose bytes are not UTF-8
        await ws.send(EVENT)
        await ws.close()

    async with acking_bus(then) as url:
        got = await read_all(url)
    assert statuses(got) == ["initialized"]


async def test_a_frame_that_never_completes_is_silence() -> None:
    async def then(ws: ServerConnection) -> None:
        # A text frame announcing 256 bytes, then 1 byte and nothing: bytes, but no message.
        ws.transport.write(b"\x81\x7e\x01\x00{")
        await ws.wait_closed()

    async with acking_bus(then) as url:
        with pytest.raises(StreamError, match="silent for 0.3 s"):
            await read_all(url, idle=0.3)


Answer = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(answer: Answer, rcvbuf: int | None = None) -> AsyncIterator[str]:
    """A TCP server that reads the client's handshake request, then does ``answer`` with it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await answer(await reader.readuntil(b"\r\n\r\n"), reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    sock = socket.socket()
    if rcvbuf is not None:  # before listen(): accepted sockets inherit it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(handle, sock=sock)
    try:
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}/events/"
    finally:
        server.close()


def said(text: bytes) -> Answer:
    async def answer(_: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(text)
        await writer.drain()
        await reader.read()  # until the client hangs up

    return answer


@pytest.mark.parametrize(
    "reply,error",
    [
        (b"hello there\r\n\r\n", "handshake failed: InvalidMessage"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", "answered HTTP 200"),
        (b"HTTP/1.1 101 Switching\r\nupgrade: websocket\r\n\r\n", "handshake failed"),
        (b"HTTP/1.1 101 " + b"x" * 20_000 + b"\r\n\r\n", "handshake failed"),
        (b"HTTP/1.1 101 OK\r\n" + b"x-a: b\r\n" * 200 + b"\r\n", "handshake failed"),
    ],
    ids=["garbage", "not-upgraded", "no-accept-key", "status-line-too-long", "too-many-headers"],
)
async def test_hostile_handshake_answers(reply: bytes, error: str) -> None:
    async with raw_server(said(reply)) as url:
        with pytest.raises(StreamError, match=error) as info:
            await read_all(url)
    assert not isinstance(info.value, StreamRejected)
    assert TOKEN not in str(info.value)


def accept_key(request: bytes) -> bytes:
    key = next(
        line.partition(b":")[2].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    digest = hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    return base64.b64encode(digest)


async def test_a_server_that_never_reads_cannot_grow_our_buffers() -> None:
    # Pings oblige the client to answer (pongs); a server that never reads them must not make
    # the client buffer them without limit.
    async def flood(
        request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
            b"sec-websocket-accept: " + accept_key(request) + b"\r\n\r\n"
        )
        ping = b"\x89\x7d" + b"p" * 125
        for _ in range(400):  # at most 400 x 500 pings (25 MB); the client gives up long before
            writer.write(ping * 500)
            await writer.drain()
        await reader.read()

    async with raw_server(flood, rcvbuf=4096) as url:  # and it reads nothing
        with pytest.raises(StreamError, match="did not read 65536 bytes we sent"):
            await read_all(url, idle=30, limit=60)


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        + ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


async def send_one(ws: ServerConnection) -> None:
    await ws.send(EVENT)
    await ws.close()


async def test_wss_verifies_the_certificate(self_signed: tuple[Path, Path]) -> None:
    async with acking_bus(send_one, ssl=server_tls(*self_signed)) as url:
        assert url.startswith("wss://")
        with pytest.raises(StreamError, match="unreachable: .*CERTIFICATE_VERIFY_FAILED") as info:
            await read_all(url)
    assert not isinstance(info.value, StreamRejected)


async def test_wss_with_a_trusted_certificate(self_signed: tuple[Path, Path]) -> None:
    trusting = ssl.create_default_context(cafile=str(self_signed[0]))
    async with acking_bus(send_one, ssl=server_tls(*self_signed)) as url:
        got = await read_all(url, tls=trusting)
    assert statuses(got) == ["initialized"]


@pytest.mark.parametrize(
    "anyio_backend", [("asyncio", {"use_uvloop": True})], ids=["uvloop"], indirect=False
)
async def test_the_reader_on_uvloop_as_the_daemon_runs_it(anyio_backend: object) -> None:
    assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")

    async def then(ws: ServerConnection) -> None:
        await ws.send(EVENT)
        await ws.send([EVENT[:10], EVENT[10:]])
        await (await ws.ping())
        await ws.close()

    async with acking_bus(then) as url:
        got = await read_all(url)
    assert statuses(got) == ["initialized", "initialized"]


async def test_a_reader_cancelled_during_the_handshake_drops_its_connection() -> None:
    asked = anyio.Event()
    hung_up = anyio.Event()

    async def silent(_: bytes, reader: asyncio.StreamReader, __: asyncio.StreamWriter) -> None:
        asked.set()
        assert await reader.read() == b""  # the client hangs up; it sent nothing more
        hung_up.set()

    async with raw_server(silent) as url:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_all, url)  # connect_timeout 2 s: cancelled long before
                await asked.wait()
                tg.cancel_scope.cancel()
            await hung_up.wait()


@pytest.mark.parametrize("url", ["ws://h:99999/", "ws://\u00e9..x/", "ws://h/#f", "wss://"])
async def test_hostile_urls_are_rejected_not_crashes(url: str) -> None:
    # A port out of range and a host IDNA cannot encode raised ValueError / UnicodeError from
    # the URL parser of websockets before: an exception the session does not expect.
    with pytest.raises(StreamRejected, match="invalid message bus URL") as info:
        await read_all(url)
    assert TOKEN not in str(info.value)
