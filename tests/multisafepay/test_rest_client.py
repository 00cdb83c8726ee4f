"""The project's REST client (``bridge.multisafepay.rest``): its response parser on its own
(however the bytes are split), and the client over real sockets: kept connections, a server
that closes one, refused connections and timeouts, as ``MultiSafepayApi`` reports them."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import ssl
from collections.abc import AsyncIterator, Callable

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.events import ErrorCode
from bridge.multisafepay.api import ApiError, MultiSafepayApi
from bridge.multisafepay.rest import (
    MAX_BODY_BYTES,
    ResponseParser,
    ResponseTooLarge,
    RestError,
    RestPool,
    proxy_configured,
)
from bridge.simulator import SimulatorServer

BODY = json.dumps({"success": True, "data": {"order_id": "o1", "status": "initialized"}}).encode()


def _length(body: bytes, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _chunked(body: bytes, size: int) -> bytes:
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for i in range(0, len(body), size):
        part = body[i : i + size]
        out += b"%x;ext=1\r\n" % len(part) + part + b"\r\n"
    return out + b"0\r\nX-Trailer: t\r\n\r\n"


def _feed_split(raw: bytes, cuts: list[int]) -> list[object]:
    parser = ResponseParser()
    results: list[object] = []
    last = 0
    for cut in sorted({c % (len(raw) + 1) for c in cuts}) + [len(raw)]:
        got = parser.feed(raw[last:cut])
        last = cut
        if got is not None:
            results.append(got)
    return results


@given(st.lists(st.integers(0, 10_000), max_size=12), st.integers(1, 40))
def test_a_response_reads_the_same_however_it_is_split(cuts: list[int], chunk: int) -> None:
    gz = gzip.compress(BODY)
    for raw in (
        _length(BODY),
        _chunked(BODY, chunk),
        _length(gz, "Content-Encoding: gzip\r\n"),
        b"HTTP/1.1 100 Continue\r\n\r\n" + _length(BODY),
    ):
        (response,) = _feed_split(raw, cuts)
        assert response.status == 200  # type: ignore[attr-defined]
        assert response.body == BODY  # type: ignore[attr-defined]
        assert response.keep_alive  # type: ignore[attr-defined]


def test_a_body_read_to_the_close_and_connection_close() -> None:
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n" + BODY) is None
    response = parser.eof()
    assert (response.status, response.body, response.keep_alive) == (404, BODY, False)
    http10 = ResponseParser().feed(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert http10 is not None and not http10.keep_alive
    head = ResponseParser(head_only=True).feed(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
    assert head is not None and head.body == b""


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nnot",
    ],
)
def test_garbage_is_an_error(raw: bytes) -> None:
    with pytest.raises(RestError) as err:
        ResponseParser().feed(raw)
    assert err.value.sent


def test_limits() -> None:
    with pytest.raises(ResponseTooLarge):
        ResponseParser().feed(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20_000)
    with pytest.raises(ResponseTooLarge):
        ResponseParser().feed(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1)
        )
    bomb = gzip.compress(b"\0" * (MAX_BODY_BYTES + 10))
    with pytest.raises(ResponseTooLarge):
        ResponseParser().feed(_length(bomb, "Content-Encoding: gzip\r\n"))
    with pytest.raises(RestError):  # the connection closed before the length was read
        parser = ResponseParser()
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        parser.eof()


# -- over real sockets -----------------------------------------------------------------------

KEY = "rest-key-0123456789"
TLS = ssl.create_default_context()


@pytest.fixture
def sim() -> AsyncIterator[SimulatorServer]:
    with SimulatorServer(speed=20) as server:
        yield server


@pytest.mark.anyio
async def test_calls_keep_their_connection_and_answer_as_the_api_does(
    sim: SimulatorServer,
) -> None:
    pool = RestPool(tls=TLS)
    api = MultiSafepayApi(pool, sim.base_url, request_timeout=10.0)
    try:
        created = await api.create_order(
            KEY,
            order_id="r1",
            terminal_id="SIM-MANUAL-01",
            amount=100,
            currency="EUR",
            description=None,
        )
        assert created.order_id == "r1" and created.events_token
        for _ in range(5):
            assert (await api.get_order(KEY, "r1"))["order_id"] == "r1"
        assert pool.opened == 1  # one kept connection for every call made one at a time
        with pytest.raises(ApiError) as err:
            await api.get_order(KEY, "no-such-order")
        assert err.value.code is ErrorCode.NOT_FOUND and err.value.http_status == 404
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(api.get_order, KEY, "r1")
        assert 1 < pool.opened <= 5  # calls at once: a connection each
        terminals = await api.list_terminals(KEY)
        assert isinstance(terminals, list)
    finally:
        pool.close()


@pytest.mark.anyio
async def test_a_refused_connection_did_nothing_and_a_silent_server_times_out() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    pool = RestPool(tls=TLS, connect_timeout=2.0)
    api = MultiSafepayApi(pool, f"http://127.0.0.1:{port}/v1/json/", request_timeout=2.0)
    with pytest.raises(ApiError) as err:
        await api.create_order(
            KEY, order_id="x", terminal_id="T", amount=1, currency="EUR", description=None
        )
    assert err.value.code is ErrorCode.UPSTREAM_UNAVAILABLE and not err.value.maybe_done

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    api = MultiSafepayApi(pool, f"http://127.0.0.1:{port}/v1/json/", request_timeout=0.3)
    try:
        with pytest.raises(ApiError) as err:
            await api.create_order(
                KEY, order_id="x", terminal_id="T", amount=1, currency="EUR", description=None
            )
        assert err.value.maybe_done  # sent: it may have been done
        assert "no answer within" in err.value.message
    finally:
        server.close()
        pool.close()


async def _serve(answer: Callable[[int], bytes]) -> tuple[asyncio.Server, list[int]]:
    """A server that reads one request per answer, answers ``answer(n)`` for the n-th
    request of each connection (``b""``: close it); the connections it accepted."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        n = 0
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                reply = answer(n)
                n += 1
                if not reply:
                    break
                writer.write(reply)
                await writer.drain()
                if b"Connection: close" in reply:
                    break
        except asyncio.IncompleteReadError:
            pass  # the client closed it
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, accepted


