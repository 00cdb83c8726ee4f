"""The cluster client when no node answers: a lost connection (waited out), not a crash."""

from __future__ import annotations

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
    RuntimeError and ended the daemon (the cluster fault run found it). Now it is an outage.

    No timing: the write comes once the transport's close has run to its end (``wait_closed``:
    the protocol was told the connection is lost, uvloop closed the handle), not after a sleep
    that a loaded machine may outlast. Which layer names the lost connection depends on the
    redis-py release (>= 8.2 checks ``is_closing()`` itself and raises "closed by the server
    before write"; older ones let uvloop's RuntimeError out, which the guard turns into "closed
    while writing"), so the test asks what the daemon relies on: a connection error, an outage."""
    client = connect(RedisTarget(url=redis_server.url.rsplit("/", 1)[0], cluster=True))
    guarded = client.nodes_manager.connection_kwargs["connection_class"]
    assert all(n.connection_class is guarded for n in client.nodes_manager.startup_nodes.values())

    async def write_after_close() -> None:
        connection = guarded(host=redis_server.host, port=redis_server.port)
        await connection.connect()
        writer = connection._writer
        writer.transport.close()  # what the cluster client's aclose() does
        await writer.wait_closed()  # the close ran to its end: the handle is closed
        with pytest.raises(RedisConnectionError, match="closed") as caught:
            await connection.send_packed_command(connection.pack_command("PING"), False)
        assert is_outage(caught.value)

    anyio.run(write_after_close, backend_options={"use_uvloop": True})
