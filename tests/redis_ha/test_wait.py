"""What a commit waits for (``[redis] wait_replicas``) and Redis's health as the probe sees it,
on real nodes: a master with a replica, and one without."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import anyio
import pytest

from bridge.core.state import order_created
from bridge.daemon.ops import RedisProbe
from bridge.redis.client import BridgeRedis, RedisTarget, connect
from bridge.redis.keys import Keys
from bridge.redis.publisher import EventStore
from bridge.redis.replicas import ALONE_TRUSTED_AFTER
from bridge.redis.server import RedisServer

pytestmark = pytest.mark.anyio

SCRIPT = "redis.call('INCR', KEYS[1]) return redis.call('GET', KEYS[1])"


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    with RedisServer() as master:
        with RedisServer(extra_args=["--replicaof", master.host, str(master.port)]) as replica:
            yield master, replica


@pytest.fixture
async def alone(redis_server: RedisServer) -> AsyncIterator[BridgeRedis]:
    client = connect(RedisTarget(url=redis_server.url, wait_replicas=1, wait_timeout=0.2))
    try:
        yield client
    finally:
        await client.aclose()


async def test_commits_wait_for_the_replica(pair: tuple[RedisServer, RedisServer]) -> None:
    master, replica = pair
    client = connect(RedisTarget(url=master.url, wait_replicas=1, wait_timeout=30))
    reader = connect(replica.url)
    try:
        script = client.register_script(SCRIPT)
        for n in range(1, 6):
            assert int(await script(keys=["waited"])) == n
            # WAIT returned: the replica holds it already, no polling needed
            assert await reader.get("waited") == str(n)
        await client.xadd("waited:stream", {"f": "v"})
        assert await reader.xlen("waited:stream") == 1
        async with client.pipeline(transaction=False) as pipe:
            pipe.evalsha(script.sha, 1, "waited")
            pipe.get("waited")
            assert await pipe.execute() == ["6", "6"]  # WAIT's answer is not the caller's
        assert await reader.get("waited") == "6"
        assert client.replica_wait is not None and client.replica_wait.short == 0
    finally:
        await client.aclose()
        await reader.aclose()


async def test_no_replica_is_counted_not_failed(alone: BridgeRedis) -> None:
    wait = alone.replica_wait
    assert wait is not None
    script = alone.register_script(SCRIPT)
    await alone.script_load(SCRIPT)  # else the first call is two (NOSCRIPT, then again)
    await alone.delete("k")
    assert await script(keys=["k"]) == "1"  # written all the same
    assert wait.short == 1
    await alone.get("k")
    await alone.set("plain", "1")  # not a commit: no WAIT
    assert wait.short == 1
    await alone.xadd("s", {"f": "v"})
    assert wait.short == 2
    assert await alone.set("marker", "1", nx=True, ex=60)  # a once-only marker is a commit
    assert wait.short == 3
    assert await alone.set("NX", "NX", ex=60)  # a key or value called NX is not the flag
    assert wait.short == 3


async def test_alone_the_master_waits_briefly(redis_server: RedisServer) -> None:
    """The probe finds no replica at all: WAITs are bounded short (nothing to wait for)."""
    client = connect(RedisTarget(url=redis_server.url, wait_replicas=1, wait_timeout=600))
    try:
        wait = client.replica_wait
        assert wait is not None and wait.current_timeout_ms == 600_000
        probe = RedisProbe(client, "pos:commands")
        assert await probe.check()
        # seen alone only now: a failover may still promote a replica the sentinels did not
        # count yet, so WAITs stay full until the view is ALONE_TRUSTED_AFTER old
        assert wait.alone and wait.current_timeout_ms == 600_000
        wait.alone_since -= ALONE_TRUSTED_AFTER  # that much later (Redis plays no part in it)
        assert wait.current_timeout_ms == 50
        await client.xadd("alone", {"f": "v"})  # returns: not after 600 s
        assert wait.short == 1
    finally:
        await client.aclose()


async def test_no_wait_by_default(redis_client: BridgeRedis) -> None:
    assert redis_client.replica_wait is None


async def test_probe_names_the_master_and_its_replicas(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = pair
    for server, role, replicas in ((master, "master", 1), (replica, "slave", 0)):
        client = connect(server.url)
        try:
            probe = RedisProbe(client, "pos:commands")
            assert await probe.check()
            health = probe.health.as_dict()
            assert client.replica_wait is None  # no WAITs asked for: nothing to tell
            assert health["master"] == f"{server.host}:{server.port}"
            assert (health["role"], health["replicas"], health["failovers"]) == (
                role,
                replicas,
                0,
            )
        finally:
            await client.aclose()


async def test_reads_outlast_the_wait(redis_server: RedisServer) -> None:
    """A WAIT answers after up to wait_timeout: the socket must not time out first (that
    would send the commit again, and a retried commit that changes nothing waits for nothing)."""
    client = connect(RedisTarget(url=redis_server.url, wait_replicas=1, wait_timeout=30))
    plain = connect(redis_server.url)
    try:
        assert client.connection_pool.connection_kwargs["socket_timeout"] >= 35
        assert plain.connection_pool.connection_kwargs["socket_timeout"] == 10.0
    finally:
        await client.aclose()
        await plain.aclose()


async def test_transitions_wait_for_the_replica(pair: tuple[RedisServer, RedisServer]) -> None:
    """The transition batcher writes its batches on a pooled connection of its own (no
    pipeline): with wait_replicas it must still end each batch with WAIT, or a transition the
    bridge acknowledged could be lost in a failover."""
    master, replica = pair
    client = connect(RedisTarget(url=master.url, wait_replicas=1, wait_timeout=30))
    reader = connect(replica.url)
    keys = Keys("waitbatch")
    events = EventStore(client, keys, stream_maxlen=100, order_ttl=3600)
    try:
        before = await client.info("commandstats")

        async def create(n: int) -> None:
            await events.record(
                f"o-{n}",
                lambda _state: order_created(
                    order_id=f"o-{n}",
                    terminal_id=f"T{n}",
                    command_id=f"c-{n}",
                    amount=100,
                    currency="EUR",
                    session_id="s",
                    now=datetime.now(UTC),
                ),
            )
            # WAIT returned: the replica holds the order key already, no polling needed
            assert await reader.get(keys.order(f"o-{n}")) is not None

        async with anyio.create_task_group() as tg:
            for n in range(6):
                tg.start_soon(create, n)
        after = await client.info("commandstats")
        waits = after["cmdstat_wait"]["calls"] - before.get("cmdstat_wait", {}).get("calls", 0)
        assert waits >= 1
    finally:
        await client.aclose()
        await reader.aclose()
