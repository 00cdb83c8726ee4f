"""A payment end to end: till -> Redis -> daemon -> simulator (HTTP + SSE) -> Redis -> till."""

from __future__ import annotations

import json

import anyio
import pytest
from redis.asyncio import Redis

from helpers.harness import Till, bridge_config, running_bridge, statuses

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("terminal", "expected"),
    [
        ("SIM-APPROVE-01", ["order.created", "initialized", "completed"]),
        ("SIM-SOFTDECLINE-APPROVE-01", ["order.created", "initialized", "declined", "completed"]),
        ("SIM-SOFTDECLINE-CANCEL-01", ["order.created", "initialized", "declined", "cancelled"]),
        ("SIM-CUSTOMER-CANCEL-01", ["order.created", "initialized", "cancelled"]),
        ("SIM-RETRY-01", ["order.created", "initialized", "declined", "initialized", "completed"]),
        ("SIM-DECLINE-01", ["order.created", "initialized", "declined", "cancelled"]),
        ("SIM-TIMEOUT-01", ["order.created", "initialized", "cancelled"]),
        ("SIM-DROP-01", ["order.created", "initialized", "completed"]),
    ],
)
async def test_every_scenario_reaches_its_final_once(
    redis_server, redis_client: Redis, simulator, terminal: str, expected: list[str]
) -> None:
    config = bridge_config(redis_server.url, simulator.base_url)
    till = Till(redis_client)
    async with redis_client.pubsub() as pubsub:
        await pubsub.subscribe(till.keys.terminal_channel(terminal))
        assert (await pubsub.get_message(timeout=2))["type"] == "subscribe"
        async with running_bridge(config):
            command_id = await till.pay(terminal, 1250)
            events = await till.until_final(terminal, command_id, timeout=20)
        live = []
        while (m := await pubsub.get_message(timeout=0.2)) is not None:
            live.append(json.loads(m["data"]))
    assert statuses(events) == expected
    assert [e["final"] for e in events] == [False] * (len(expected) - 1) + [True]
    assert all(e["terminal_id"] == terminal.upper() for e in events)
    # what a subscribed till saw live is the same, each with its stream id
    assert [(e["event_id"], e["stream_id"]) for e in live] == [(e["event_id"], e["stream_id"]) for e in events]
    assert await redis_client.get(till.keys.terminal_active(terminal)) is None
    final = json.loads(await redis_client.get(till.keys.order(events[0]["order_id"])))
    assert final["event_id"] == events[-1]["event_id"]
