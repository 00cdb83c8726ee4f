"""The cluster client when no node answers: a lost connection (waited out), not a crash."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from bridge.redis.client import connect
from bridge.redis.outage import is_outage
from bridge.sockets import free_port

pytestmark = pytest.mark.anyio


async def test_an_unreachable_cluster_is_an_outage() -> None:
    """redis-py says "Redis Cluster cannot be connected" with an exception that is not a
    RedisError; the daemon must see what it sees of a single server that is down."""
    client = connect(f"redis://127.0.0.1:{free_port()}", cluster=True)
    try:
        with pytest.raises(RedisConnectionError, match="cannot learn") as caught:
            await client.get("{pos}:order:x")
        assert is_outage(caught.value)
    finally:
        await client.aclose()
