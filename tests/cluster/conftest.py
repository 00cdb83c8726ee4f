"""A private 3-master, 3-replica Redis Cluster on free ports, and the simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from bridge.redis.client import RedisTarget, connect
from bridge.redis.cluster_server import RedisClusterServer
from bridge.simulator.server import SimulatorServer


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisClusterServer]:
    """One cluster for a module's tests; a test that kills a node uses its own module."""
    with RedisClusterServer(masters=3, replicas_per_master=1) as cluster:
        yield cluster


@pytest.fixture
async def cluster_client(redis_cluster: RedisClusterServer) -> AsyncIterator[Redis]:
    client = connect(RedisTarget(url=redis_cluster.url, cluster=True))
    await client.flushall()  # every master
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(speed=10) as sim:
        yield sim
