"""A private Redis Cluster (``redis-server --cluster-enabled yes``) on free ports, for the tests.

Masters and replicas are real ``redis-server`` processes made into a cluster by ``redis-cli
--cluster create``; :meth:`RedisClusterServer.kill` ends one with SIGKILL, as a lost host, and
:meth:`RedisClusterServer.wait_failover` waits until a replica has taken its slots over.
Owned by whoever starts it: every node is stopped and its directory removed on close.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from bridge.errors import UserError
from bridge.processes import stop_process

#: Redis Cluster's bus listens on the node's port + 10000.
BUS_OFFSET = 10000


def _free_cluster_port(host: str, taken: set[int]) -> int:
    """A port that is free, and whose bus port (+10000) is free too."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port + BUS_OFFSET > 65535 or port in taken or port + BUS_OFFSET in taken:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bus:
                bus.bind((host, port + BUS_OFFSET))
        except OSError:
            continue
        return port
    raise UserError("no free port pair (port, port + 10000) for a cluster node")


def _command(client: redis.Redis, *args: object) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated


@dataclass
class _Node:
    port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class RedisClusterServer:
    def __init__(
        self,
        masters: int = 3,
        replicas_per_master: int = 1,
        host: str = "127.0.0.1",
        *,
        node_timeout_ms: int = 2000,
    ) -> None:
        self.host = host
        self.masters = masters
        self.replicas_per_master = replicas_per_master
        #: how long a master may be unreachable before its replicas fail it over
        self.node_timeout_ms = node_timeout_ms
        self._dir = Path(tempfile.mkdtemp(prefix="pos-bridge-cluster-"))
        taken: set[int] = set()
        self.nodes: list[_Node] = []
        for i in range(masters * (1 + replicas_per_master)):
            port = _free_cluster_port(host, taken)
            taken.update((port, port + BUS_OFFSET))
            directory = self._dir / f"node-{i}"
            directory.mkdir()
            self.nodes.append(_Node(port, directory))

    @property
    def url(self) -> str:
        """A seed node's URL: the first running node (any will do: the client learns the
        others from it, but only a node that answers can tell it)."""
        node = next((n for n in self.nodes if n.running), self.nodes[0])
        return f"redis://{self.host}:{node.port}"

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def _client(self, port: int) -> redis.Redis:
        return redis.Redis(host=self.host, port=port, decode_responses=True, socket_timeout=2.0)

    def _ping(self, port: int) -> bool:
        return bool(self._client(port).ping())

    def _start_node(self, node: _Node) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise UserError(
                "redis-server is not installed (on Debian/Ubuntu: apt-get install redis-server)"
            )
        log = open(node.directory / "redis.log", "ab")  # noqa: SIM115 - lives as long as the process
        node.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(node.port),
                "--bind",
                self.host,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(node.directory),
                "--daemonize",
                "no",
            ],  # fmt: skip
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def _wait(self, what: str, ready: Callable[[], object], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise UserError(f"the Redis Cluster did not {what} within {timeout:g} s")
            time.sleep(0.05)

    def start(self, timeout: float = 60.0) -> RedisClusterServer:
        for node in self.nodes:
            self._start_node(node)
        for node in self.nodes:
            self._wait(f"start node {node.port}", partial(self._ping, node.port), 10)
        binary = shutil.which("redis-cli")
        if binary is None:
            raise UserError("redis-cli is not installed (it comes with redis-server)")
        created = subprocess.run(
            [
                binary,
                "--cluster",
                "create",
                *(f"{self.host}:{p}" for p in self.ports),
                "--cluster-replicas",
                str(self.replicas_per_master),
                "--cluster-yes",
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if created.returncode != 0:
            self.close()
            raise UserError(f"redis-cli --cluster create failed: {created.stdout[-800:]}")
        self._wait("become ready", lambda: self._healthy(replicated=True), timeout)
        return self

    def _healthy(self, *, replicated: bool = False) -> bool:
        """Every running node says the cluster is ok with every slot served, the masters are
        as many as asked and (``replicated``) each has its replicas connected."""
        live = [n for n in self.nodes if n.running]
        for node in live:
            info = self._client(node.port).cluster("info")
            if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != 16384:
                return False
        roles = [self._client(n.port).role() for n in live]
        masters = [role for role in roles if role[0] == "master"]
        if len(masters) != self.masters:
            return False
        return not replicated or all(len(m[2]) == self.replicas_per_master for m in masters)

    def master_of(self, key: str) -> int:
        """The port of the master that serves ``key``'s slot (as the running nodes say)."""
        for node in self.nodes:
            if not node.running:
                continue
            client = self._client(node.port)
            slot = int(client.cluster("keyslot", key))
            for start, end, master, *_replicas in client.cluster("slots"):
                if int(start) <= slot <= int(end):
                    return int(master[1])
        raise UserError(f"no running node serves the slot of {key!r}")

    def replicas_of(self, port: int) -> list[int]:
        """The ports of ``port``'s replicas."""
        role = self._client(port).role()  # ["master", offset, [[ip, port, offset], ...]]
        return [int(replica[1]) for replica in role[2]]

    def move_slot(self, key: str, to: int) -> None:
        """Move ``key``'s slot, with its keys, to the master on port ``to``: what an operator's
        resharding does (``CLUSTER SETSLOT`` IMPORTING/MIGRATING, ``MIGRATE``, ``SETSLOT
        NODE``), one slot at a time."""
        source = self._client(self.master_of(key))
        target = self._client(to)
        slot = int(source.cluster("keyslot", key))
        source_id, target_id = source.cluster("myid"), target.cluster("myid")
        _command(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        _command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := _command(source, "CLUSTER", "GETKEYSINSLOT", slot, 100):
            _command(source, "MIGRATE", self.host, to, "", 0, 5000, "KEYS", *keys)
        for node in self.nodes:
            if node.running and self._client(node.port).role()[0] == "master":
                _command(self._client(node.port), "CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``: a lost host (nothing flushed, no goodbye)."""
        node = next(n for n in self.nodes if n.port == port)
        if node.proc is not None:
            node.proc.kill()
            node.proc.wait()

    def restart(self, port: int, timeout: float = 60.0) -> None:
        """Start a killed node again: it rejoins the cluster (its ``nodes.conf`` remembers it)
        as a replica of the master that took its slots over. Returns once every master has
        its replicas again."""
        node = next(n for n in self.nodes if n.port == port)
        if node.running:
            return
        self._start_node(node)
        self._wait(f"start node {port} again", lambda: self._healthy(replicated=True), timeout)

    def wait_failover(self, key: str, dead: int, timeout: float = 60.0) -> int:
        """Wait until ``key``'s slot is served by a master other than ``dead`` and every
        running node says the cluster is ok. Returns the new master's port."""
        self._wait(
            f"fail over from {dead}",
            lambda: self.master_of(key) != dead and self._healthy(),
            timeout,
        )
        return self.master_of(key)

    def stop(self) -> None:
        for node in self.nodes:
            proc, node.proc = node.proc, None
            if proc is not None:
                stop_process(proc)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisClusterServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
