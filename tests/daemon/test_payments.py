"""A payment end to end: till -> Redis -> daemon -> simulator (HTTP + SSE) -> Redis -> till."""

from __future__ import annotations

import json

import pytest
from helpers.harness import Till, assert_faithful, bridge_config, running_bridge
from redis.asyncio import Redis

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
@pytest.mark.parametrize("transport", ["sse", "websocket"])
async def test_every_scenario_reaches_its_final_once(
    redis_server, redis_client: Redis, simulator, terminal: str, expected: list[str], transport: str
) -> None:
    """The same event sequence whichever transport follows the payment."""
    config = bridge_config(
        redis_server.url, simulator.base_url, multisafepay={"transport": transport}
    )
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
    assert_faithful(events, expected)  # a status gone before the stream opened may be missing
    # only the configured transport (or a poll) brought statuses; a poll may have been first for
    # all of them on a loaded machine (a full run saw SIM-CUSTOMER-CANCEL-01 end so)
    followed_by = "stream" if transport == "sse" else "websocket"
    assert {e["source"] for e in events[1:]} <= {followed_by, "poll"}
    assert all(e["terminal_id"] == terminal.upper() for e in events)
    # what a subscribed till saw live is the same, each with its stream id
    assert [(e["event_id"], e["stream_id"]) for e in live] == [
        (e["event_id"], e["stream_id"]) for e in events
    ]
    assert await redis_client.get(till.keys.terminal_active(terminal)) is None
    final = json.loads(await redis_client.get(till.keys.order(events[0]["order_id"])))
    assert final["event_id"] == events[-1]["event_id"]


VARIANTS = [
    {"sse_ids": "off"},
    {"sse_ids": "on", "keepalive": "data"},
    {"field_spelling": "event"},
    {"transaction_id": "number"},
    {"events_url": "off"},
    {"token_ttl": 1},  # the token expires mid-payment: the bridge finishes by polling
]


@pytest.mark.parametrize(
    "variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items())
)
@pytest.mark.parametrize("events_auth", ["bearer", "raw"])
@pytest.mark.parametrize(
    ("terminal", "expected"),
    [
        ("SIM-DROP-01", ["order.created", "initialized", "completed"]),
        ("SIM-RETRY-01", ["order.created", "initialized", "declined", "initialized", "completed"]),
    ],
)
async def test_every_uncertain_api_variant(
    redis_server,
    redis_client: Redis,
    variant: dict,
    events_auth: str,
    terminal: str,
    expected: list[str],
) -> None:
    """Wherever MultiSafepay's behaviour is uncertain, the bridge works with each reading."""
    from bridge.simulator.server import SimulatorServer
    from bridge.simulator.variants import Variants

    till = Till(redis_client)
    with SimulatorServer(speed=10, variants=Variants(**variant)) as sim:
        config = bridge_config(
            redis_server.url, sim.base_url, multisafepay={"events_auth": events_auth}
        )
        async with running_bridge(config):
            command_id = await till.pay(terminal, 1250)
            events = await till.until_final(terminal, command_id, timeout=25)
    # The stream may open after the first statuses (its token may expire mid-payment): a status
    # that came and went before the next look is not seen, so no exact sequence is promised.
    assert_faithful(events, expected)
    assert all(e["transaction_id"] is None or isinstance(e["transaction_id"], str) for e in events)
