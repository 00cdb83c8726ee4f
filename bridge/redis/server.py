"""A private ``redis-server`` on a free port, for the tests, the demo and the benchmark.

Owned by whoever starts it: stopped (and its temporary directory removed) when they are done,
restartable on the same port so a test can take Redis away and give it back.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from bridge.errors import UserError
from bridge.sockets import free_port

__all__ = ["RedisServer", "free_port"]


def _ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", *, persistent: bool = False
    ) -> None:
        self.host = host
        #: Keep data across restarts (append-only file, fsync always), as production must:
        #: a Redis that forgets on restart forgets published events and payments in flight.
        self.persistent = persistent
        self.port = port or free_port(host)
        self._dir = Path(tempfile.mkdtemp(prefix="pos-bridge-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise UserError(
                "redis-server is not installed (on Debian/Ubuntu: apt-get install redis-server)"
            )
        log = open(self._dir / "redis.log", "ab")  # noqa: SIM115 - lives as long as the process
        self._proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                self.host,
                "--save",
                "",
                "--appendonly",
                "yes" if self.persistent else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self._dir),
                "--daemonize",
                "no",
                "--maxclients",
                "20000",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not _ping(self.host, self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = (self._dir / "redis.log").read_text(errors="replace")[-500:]
                self.stop()
                raise UserError(f"redis-server did not start on port {self.port}: {tail.strip()}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
