"""A private Redis Sentinel deployment on free ports, for the tests and the failover fault run:
a master, its replicas and three sentinels (``redis-server --sentinel``, which is all Debian's
``redis-sentinel`` package runs), each its own process, stopped and removed by its owner.

Failing over is real: :meth:`SentinelDeployment.failover` asks a sentinel (``SENTINEL
FAILOVER``), :meth:`SentinelDeployment.kill_master` sends ``kill -9`` to the master's process.
The waits poll Redis's own state (what the sentinels say, the nodes' ``INFO replication``),
bounded by a timeout that only turns a hang into an error.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from bridge.errors import UserError
from bridge.processes import stop_process
from bridge.redis.server import RedisServer, free_port
from bridge.redis.target import RedisTarget

__all__ = ["SentinelDeployment", "SentinelProcess"]

MASTER_NAME = "pos"


def _until(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)


def _answers(host: str, port: int) -> redis.Redis:
    return redis.Redis(host=host, port=port, socket_timeout=2.0, decode_responses=True)


class SentinelProcess:
    """One ``redis-server --sentinel`` with a config file of its own (it rewrites it)."""

    def __init__(self, master: tuple[str, int], *, quorum: int, down_after_ms: int) -> None:
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self._dir = Path(tempfile.mkdtemp(prefix="pos-bridge-sentinel-"))
        self._conf = self._dir / "sentinel.conf"
        self._conf.write_text(
            f"port {self.port}\nbind {self.host}\ndir {self._dir}\n"
            f"sentinel monitor {MASTER_NAME} {master[0]} {master[1]} {quorum}\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\n"
            f"sentinel failover-timeout {MASTER_NAME} {max(2000, 2 * down_after_ms)}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise UserError("redis-server is not installed (apt-get install redis-server)")
        with open(self._dir / "sentinel.log", "ab") as log:
            self._proc = subprocess.Popen(
                [binary, str(self._conf), "--sentinel"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def client(self) -> redis.Redis:
        return _answers(self.host, self.port)

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc)
        shutil.rmtree(self._dir, ignore_errors=True)


class SentinelDeployment:
    """A master, ``replicas`` replicas and ``sentinels`` sentinels watching it as ``pos``."""

    def __init__(self, *, replicas: int = 1, sentinels: int = 3, down_after_ms: int = 1000) -> None:
        self.master_name = MASTER_NAME
        self.nodes: list[RedisServer] = [RedisServer()]
        first = self.nodes[0]
        for _ in range(replicas):
            self.nodes.append(RedisServer(extra_args=["--replicaof", first.host, str(first.port)]))
        self.sentinels = [
            SentinelProcess(
                (first.host, first.port), quorum=sentinels // 2 + 1, down_after_ms=down_after_ms
            )
            for _ in range(sentinels)
        ]

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> SentinelDeployment:
        try:
            for node in self.nodes:
                node.start()
            for s in self.sentinels:
                s.start()
            _until(self._settled, "sentinels to see the replicas and each other", timeout)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for s in self.sentinels:
            s.close()
        for node in self.nodes:
            node.close()

    def __enter__(self) -> SentinelDeployment:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- what the bridge is given ---------------------------------------------------------------

    @property
    def sentinel_addresses(self) -> list[str]:
        return [f"{s.host}:{s.port}" for s in self.sentinels]

    def redis_section(self, **extra: Any) -> dict[str, Any]:
        """The ``[redis]`` table of a bridge that uses this deployment."""
        return {
            "url": "redis://127.0.0.1:6379/0",  # with sentinels only scheme/user/db count
            "sentinels": self.sentinel_addresses,
            "master_name": self.master_name,
            **extra,
        }

    def target(self, **extra: Any) -> RedisTarget:
        return RedisTarget(
            url="redis://127.0.0.1:6379/0",
            sentinels=tuple((s.host, s.port) for s in self.sentinels),
            master_name=self.master_name,
            **extra,
        )

    # -- state ----------------------------------------------------------------------------------

    def _sentinel_view(self, s: SentinelProcess) -> dict[str, Any] | None:
        try:
            with s.client() as c:
                view: dict[str, Any] = c.sentinel_master(self.master_name)
                return view
        except (redis.RedisError, OSError):
            return None

    def master_port(self) -> int | None:
        """Where the sentinels say the master is (the first that answers)."""
        for s in self.sentinels:
            view = self._sentinel_view(s)
            if view is not None:
                return int(view["port"])
        return None

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def _role(self, node: RedisServer) -> str | None:
        if not node.running:
            return None
        try:
            with _answers(node.host, node.port) as c:
                return str(c.info("replication")["role"])
        except (redis.RedisError, OSError):
            return None

    def _settled(self) -> bool:
        """Every sentinel agrees on a master that says it is one, sees every other sentinel
        and every running replica in sync with it (``master_link_status:up``)."""
        views = [self._sentinel_view(s) for s in self.sentinels]
        if any(v is None for v in views):
            return False
        ports = {int(v["port"]) for v in views if v is not None}
        if len(ports) != 1:
            return False
        master = self.node(ports.pop())
        replicas = [n for n in self.nodes if n is not master and n.running]
        for v in views:
            assert v is not None
            if v["num-other-sentinels"] < len(self.sentinels) - 1:
                return False
            if v["num-slaves"] < len(replicas) or v.get("is_sdown") or v.get("is_odown"):
                return False
        if self._role(master) != "master":
            return False
        return all(self._link_up(n) for n in replicas)

    def _link_up(self, node: RedisServer) -> bool:
        try:
            with _answers(node.host, node.port) as c:
                info = c.info("replication")
        except (redis.RedisError, OSError):
            return False
        return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")

    # -- faults ---------------------------------------------------------------------------------

    def failover(self, timeout: float = 60.0) -> int:
        """``SENTINEL FAILOVER``: a replica is promoted, the master demoted. Returns once the
        deployment settled on the new master; its port."""
        before = self.master_port()
        with self.sentinels[0].client() as c:
            c.execute_command("SENTINEL", "FAILOVER", self.master_name)
        _until(lambda: self._moved_from(before), "the failover", timeout)
        _until(self._settled, "the replicas to follow the new master", timeout)
        port = self.master_port()
        assert port is not None
        return port

    def kill_master(self, timeout: float = 60.0) -> tuple[int, int]:
        """``kill -9`` of the master: the sentinels notice it down and promote a replica.
        Returns (the killed port, the new master's port); the killed node stays down."""
        killed = self.master_port()
        assert killed is not None
        self.node(killed).kill()
        return killed, self.promoted_after(killed, timeout)

    def promoted_after(self, killed: int, timeout: float = 60.0) -> int:
        """Wait until the sentinels name a master other than ``killed`` and it says it is one
        (after a ``kill`` of the master's node, e.g. while a client is already retrying).
        Returns its port."""
        _until(lambda: self._moved_from(killed), "the sentinels to fail the master over", timeout)
        port = self.master_port()
        assert port is not None
        _until(lambda: self._role(self.node(port)) == "master", "the promotion", timeout)
        return port

    def revive(self, port: int, timeout: float = 60.0) -> None:
        """Start a killed node again (empty: it has no persistence) and wait until it is a
        replica of the current master in sync, as the sentinels make it."""
        node = self.node(port)
        node.start()
        _until(self._settled, "the revived node to rejoin as a replica", timeout)

    def _moved_from(self, port: int | None) -> bool:
        now = self.master_port()
        return now is not None and now != port and self._role(self.node(now)) == "master"
