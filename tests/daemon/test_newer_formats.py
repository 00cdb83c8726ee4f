"""Records a newer release wrote, in a major format this one cannot read (docs/redis-formats.md):
the daemon logs them and leaves them as they are, never acting on them. Real Redis and
simulator, the daemon in-process."""

from __future__ import annotations

import json
import time

import anyio
import pytest
from helpers.harness import Till, bridge_config, running_bridge
from redis.asyncio import Redis
from structlog.testing import capture_logs

from bridge.daemon.ownership import Sessions
from bridge.redis.keys import COMMANDS_GROUP

pytestmark = pytest.mark.anyio

TERMINAL = "SIM-MANUAL-01"


def session_record(order_id: str, **extra: object) -> str:
    now = time.time()
    return json.dumps(
        {
            "order_id": order_id,
            "terminal_id": TERMINAL,
            "group": "shop",
            "command_id": "c-" + order_id,
            "created_at": now,
            "deadline": now + 600,
            "created": True,
            **extra,
        }
    )


async def logged(logs: list[dict[str, object]], event: str, timeout: float = 15.0) -> None:
    with anyio.fail_after(timeout):
        while not any(e["event"] == event for e in logs):  # noqa: ASYNC110 - in-process logs
            await anyio.sleep(0.02)


async def test_a_newer_session_record_is_left_as_it_is(
    redis_server, redis_client: Redis, simulator
) -> None:
    till = Till(redis_client)
    keys = till.keys
    raw = session_record("o-newer", format=2, shard="b")
    await redis_client.set(keys.session("o-newer"), raw)
    await redis_client.sadd(keys.sessions_index, "o-newer")
    config = bridge_config(redis_server.url, simulator.base_url, daemon={"lease_ttl": 1.0})
    with capture_logs() as logs:
        async with running_bridge(config) as bridge:
            assert isinstance(bridge.sessions, Sessions)
            await logged(logs, "record.newer_format")
            assert "o-newer" not in bridge.sessions
    refused = [e for e in logs if e["event"] == "record.newer_format"]
    assert refused[0]["order_id"] == "o-newer" and "format 2" in str(refused[0]["error"])
    # the record, its index entry, nothing of it changed; its lease given back
    assert await redis_client.get(keys.session("o-newer")) == raw
    assert await redis_client.sismember(keys.sessions_index, "o-newer")
    assert await redis_client.get(keys.lease("o-newer")) is None
    assert not [e for e in logs if e["event"] in ("session.adopted", "session.crashed")]


async def test_a_lease_of_another_format_is_not_taken_over(
    redis_server, redis_client: Redis, simulator
) -> None:
    till = Till(redis_client)
    keys = till.keys
    await redis_client.set(keys.session("o-held"), session_record("o-held"))
    await redis_client.sadd(keys.sessions_index, "o-held")
    token = "v2|77|a-newer-daemon"  # nothing this release can judge the owner of
    await redis_client.set(keys.lease("o-held"), token, px=60_000)
    config = bridge_config(redis_server.url, simulator.base_url, daemon={"lease_ttl": 1.0})
    with capture_logs() as logs:
        async with running_bridge(config) as bridge:
            await logged(logs, "record.newer_format")
            await anyio.sleep(1.0)  # three more scans (every third of the TTL)
            assert "o-held" not in bridge.sessions
            assert await redis_client.get(keys.lease("o-held")) == token
    refused = [e for e in logs if e["event"] == "record.newer_format"]
    assert [e["record"] for e in refused] == ["lease"]  # logged once, not on every scan
    assert not [e for e in logs if e["event"] == "session.adopted"]


async def test_a_pay_for_an_order_of_a_newer_state_is_left_for_a_newer_daemon(
    redis_server, redis_client: Redis, simulator
) -> None:
    till = Till(redis_client)
    keys = till.keys
    state = json.dumps({"format": "2.0", "order_id": "o-state", "terminal_id": TERMINAL})
    await redis_client.hset(keys.order_state("o-state"), mapping={"seq": 3, "state": state})
    config = bridge_config(redis_server.url, simulator.base_url)
    with capture_logs() as logs:
        async with running_bridge(config):
            await till.pay(TERMINAL, 1250, order_id="o-state")
            await logged(logs, "record.newer_format")
            pending = await redis_client.xpending(keys.commands, COMMANDS_GROUP)
    assert pending["pending"] == 1  # not acknowledged: a daemon that reads it will do it
    assert await redis_client.hgetall(keys.order_state("o-state")) == {"seq": "3", "state": state}
    assert await till.events(TERMINAL) == []  # nothing published for it
    assert not [e for e in logs if e["event"] == "command.crashed"]
