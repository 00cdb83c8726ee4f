"""The cluster client when no node answers: a lost connection (waited out), not a crash."""

from __future__ import annotations

import asyncio

import anyio
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from bridge.redis.client import RedisTarget, connect
from bridge.redis.outage import is_outage
from bridge.redis.server import RedisServer
from bridge.sockets import free_port


@pytest.mark.anyio
async def test_an_unreachable_cluster_is_an_outage() -> None:
    """redis-py says "Redis Cluster cannot be connected" with an exception that is not a
    RedisError; the daemon must see what it sees of a single server that is down."""
    client = connect(RedisTarget(url=f"redis://127.0.0.1:{free_port()}", cluster=True))
    try:
        with pytest.raises(RedisConnectionError, match="cannot learn") as caught:
            await client.get("{pos}:order:x")
        assert is_outage(caught.value)
    finally:
        await client.aclose()


def test_a_write_on_a_connection_closed_under_it_is_a_lost_connection(
    redis_server: RedisServer,
) -> None:
    """redis-py's cluster client closes every node connection when it re-learns the cluster,
    also one another task is writing on; under uvloop (the daemon's loop) that write raised
    RuntimeError and ended the daemon (the cluster fault run found it). Now it is an outage."""
    client = connect(RedisTarget(url=redis_server.url.rsplit("/", 1)[0], cluster=True))
    guarded = client.nodes_manager.connection_kwargs["connection_class"]
    assert all(n.connection_class is guarded for n in client.nodes_manager.startup_nodes.values())

    async def write_after_close() -> None:
        connection = guarded(host=redis_server.host, port=redis_server.port)
        await connection.connect()
        connection._writer.transport.close()  # what the cluster client's aclose() does
        await asyncio.sleep(0.01)  # the transport is closed now
        with pytest.raises(RedisConnectionError, match="closed while writing") as caught:
            await connection.send_packed_command(connection.pack_command("PING"), False)
        assert is_outage(caught.value)

    anyio.run(write_after_close, backend_options={"use_uvloop": True})
