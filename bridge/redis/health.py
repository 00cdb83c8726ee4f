"""Redis's own health, as the daemon sees it: which node is the master, whether the node the
daemon writes to is one, how many replicas follow it, and failovers seen.

With sentinels, every check asks them where the master is (through the client's pool, which
then also moves its idle connections there: a connection still open to a demoted master
would read from a replica). A different answer than last time is a failover: logged once
(``redis.failover``, from and to) and counted (``pos_bridge_redis_failovers_total``). The
single node of a plain ``url`` is named by its address.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bridge import metrics
from bridge.redis.client import BridgeRedis

log = structlog.get_logger("bridge.redis")


def _promotable(replica: dict[str, Any]) -> bool:
    """A replica the sentinels see up (its ``master-link-status`` in their view lags by up to
    their INFO period, so it is not asked: one that is up but resyncing counts, and commits
    wait for it, the safe side)."""
    return not (
        replica.get("is_sdown") or replica.get("is_odown") or replica.get("is_disconnected")
    )


class RedisHealth:
    """The last check's findings; :meth:`check` raises what the client raised."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self.master: str | None = None  # "host:port" of the master (None: not checked yet)
        self.role: str | None = None  # what the node the client writes to says it is
        self.replicas: int | None = None
        self.failovers = 0
        self.last_failover_at: float | None = None
        self._wait_short_seen = 0

    async def check(self) -> None:
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
        self._set_alone(await self._alone())
        self._count_short_waits()

    async def _alone(self) -> bool:
        """Does the master have no replica a failover could promote (so a ``WAIT`` has
        nothing to wait for)? With sentinels, *they* say so, not the master: while they fail
        it over, the old master has no replica either (it was promoted), and writes it takes
        then are lost when it is demoted, so they must wait in full."""
        client = self._client
        if not (isinstance(client, BridgeRedis) and client.sentinels is not None):
            return self.replicas == 0 and self.role == "master"
        sentinel = client.sentinels.sentinels[0]  # the one that answered discover_master
        name = client.target.master_name
        try:
            # parsed by redis-py's SENTINEL callbacks; execute_command is unannotated there
            master: Any = await sentinel.execute_command("SENTINEL MASTER", name)  # type: ignore[no-untyped-call]
            replicas: Any = await sentinel.execute_command("SENTINEL SLAVES", name)  # type: ignore[no-untyped-call]
        except RedisError:
            return False  # not known: wait in full
        if "failover_in_progress" in str(master.get("flags", "")):
            return False
        return not any(_promotable(r) for r in replicas)

    def _set_alone(self, alone: bool) -> None:
        """Tell the client's ``WAIT`` whether the master has a replica to wait for."""
        wait = getattr(self._client, "replica_wait", None)
        if wait is None or wait.alone == alone:
            return
        wait.alone = alone
        if alone:
            log.warning(
                "redis.no_replica",
                master=self.master,
                note="no replica follows the master: commits are on it alone until one does",
            )
        else:
            log.info("redis.replica_back", master=self.master, replicas=self.replicas)

    def _count_short_waits(self) -> None:
        wait = getattr(self._client, "replica_wait", None)
        if wait is not None and wait.short > self._wait_short_seen:
            metrics.REDIS_WAIT_SHORT.inc(wait.short - self._wait_short_seen)
            self._wait_short_seen = wait.short

    async def _master_address(self) -> str:
        client = self._client
        pool: Any = client.connection_pool
        if isinstance(client, BridgeRedis) and client.target.sentinel:
            host, port = await pool.get_master_address()  # asks the sentinels; see the docstring
            return f"{host}:{port}"
        kwargs = pool.connection_kwargs
        if "path" in kwargs:
            return f"unix:{kwargs['path']}"
        if isinstance(client, BridgeRedis):
            parts = urlsplit(client.target.url)
            return f"{parts.hostname}:{parts.port or 6379}"
        return f"{kwargs.get('host')}:{kwargs.get('port')}"

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
