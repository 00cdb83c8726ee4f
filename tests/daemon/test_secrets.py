"""Secrets never reach a log line or a published event: a whole payment (stream, webhooks,
polls) at debug level, then the logs and every event are searched for each secret."""

from __future__ import annotations

import io
import json
import time

import pytest
from helpers.harness import API_KEY, Till, bridge_config, running_bridge, sim_webhooks
from redis.asyncio import Redis

from bridge.logs import configure_logging, reset_logging
from bridge.redis.server import free_port
from bridge.simulator.server import SimulatorServer

pytestmark = pytest.mark.anyio


async def test_no_secret_in_logs_or_events(redis_server, redis_client: Redis) -> None:
    port = free_port()
    logs = io.StringIO()
    configure_logging("debug", "json", logs)
    till = Till(redis_client)
    tokens: list[str] = []
    try:
        with SimulatorServer(speed=10) as sim:
            config = bridge_config(
                redis_server.url,
                sim.base_url,
                multisafepay={"poll_interval": 0.1},
                webhook={
                    "enabled": True,
                    "listen": f"127.0.0.1:{port}",
                    "public_url": f"http://127.0.0.1:{port}",
                },
            )
            async with running_bridge(config):
                command_id = await till.pay("SIM-SOFTDECLINE-APPROVE-01", 1250)
                # the events token, as the daemon keeps it for the payment in flight
                deadline = time.monotonic() + 10
                while not tokens and time.monotonic() < deadline:
                    for key in await redis_client.keys("pos:session:*"):
                        record = json.loads(await redis_client.get(key) or "{}")
                        tokens += [record["events_token"]] if record.get("events_token") else []
                events = await till.until_final("SIM-SOFTDECLINE-APPROVE-01", command_id)
                deliveries = await sim_webhooks(sim)
    finally:
        reset_logging()
    text = logs.getvalue()
    published = json.dumps(await till.events("SIM-SOFTDECLINE-APPROVE-01"))
    assert tokens, "the payment had an events token"
    assert deliveries, "webhooks were sent (and their Auth headers must not show up either)"
    assert events[-1]["status"] == "completed"
    assert "order.transition" in text  # the logs did record the payment
    for secret in [API_KEY, *tokens]:
        assert secret not in text
        assert secret not in published
    # an HMAC-SHA512 signature is 128 hex characters; none may appear in a log line
    import re

    assert not re.search(r"\b[0-9a-f]{128}\b", text)
