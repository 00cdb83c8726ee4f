"""A cluster commit waits for a replica on the connection that took it (``wait_replicas``).

``WAIT`` answers for the writes of the connection it is sent on: it must go to the master of
the deployment's slot, on the connection the commit went to, never to another node. Its own
module, so its own cluster: a test stops (SIGSTOP) a replica for a moment."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
import redis

from bridge.redis.client import RedisTarget, connect
from bridge.redis.cluster_server import RedisClusterServer

pytestmark = pytest.mark.anyio

TAG = "{pos}"


def waits(cluster: RedisClusterServer, port: int) -> int:
    """``WAIT`` calls the node on ``port`` has served."""
    stats = redis.Redis(host=cluster.host, port=port).info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))


def on_replica(cluster: RedisClusterServer, port: int, key: str) -> str | None:
    """``key`` as the replica on ``port`` holds it (READONLY: a replica answers reads)."""
    replica = redis.Redis(host=cluster.host, port=port, decode_responses=True)
    replica.execute_command("READONLY")  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
    value = replica.get(key)
    return value if isinstance(value, str) else None


@pytest.fixture
def stopped() -> Iterator[list[int]]:
    """PIDs (of this test's cluster) to SIGCONT at the end, whatever happens."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        os.kill(pid, signal.SIGCONT)


async def test_every_commit_waits_on_the_slot_master(redis_cluster: RedisClusterServer) -> None:
    master = redis_cluster.master_of(TAG)
    (replica,) = redis_cluster.replicas_of(master)
    before = {p: waits(redis_cluster, p) for p in redis_cluster.ports}
    client = connect(RedisTarget(url=redis_cluster.url, cluster=True, wait_replicas=1))
    try:
        # a once-only marker, a script, a stream append: each followed by one WAIT
        assert await client.set(f"{TAG}:once:1", "x", nx=True, ex=60)
        script = "redis.call('SET', KEYS[1], ARGV[1]) return 1"
        assert await client.eval(script, 1, f"{TAG}:eval", "y") == 1
        await client.xadd(f"{TAG}:commands", {"command": "{}"})
        # a pipeline of commits (the transition batcher's and the lease renewal's shape)
        # and a read: one WAIT after the batch, on the connection that sent it
        async with client.pipeline(transaction=False) as pipe:
            pipe.execute_command("EVAL", script, 1, f"{TAG}:p1", "a")
            pipe.execute_command("EVAL", script, 1, f"{TAG}:p2", "b")
            pipe.get(f"{TAG}:eval")
            assert await pipe.execute() == [1, 1, "y"]
        # what returned is on the replica already (the WAIT answered 1)
        for key, value in ((f"{TAG}:once:1", "x"), (f"{TAG}:eval", "y"), (f"{TAG}:p2", "b")):
            assert on_replica(redis_cluster, replica, key) == value
        # a read and a plain write wait for nothing
        await client.get(f"{TAG}:eval")
        await client.set(f"{TAG}:plain", "z")
        assert client.replica_wait.short == 0
    finally:
        await client.aclose()
    # one WAIT per commit on the slot's master (a command a node redirected, with MOVED,
    # before the client knew the slots may have sent one there too: it covered no write)
    assert waits(redis_cluster, master) - before[master] == 4


async def test_a_wait_too_few_replicas_answer_is_counted_not_failed(
    redis_cluster: RedisClusterServer, stopped: list[int]
) -> None:
    """As with Sentinel: the write is on the master, the WAIT's timeout passes, the commit
    returns and the short WAIT is counted (the health probe turns it into the metric)."""
    master = redis_cluster.master_of(TAG)
    (replica,) = redis_cluster.replicas_of(master)
    proc = next(n.proc for n in redis_cluster.nodes if n.port == replica)
    assert proc is not None
    client = connect(
        RedisTarget(url=redis_cluster.url, cluster=True, wait_replicas=1, wait_timeout=0.3)
    )
    try:
        await client.get(f"{TAG}:x")  # learn the cluster while every node answers
        os.kill(proc.pid, signal.SIGSTOP)  # it acknowledges nothing now
        stopped.append(proc.pid)
        assert await client.set(f"{TAG}:once:short", "1", nx=True, ex=60)
        assert client.replica_wait.short == 1
        assert await client.get(f"{TAG}:once:short") == "1"
    finally:
        await client.aclose()
