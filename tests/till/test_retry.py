"""A till tool's retries on a lost Redis, on a real redis-server: which failures may have
reached Redis (and so been carried out), the budget's end with the reason, and a pay whose
``XADD`` got through before Redis was lost for good (outcome unknown, not "nothing sent").
The policy's arithmetic is in ``tests/core/test_backoff.py``; failovers in
``tests/redis_ha/test_sentinel_tills.py``."""

from __future__ import annotations

import anyio
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from bridge.cli import main
from bridge.redis.client import connect
from bridge.redis.keys import Keys
from bridge.redis.server import RedisServer, free_port
from bridge.till.retry import GaveUp, Retrier, reached_redis

pytestmark = pytest.mark.anyio

KEYS = Keys("pos")


async def test_a_refused_connection_did_not_reach_redis() -> None:
    client = connect(f"redis://127.0.0.1:{free_port()}/0", retries=0)
    try:
        with pytest.raises(RedisConnectionError) as caught:
            await client.xadd(KEYS.commands, {"command": "{}"})
    finally:
        await client.aclose()
    assert not reached_redis(caught.value)


async def test_a_connection_lost_while_waiting_may_have_reached_redis() -> None:
    with RedisServer() as server:
        client = connect(server.url, retries=0)
        killer = connect(server.url)
        failed: list[BaseException] = []
        try:

            async def blocked() -> None:
                try:
                    await client.blpop(["nothing"], timeout=30)
                except RedisConnectionError as exc:
                    failed.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(blocked)
                with anyio.fail_after(10):
                    while not await killer.client_kill_filter(_type="normal", skipme=True):  # noqa: ASYNC110 # Redis state
                        await anyio.sleep(0.05)
        finally:
            await client.aclose()
            await killer.aclose()
    assert len(failed) == 1 and reached_redis(failed[0])


async def test_the_budget_ends_with_the_reason_and_the_attempts() -> None:
    client = connect(f"redis://127.0.0.1:{free_port()}/0", retries=0)
    retry = Retrier(client, 0.5)
    try:
        with pytest.raises(GaveUp) as caught:
            await retry.call(lambda: client.ping(), "pinging")
    finally:
        await client.aclose()
    assert caught.value.attempts >= 2 and retry.attempts == caught.value.attempts
    assert not caught.value.maybe_sent
    line = caught.value.reason("redis://127.0.0.1/0", None)
    assert line.startswith("cannot reach Redis at redis://127.0.0.1/0 within 0.5 s (")
    assert "connecting to" in line


def test_pay_lost_after_its_xadd_got_through_says_the_outcome_is_unknown(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The ``XADD`` is carried out, its ``WAIT`` (for a replica this node does not have)
    blocks, Redis dies and stays away: exit 3 (the command may have been sent), not 2."""
    with RedisServer() as server:
        argv = [
            "pay", "--redis-url", server.url, "--terminal", "T1", "--amount", "1.00",
            "--wait-replicas", "1", "--wait-timeout", "30", "--retry-for", "1",
        ]  # fmt: skip
        result: list[int] = []

        async def scenario() -> None:
            watcher = connect(server.url)
            try:
                async with anyio.create_task_group() as tg:

                    async def tool() -> None:
                        result.append(await anyio.to_thread.run_sync(main, argv))

                    tg.start_soon(tool)
                    with anyio.fail_after(30):
                        while not await watcher.xlen(KEYS.commands):  # noqa: ASYNC110 # Redis state
                            await anyio.sleep(0.05)
                    server.kill()
            finally:
                await watcher.aclose()

        anyio.run(scenario)
    out, err = capsys.readouterr()
    assert result == [3], err
    assert out == ""
    assert "may have been sent" in err and "pos-bridge tail --terminal T1" in err
    assert "lost Redis sending the command" in err
