"""The command intake against a real Redis that answers with errors rather than being gone.

Only a lost connection or a timeout is an outage (``bridge.redis.outage.is_outage``). A
``WRONGTYPE`` reply or a script error is an answer: it is logged, never counted as an outage
(which would be waited out forever, with ``/readyz`` saying Redis is unreachable), and the
intake goes on: reading is retried, and a command whose handling keeps meeting it ends dead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from bridge.daemon.intake import CommandIntake
from bridge.redis.client import connect
from bridge.redis.keys import COMMANDS_GROUP, Keys
from bridge.redis.outage import RedisWaiters

pytestmark = pytest.mark.anyio

KEYS = Keys("pos")


async def until(condition: Callable[[], Awaitable[bool]]) -> None:
    with anyio.fail_after(15):
        while True:
            if await condition():
                return
            await anyio.sleep(0.05)


def intake(redis_url: str, handler: Any, gauge: list[int]) -> tuple[CommandIntake, Redis]:
    reader = connect(redis_url, decode_responses=False)
    return CommandIntake(
        reader,
        KEYS,
        "consumer-1",
        handler,
        claim_idle=0.05,
        claim_every=0.1,
        max_deliveries=2,
        waiters=RedisWaiters(gauge.append),
    ), reader


async def test_a_commands_key_of_the_wrong_type_is_logged_not_an_outage(
    redis_server, redis_client: Redis
) -> None:
    await redis_client.set(KEYS.commands, "not a stream")
    handled: list[str] = []

    async def handler(entry_id: str, fields: dict[str, str]) -> None:
        handled.append(fields["command"])

    gauge: list[int] = []
    reader_intake, reader = intake(redis_server.url, handler, gauge)
    stop = anyio.Event()
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader_intake.run, stop)

            async def refused() -> bool:
                return any(e["event"] == "intake.refused" for e in logs)

            await until(refused)
            assert not reader_intake.reading
            # an operator fixes the key: the intake goes on by itself
            await redis_client.delete(KEYS.commands)
            await redis_client.xadd(KEYS.commands, {"command": "after the fix"})

            async def done() -> bool:
                return handled == ["after the fix"]

            await until(done)
            stop.set()
    await reader.aclose()
    refusals = [e for e in logs if e["event"] == "intake.refused"]
    assert "WRONGTYPE" in refusals[0]["error"]
    assert gauge == []  # never counted as waiting out an outage
    assert not any(e["event"].startswith("redis.unreachable") for e in logs)


async def test_a_script_error_while_handling_ends_the_command_dead(
    redis_server, redis_client: Redis
) -> None:
    async def handler(entry_id: str, fields: dict[str, str]) -> None:
        await redis_client.eval("return redis.error_reply('boom')", 0)

    gauge: list[int] = []
    reader_intake, reader = intake(redis_server.url, handler, gauge)
    await reader_intake.ensure_group()
    entry_id = str(await redis_client.xadd(KEYS.commands, {"command": '{"type": "pay"}'}))
    stop = anyio.Event()

    async def dead() -> bool:
        return bool(await redis_client.xlen(KEYS.commands_dead))

    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader_intake.run, stop)
            await until(dead)
            await until(lambda: no_pending(redis_client))
            stop.set()
    await reader.aclose()
    [(_id, letter)] = await redis_client.xrange(KEYS.commands_dead)
    assert letter["entry_id"] == entry_id and "delivered 3 times" in letter["error"]
    refused = [e for e in logs if e["event"] == "command.refused"]
    assert len(refused) == 2 and "boom" in refused[0]["error"]
    assert gauge == []


async def no_pending(client: Redis) -> bool:
    return int((await client.xpending(KEYS.commands, COMMANDS_GROUP))["pending"]) == 0


async def test_a_command_claimed_back_while_its_handler_runs_is_not_started_twice(
    redis_server, redis_client: Redis
) -> None:
    """A handler slower than ``claim_idle`` (a commit waiting out a failover): the periodic
    ``XAUTOCLAIM`` hands its entry back to this very consumer while it runs. It goes on being
    handled once, and the intake does not fail (it took a second limiter token for it)."""
    started: list[str] = []

    async def handler(entry_id: str, fields: dict[str, str]) -> None:
        started.append(entry_id)
        await anyio.sleep(2.5)  # past claim_idle, and longer than a blocking read (1 s)

    gauge: list[int] = []
    reader_intake, reader = intake(redis_server.url, handler, gauge)
    stop = anyio.Event()
    entry = await redis_client.xadd(KEYS.commands, {"command": "slow"})
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader_intake.run, stop)

            async def acknowledged() -> bool:
                if not started:  # the group is made when the intake starts reading
                    return False
                pending = await redis_client.xpending(KEYS.commands, COMMANDS_GROUP)
                return bool(pending["pending"] == 0)

            await until(acknowledged)
            stop.set()
    await reader.aclose()
    assert started == [entry]
    assert any(e["event"] == "intake.claimed" for e in logs)  # it was claimed back meanwhile
