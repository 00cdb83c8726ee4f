"""Waiting out a Redis outage: only an unreachable Redis is waited for, and the count of
waiters is released however a waiter ends. Against a real redis-server (and a port where none
listens)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import anyio.abc
import pytest
from redis.asyncio import Redis
from redis.exceptions import ClusterError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from structlog.testing import capture_logs

from bridge.redis.client import connect
from bridge.redis.outage import RedisWaiters, is_outage
from bridge.redis.server import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
async def unreachable() -> AsyncIterator[Redis]:
    """A client of a port where nothing listens: every command is a ConnectionError."""
    client = connect(f"redis://127.0.0.1:{free_port()}/0")
    try:
        yield client
    finally:
        await client.aclose()


async def test_wrongtype_and_script_errors_are_not_outages(redis_client: Redis) -> None:
    gauge: list[int] = []
    waiters = RedisWaiters(gauge.append)
    await redis_client.set("outage:str", "x")
    with capture_logs() as logs, anyio.fail_after(10):  # a retried one would never end
        with pytest.raises(ResponseError, match="WRONGTYPE") as wrongtype:
            await waiters.call(lambda: redis_client.lpush("outage:str", "y"), what="test")
        with pytest.raises(ResponseError) as script:
            await waiters.call(
                lambda: redis_client.eval("return redis.error_reply('boom')", 0), what="test"
            )
    assert not is_outage(wrongtype.value) and not is_outage(script.value)
    assert gauge == [] and waiters.waiting == 0
    assert [e["event"] for e in logs] == []  # not logged as an outage


async def test_a_cancelled_waiter_releases_the_gauge(
    redis_client: Redis, unreachable: Redis
) -> None:
    gauge: list[int] = []
    entered = anyio.Event()

    def on_change(waiting: int) -> None:
        gauge.append(waiting)
        if waiting:
            entered.set()

    waiters = RedisWaiters(on_change)
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:

            async def wait_forever() -> None:
                await waiters.call(unreachable.ping, what="a session that loses its lease")

            tg.start_soon(wait_forever)
            with anyio.fail_after(10):
                await entered.wait()
            tg.cancel_scope.cancel()
        assert waiters.waiting == 0 and gauge == [1, 0]
        # Redis is still unreachable as far as anyone knows: the end is not claimed yet ...
        assert [e["event"] for e in logs] == ["redis.unreachable"]
        # ... until a call gets through.
        assert await waiters.call(redis_client.ping, what="the next call") is True
    assert [e["event"] for e in logs] == ["redis.unreachable", "redis.reachable"]


async def test_a_waiter_that_gets_through_ends_the_outage(redis_client: Redis) -> None:
    gauge: list[int] = []
    waiters = RedisWaiters(gauge.append)
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            # what redis-py raises for a refused connection, from a real one
            probe = connect(f"redis://127.0.0.1:{free_port()}/0")
            try:
                await probe.ping()
            finally:
                await probe.aclose()
        return str(await redis_client.ping())

    with capture_logs() as logs:
        assert await waiters.call(flaky, what="test") == "True"
    assert attempts == 3 and gauge == [1, 0]
    assert [e["event"] for e in logs] == ["redis.unreachable", "redis.reachable"]


async def test_a_silent_redis_is_an_outage_after_one_timeout_not_retried() -> None:
    """A server that takes connections and never answers (a black hole's effect on a read):
    the command fails once its reply has waited the socket timeout, on the one connection it
    had; a timeout is not retried on new connections (each would wait again: README, "When
    Redis is down"). A refused connection still is (the Redis restart case)."""
    accepted: list[anyio.abc.SocketStream] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def hold(stream: anyio.abc.SocketStream) -> None:
        accepted.append(stream)  # read nothing, answer nothing
        await anyio.sleep_forever()

    client = connect(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, hold)
            with pytest.raises(RedisTimeoutError) as silent, anyio.fail_after(20):
                await client.set("outage:silent", "x")
            tg.cancel_scope.cancel()
    finally:
        await client.aclose()
        await listener.aclose()
    assert is_outage(silent.value)
    assert len(accepted) == 1


async def test_a_refused_connection_is_retried_before_it_is_an_outage(
    unreachable: Redis,
) -> None:
    retry = unreachable.connection_pool.connection_kwargs["retry"]
    assert retry.get_retries() == 3  # a Redis restart: a new connection, a moment later
    with pytest.raises(RedisConnectionError) as refused, anyio.fail_after(20):
        await unreachable.get("outage:refused")
    assert is_outage(refused.value)


def test_a_cluster_client_out_of_redirections_is_an_outage() -> None:
    """redis-py's cluster client gives up with ``ClusterError("TTL exhausted.")`` after 16
    ``MOVED``/``ASK``/``TRYAGAIN`` in a row, as while a slot migrates: retried, not refused."""
    assert is_outage(ClusterError("TTL exhausted."))
    assert not is_outage(ResponseError("WRONGTYPE Operation against a key"))
