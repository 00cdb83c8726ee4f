"""Redis's own health, as the daemon sees it: which node is the master, whether the node the
daemon writes to is one, how many replicas follow it, and failovers seen.

With sentinels, every check asks them where the master is (through the client's pool, which
then also moves its idle connections there: a connection still open to a demoted master
would read from a replica). A different answer than last time is a failover: logged once
(``redis.failover``, from and to) and counted (``pos_bridge_redis_failovers_total``). The
single node of a plain ``url`` is named by its address. On a Redis Cluster the master is that of
the deployment's one slot (where all its keys are), as the cluster client knows it: a replica
taking that slot over is a failover.
"""

from __future__ import annotations

import time
from typing import Any, cast
from urllib.parse import urlsplit

import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from bridge import metrics
from bridge.redis.client import BridgeRedis, follow_master

log = structlog.get_logger("bridge.redis")


class RedisHealth:
    """The last check's findings; :meth:`check` raises what the client raised."""

    def __init__(self, client: Redis, key: str = "") -> None:
        self._client = client
        #: On a Redis Cluster, a key of the deployment: its slot's master is the one checked
        #: (every name of a deployment is in that slot: :mod:`bridge.redis.keys`).
        self._key = key
        self.master: str | None = None  # "host:port" of the master (None: not checked yet)
        self.role: str | None = None  # what the node the client writes to says it is
        self.replicas: int | None = None
        self.failovers = 0
        self.last_failover_at: float | None = None
        self._wait_short_seen = 0

    async def check(self) -> None:
        if isinstance(self._client, RedisCluster):
            node, info = await self._cluster_master()
        else:
            node = await self._master_address()
            info = await self._client.info("replication")
        self.role = str(info.get("role"))
        self.replicas = int(info.get("connected_slaves") or 0)
        metrics.REDIS_REPLICAS.set(self.replicas)
        if self.master is None:
            log.info("redis.master", master=node, role=self.role, replicas=self.replicas)
        elif node != self.master:
            self.failovers += 1
            self.last_failover_at = time.time()
            metrics.REDIS_FAILOVERS.inc()
            log.warning("redis.failover", previous=self.master, master=node, role=self.role)
        self.master = node
        self._set_alone()
        self._count_short_waits()

    def _set_alone(self) -> None:
        """Without sentinels, whether the master has a replica is what it says (with them the
        client asks the sentinels itself: ``ReplicaWait``)."""
        client = self._client
        wait = getattr(client, "replica_wait", None)
        if wait is not None and getattr(client, "sentinels", None) is None:
            wait.set_alone(self.replicas == 0 and self.role == "master")

    def _count_short_waits(self) -> None:
        wait = getattr(self._client, "replica_wait", None)
        if wait is not None and wait.short > self._wait_short_seen:
            metrics.REDIS_WAIT_SHORT.inc(wait.short - self._wait_short_seen)
            self._wait_short_seen = wait.short

    async def _master_address(self) -> str:
        client = self._client
        pool: Any = client.connection_pool
        if isinstance(client, BridgeRedis) and client.target.sentinel:
            host, port = await follow_master(client)  # asks the sentinels; see the docstring
            return f"{host}:{port}"
        kwargs = pool.connection_kwargs
        if "path" in kwargs:
            return f"unix:{kwargs['path']}"
        if isinstance(client, BridgeRedis):
            parts = urlsplit(client.target.url)
            return f"{parts.hostname}:{parts.port or 6379}"
        return f"{kwargs.get('host')}:{kwargs.get('port')}"

    async def _cluster_master(self) -> tuple[str, dict[str, Any]]:
        """The master of the deployment's slot, as the cluster client knows it now (it learns
        a failover from the lost connection or a ``MOVED``), and what that master says."""
        cluster = cast(RedisCluster, self._client)
        await cluster.exists(self._key)  # a keyed read: a moved slot is learnt before we ask
        node = cluster.get_node_from_key(self._key)
        if node is None:
            raise RedisConnectionError(f"no cluster node serves the slot of {self._key}")
        info: Any = await cluster.info("replication", target_nodes=node)
        return str(node.name), dict(info)

    def as_dict(self) -> dict[str, Any]:
        wait = getattr(self._client, "replica_wait", None)
        return {
            "master": self.master,
            "role": self.role,
            "replicas": self.replicas,
            "failovers": self.failovers,
            "last_failover_at": self.last_failover_at,
            "wait_short": wait.short if wait is not None else None,
        }
