"""A private ``redis-server`` on a free port, for the tests, the demo and the benchmark.

Owned by whoever starts it: stopped (and its temporary directory removed) when they are done,
restartable on the same port so a test can take Redis away and give it back. It can serve TLS
only (``tls``: its port is then a ``--tls-port``), be a replica (``extra_args``:
``--replicaof``) or anything else ``redis-server`` takes on its command line.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from bridge.errors import UserError
from bridge.processes import stop_process
from bridge.sockets import free_port

__all__ = ["RedisServer", "ServerTls", "free_port"]


@dataclass(frozen=True)
class ServerTls:
    """A server's TLS files, and whether it asks clients for a certificate
    (``tls-auth-clients``: ``yes``, ``optional`` or ``no``)."""

    cert_file: str
    key_file: str
    ca_file: str
    auth_clients: str = "optional"

    def args(self, port: int) -> list[str]:
        return [
            "--port", "0", "--tls-port", str(port),
            "--tls-cert-file", self.cert_file, "--tls-key-file", self.key_file,
            "--tls-ca-cert-file", self.ca_file, "--tls-auth-clients", self.auth_clients,
            "--tls-replication", "yes",
        ]  # fmt: skip


def _ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        persistent: bool = False,
        tls: ServerTls | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.tls = tls
        self.extra_args = list(extra_args)
        #: Keep data across restarts (append-only file, fsync always), as production must:
        #: a Redis that forgets on restart forgets published events and payments in flight.
        self.persistent = persistent
        self.port = port or free_port(host)
        self._dir = Path(tempfile.mkdtemp(prefix="pos-bridge-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path:
        return self._dir / "redis.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise UserError(
                "redis-server is not installed (on Debian/Ubuntu: apt-get install redis-server)"
            )
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        ready_before = self.log_path.read_bytes().count(b"Ready to accept connections")
        listen = self.tls.args(self.port) if self.tls else ["--port", str(self.port)]
        self._proc = subprocess.Popen(
            [
                binary,
                *listen,
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
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self._ready(ready_before):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-500:]
                self.stop()
                raise UserError(f"redis-server did not start on port {self.port}: {tail.strip()}")
            time.sleep(0.02)
        return self

    def _ready(self, ready_before: int) -> bool:
        if self.tls is None:
            return _ping(self.host, self.port)
        return self.log_path.read_bytes().count(b"Ready to accept connections") > ready_before

    def kill(self) -> None:
        """``kill -9``: no shutdown, no last write (a host lost)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc)

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
