"""Serving an ASGI app inside the daemon's task group (the webhook receiver, the ops endpoints).

uvicorn normally owns the process's signals; here the daemon does, so uvicorn's are disabled
and the server stops when its task is cancelled or ``should_exit`` is set. The listening socket
is bound before serving, so "listeners bound" is true when the daemon reports READY and a busy
port is a clear error at start.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import anyio
import uvicorn

from bridge.errors import UserError
from bridge.sockets import bind

__all__ = ["bind", "serve"]


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the daemon handles signals itself
        yield


def listen(section: str, address: str, host: str, port: int) -> socket.socket:
    """The listening socket of ``[section].listen`` (``address``, parsed as ``host``/``port``):
    a busy or forbidden address is one clear error at start."""
    try:
        return bind(host, port)
    except OSError as exc:
        raise UserError(f"{section}: cannot listen on {address}: {exc.strerror or exc}") from exc


async def serve(app: Any, sock: socket.socket, stop: anyio.Event) -> None:
    """Serve ``app`` on the bound ``sock`` until ``stop`` is set, then shut down gracefully
    (in-flight requests get ``timeout_graceful_shutdown`` seconds)."""
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=2,
    )
    server = _QuietServer(config)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            await stop.wait()
            server.should_exit = True
    finally:
        sock.close()
