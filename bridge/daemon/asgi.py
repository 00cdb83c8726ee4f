"""Serving an ASGI app inside the daemon's task group (the webhook receiver, the ops endpoints).

uvicorn normally owns the process's signals; here the daemon does, so uvicorn's are disabled
and the server stops when its task is cancelled or ``should_exit`` is set. The listening socket
is bound before serving, so "listeners bound" is true when the daemon reports READY and a busy
port is a clear error at start.

Both listeners face clients the daemon does not control, so the HTTP protocol is guarded: a
connection whose request headers are not all in within ``header_timeout`` (from its opening, or
from the end of its previous response) is answered 408 and closed, however slowly it trickles
bytes in; a connection beyond ``max_connections`` is answered 503 and closed at once.

A request h11 cannot parse leaves nothing for the garbage collector: h11 re-raises its error
from a frame that holds the error itself (``exc -> traceback -> frame -> exc``), a cycle that
kept the whole connection (protocol, h11 state, receive buffer, transport) alive until a
collection of the oldest generation, which the daemon's thresholds make rare
(``bridge.daemon.main.GC_THRESHOLDS``). ``_AcyclicH11`` raises a fresh error instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import anyio
import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from bridge.daemon import loops
from bridge.errors import UserError
from bridge.sockets import bind

__all__ = ["bind", "serve"]

HEADER_TIMEOUT = 10.0
MAX_CONNECTIONS = 256

_CLOSE = b"content-length: 0\r\nconnection: close\r\n\r\n"


class _AcyclicH11(h11.Connection):
    """h11's connection whose protocol errors hold no reference cycle: freed by reference
    counting the moment uvicorn has answered 400 and dropped the connection."""

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            exc.__traceback__ = None  # its frames (and the cycle through them) go now
            hint = exc.error_status_hint
            message = str(exc)
        # raised outside the handler: no context, and no local of this frame holds an error
        raise h11.RemoteProtocolError(message, error_status_hint=hint)


class _GuardedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline on request headers and a connection cap."""

    header_timeout = HEADER_TIMEOUT
    max_connections = MAX_CONNECTIONS
    _deadline: asyncio.TimerHandle | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limit = self.config.h11_max_incomplete_event_size
        self.conn = _AcyclicH11(
            h11.SERVER, **({} if limit is None else {"max_incomplete_event_size": limit})
        )

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse(b"HTTP/1.1 503 Service Unavailable\r\n")
            return
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _refuse(self, status_line: bytes) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(status_line + _CLOSE)
            self.transport.close()

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if self.cycle is None or self.cycle.response_complete:  # no request under way
            self._refuse(b"HTTP/1.1 408 Request Timeout\r\n")

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm()  # the headers are in: the app's own timeouts apply to the body

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


class _QuietServer(uvicorn.Server):
    loop_name = "http_server"

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the daemon handles signals itself
        yield

    async def on_tick(self, counter: int) -> bool:
        loops.fault_point(self.loop_name)  # tests only: the server's own loop failing
        return await super().on_tick(counter)

    def abandon(self) -> None:
        """After the server's loop failed: stop listening on its socket (a duplicate, see
        :func:`serve`) and drop its connections, so that a restarted server starts clean."""
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.transport.close()


def listen(section: str, address: str, host: str, port: int) -> socket.socket:
    """The listening socket of ``[section].listen`` (``address``, parsed as ``host``/``port``):
    a busy or forbidden address is one clear error at start."""
    try:
        return bind(host, port)
    except OSError as exc:
        raise UserError(f"{section}: cannot listen on {address}: {exc.strerror or exc}") from exc


async def serve(
    app: Any,
    sock: socket.socket,
    stop: anyio.Event,
    *,
    name: str = "http_server",
    header_timeout: float = HEADER_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> None:
    """Serve ``app`` on the bound ``sock`` until ``stop`` is set, then shut down gracefully
    (in-flight requests get ``timeout_graceful_shutdown`` seconds). A server that fails is
    restarted (``loops.supervise``, as loop ``name``) on the same socket: each run serves a
    duplicate of it, so the port stays bound and connections arriving meanwhile wait in its
    backlog."""
    try:
        await loops.supervise(
            name, _serve_once, app, sock, stop, name, header_timeout, max_connections
        )
    finally:
        sock.close()


async def _serve_once(
    app: Any,
    sock: socket.socket,
    stop: anyio.Event,
    name: str,
    header_timeout: float,
    max_connections: int,
) -> None:
    protocol = type(
        "GuardedH11",
        (_GuardedH11,),
        {"header_timeout": header_timeout, "max_connections": max_connections},
    )
    config = uvicorn.Config(
        app,
        http=protocol,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=2,
    )
    server = _QuietServer(config)
    server.loop_name = name
    listener = sock.dup()  # uvicorn closes what it serves; ``sock`` stays bound
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [listener])
            await stop.wait()
            server.should_exit = True
    except Exception:
        server.abandon()
        raise
    finally:
        listener.close()
