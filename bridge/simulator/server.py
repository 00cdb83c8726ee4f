"""Run the simulator: ``SimulatorServer`` (a background thread, for tests and tools) and
``serve`` (the foreground, for ``pos-bridge simulate``)."""

from __future__ import annotations

import asyncio
import copy
import signal
import socket
import threading
from typing import TYPE_CHECKING, Any

import uvicorn

from bridge import sockets
from bridge.simulator.app import Simulator

if TYPE_CHECKING:
    from bridge.simulator.certs import ServerCert


class _Server(uvicorn.Server):
    """uvicorn, but open event streams are ended first so stopping does not wait for them."""

    def __init__(self, config: uvicorn.Config, simulator: Simulator) -> None:
        super().__init__(config)
        self.simulator = simulator

    async def shutdown(self, sockets: Any = None) -> None:
        self.simulator.begin_shutdown()
        await super().shutdown(sockets=sockets)


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves: a busy port is a clear error, and port 0 is known."""
    sock = sockets.bind(host, port, backlog=128)
    sock.set_inheritable(True)
    return sock


def make_server(
    simulator: Simulator,
    *,
    log_level: str = "warning",
    access_log: bool = False,
    tls: ServerCert | None = None,
) -> _Server:
    """uvicorn serving the simulator; over HTTPS/WSS with ``tls``'s certificate (the URLs it
    hands out then say ``https``/``wss``: they follow the request's scheme)."""
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    # All logs on stderr: stdout carries only the base URL line, for scripts to read.
    log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    config = uvicorn.Config(
        simulator.app,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        log_config=log_config,
        timeout_graceful_shutdown=2,
        ws="websockets-sansio",
        ws_ping_interval=None,
        ssl_certfile=str(tls.cert_file) if tls else None,
        ssl_keyfile=str(tls.key_file) if tls else None,
    )
    return _Server(config, simulator)


class SimulatorServer:
    """The simulator on a free port in a background thread with its own event loop.

    >>> with SimulatorServer(speed=100) as sim:
    ...     httpx.post(sim.base_url + "orders", headers={"api_key": "k"}, json={...})

    ``simulator`` is the live ``Simulator`` (its ``variants``, ``store``); change it through the
    admin API (``/_sim/...``) from other threads where possible. With ``tls`` (a
    :class:`~bridge.simulator.certs.ServerCert`: ``make_local_ca(...).server``) it serves HTTPS
    and WSS only.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: ServerCert | None = None,
        **simulator_options: Any,
    ) -> None:
        self.host = host
        self._port = port
        self.tls = tls
        self.simulator = Simulator(**simulator_options)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:PORT/`` (admin API under ``_sim/``), ``https``
        with ``tls``."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/"

    @property
    def base_url(self) -> str:
        """The API base URL, e.g. ``http://127.0.0.1:PORT/v1/json/``."""
        return f"{self.url}v1/json/"

    def start(self) -> SimulatorServer:
        sock = bind(self.host, self._port)
        self.port = sock.getsockname()[1]
        self._server = make_server(self.simulator, tls=self.tls)
        server = self._server

        def run() -> None:
            try:
                asyncio.run(server.serve(sockets=[sock]))
            except BaseException as exc:  # noqa: BLE001  # start()/stop() re-raise it from here
                self._error = exc
            finally:
                sock.close()

        self._thread = threading.Thread(target=run, name=f"simulator:{self.port}", daemon=True)
        self._thread.start()
        for _ in range(500):
            if server.started or not self._thread.is_alive():
                break
            self._thread.join(0.01)
        if not server.started:
            self.stop()
            raise RuntimeError(f"simulator did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_foreground(
    simulator: Simulator,
    sock: socket.socket,
    *,
    log_level: str,
    access_log: bool,
    backlog: int | None = None,
    tls: ServerCert | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (``pos-bridge simulate``, the benchmark's simulator process).

    uvicorn handles both signals itself (stops serving, ``serve()`` returns), then re-raises the
    signal to the previous handler: that one is made harmless so the exit code is 0.
    """
    server = make_server(simulator, log_level=log_level, access_log=access_log, tls=tls)
    if backlog is not None:
        server.config.backlog = backlog
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
