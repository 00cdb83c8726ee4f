"""A request the daemon's HTTP listeners cannot parse is freed at once: the connection's h11
state holds no reference cycle (``bridge.daemon.asgi._AcyclicH11``), so garbage HTTP does not
pile up between the daemon's rare full garbage collections (``pos-bridge bench --soak``)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import h11
import pytest
import uvicorn
from uvicorn.server import ServerState

from bridge.daemon import asgi

GARBAGE = [
    b"GARBAGE \x00\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on the plain port
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 20_000 + b"\r\n",  # headers past the limit
]


async def _app(scope: object, receive: object, send: object) -> None:
    pass


@pytest.fixture
def no_collector() -> Iterator[None]:
    """Only reference counting frees anything during the test."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _refused(conn: h11.Connection, data: bytes) -> int:
    """The status hint of the error ``data`` gets (caught as uvicorn does: no ``pytest.raises``,
    whose ``ExceptionInfo`` makes a cycle of its own)."""
    conn.receive_data(data)
    try:
        while conn.next_event() is not h11.NEED_DATA:
            pass
    except h11.RemoteProtocolError as exc:
        return exc.error_status_hint
    raise AssertionError("accepted")


@pytest.mark.parametrize("data", GARBAGE)
def test_a_refused_request_is_freed_by_reference_counting(no_collector: None, data: bytes) -> None:
    conn = asgi._AcyclicH11(h11.SERVER, max_incomplete_event_size=16 * 1024)
    assert _refused(conn, data) in (400, 431)
    assert conn.their_state is h11.ERROR  # h11 still knows the request was bad
    gone = weakref.ref(conn)
    del conn
    assert gone() is None


def test_the_error_keeps_its_status_hint() -> None:
    conn = asgi._AcyclicH11(h11.SERVER, max_incomplete_event_size=1024)
    assert _refused(conn, GARBAGE[-1]) == 431
    assert _refused(asgi._AcyclicH11(h11.SERVER), GARBAGE[0]) == 400


def test_the_listeners_protocol_parses_with_it_and_the_configured_limit() -> None:
    for limit in (None, 4096):
        config = uvicorn.Config(app=_app, h11_max_incomplete_event_size=limit)
        config.load()
        loop = asyncio.new_event_loop()
        try:
            protocol = asgi._GuardedH11(config, ServerState(), {}, _loop=loop)
        finally:
            loop.close()
        assert isinstance(protocol.conn, asgi._AcyclicH11)
        size = protocol.conn._max_incomplete_event_size
        assert size == (limit or h11.Connection(h11.SERVER)._max_incomplete_event_size)
