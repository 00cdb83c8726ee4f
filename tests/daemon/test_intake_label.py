"""The commands metric's ``type`` label: the handler's own parse, not a second one of the entry.

A handler returns the type it parsed; the intake labels the command with it as it is (the
entry's JSON is not parsed again just for the label). A handler that returns nothing leaves the
intake to read the type from the entry, as before.
"""

from __future__ import annotations

import json

import anyio
import pytest
from redis.asyncio import Redis

from bridge import metrics
from bridge.daemon.intake import CommandIntake
from bridge.redis.client import connect
from bridge.redis.keys import Keys
from bridge.redis.outage import RedisWaiters

pytestmark = pytest.mark.anyio

KEYS = Keys("label")


def handled(kind: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "pos_bridge_commands_total", {"type": kind, "result": "handled"}
    )
    return value or 0.0


async def _run(redis_url: str, client: Redis, said: str | None, commands: int) -> None:
    done: list[str] = []
    all_done = anyio.Event()

    async def handler(entry_id: str, fields: dict[str, str]) -> str | None:
        done.append(entry_id)
        if len(done) == commands:
            all_done.set()
        return said

    reader = connect(redis_url, decode_responses=False)
    intake = CommandIntake(
        reader, KEYS, "consumer-1", handler, claim_idle=60, waiters=RedisWaiters(lambda _: None)
    )
    await intake.ensure_group()
    for i in range(commands):
        command = {"type": "pay", "command_id": f"c{i}", "terminal_id": "T1", "amount": 1}
        await client.xadd(KEYS.commands, {"command": json.dumps(command)})
    stop = anyio.Event()
    try:
        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(intake.run, stop)
                await all_done.wait()
                stop.set()  # run() returns once the handlers (and their labels) are done
    finally:
        await reader.aclose()


async def test_the_label_is_the_type_the_handler_parsed(redis_server, redis_client: Redis) -> None:
    before_refund, before_pay = handled("refund"), handled("pay")
    # the entries say "pay"; the handler says "refund": the label is the handler's
    await _run(redis_server.url, redis_client, "refund", 3)
    assert handled("refund") - before_refund == 3
    assert handled("pay") == before_pay


async def test_without_a_type_from_the_handler_the_entry_names_it(
    redis_server, redis_client: Redis
) -> None:
    before = handled("pay")
    await _run(redis_server.url, redis_client, None, 2)
    assert handled("pay") - before == 2


def test_a_type_outside_the_known_set_is_read_from_the_entry() -> None:
    entry = {"command": json.dumps({"type": "watch"})}
    assert metrics.command_label("nonsense", entry) == "watch"
    assert metrics.command_label(None, {"command": "{"}) == "invalid"
    assert metrics.command_label("cancel", {"command": "{"}) == "cancel"