@pytest.mark.anyio
async def test_a_kept_connection_the_server_closed_is_not_a_failed_get() -> None:
    # each connection answers once, then closes the next request unanswered
    server, accepted = await _serve(lambda n: _length(BODY) if n == 0 else b"")
    port = server.sockets[0].getsockname()[1]
    pool = RestPool(tls=TLS)
    api = MultiSafepayApi(pool, f"http://127.0.0.1:{port}/v1/json/", request_timeout=5.0)
    try:
        for _ in range(3):
            assert (await api.get_order(KEY, "o1"))["order_id"] == "o1"
        assert len(accepted) == 3  # each GET after the first went again on a fresh one
    finally:
        server.close()
        pool.close()


@pytest.mark.anyio
async def test_chunked_and_close_delimited_answers_over_a_socket() -> None:
    replies = [_chunked(BODY, 7), b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + BODY]
    server, accepted = await _serve(lambda n: replies[n] if n < 2 else b"")
    port = server.sockets[0].getsockname()[1]
    pool = RestPool(tls=TLS)
    api = MultiSafepayApi(pool, f"http://127.0.0.1:{port}/v1/json/", request_timeout=5.0)
    try:
        assert (await api.get_order(KEY, "o1"))["status"] == "initialized"
        assert (await api.get_order(KEY, "o1"))["status"] == "initialized"
        assert len(accepted) == 1  # the chunked answer kept it; the close-delimited one ended it
        # closed after answering: the third goes on a new connection (answered first there)
        assert (await api.get_order(KEY, "o1"))["status"] == "initialized"
        assert len(accepted) == 2
    finally:
        server.close()
        pool.close()


@pytest.mark.anyio
async def test_what_a_request_says_on_the_wire() -> None:
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(_length(BODY))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = RestPool(tls=TLS)
    base = f"http://user:pw@127.0.0.1:{port}/v1/json/"
    api = MultiSafepayApi(pool, base, request_timeout=5.0)
    try:
        await api.cancel_order(KEY, "till7/1")
    finally:
        server.close()
        pool.close()
    head = heads[0].decode()
    assert head.startswith("POST /v1/json/orders/till7%2F1/cancel HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{port}\r\n" in head  # no credentials in the Host header
    assert "Content-Length: 0\r\n" in head  # a POST without a body still says its length
    assert f"api_key: {KEY}\r\n" in head and "pw" not in head


def test_a_proxy_in_the_environment_leaves_the_calls_to_httpx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    url = "https://testapi.multisafepay.com/v1/json/"
    assert not proxy_configured(url)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert proxy_configured(url)
    assert not proxy_configured("http://127.0.0.1:9/v1/json/")  # a proxy for https only
    monkeypatch.setenv("NO_PROXY", "testapi.multisafepay.com")
    assert not proxy_configured(url)
