"""The bridge's slot moved to another master in the middle of a payment (an operator
resharding): the daemon follows it, a till's shard subscription is ended by Redis
(``sunsubscribe``) and made again on the new master, the payment completes once.

Its own module, so its own cluster: the test leaves the slot elsewhere."""

from __future__ import annotations

import io

import anyio
import httpx
import pytest
import redis
from helpers.cluster import KEYS, cluster_till, other_node, pay_argv, run_cli
from helpers.harness import bridge_config, running_bridge, statuses
from redis.asyncio import Redis

from bridge.redis.cluster import subscribe_terminal
from bridge.redis.cluster_server import RedisClusterServer
from bridge.simulator.server import SimulatorServer

pytestmark = pytest.mark.anyio

MANUAL = "SIM-MANUAL-01"


async def test_the_slot_moves_mid_payment(
    redis_cluster: RedisClusterServer,
    cluster_client: Redis,
    simulator: SimulatorServer,
    capsys: pytest.CaptureFixture[str],
    daemon_log: io.StringIO,
) -> None:
    config = bridge_config(redis_cluster.url, simulator.base_url, redis={"layout": "cluster"})
    owner = redis_cluster.master_of("{pos}")
    new_owner = next(
        p
        for p in redis_cluster.ports
        if p != owner and redis.Redis(host=redis_cluster.host, port=p).role()[0] == b"master"
    )
    till = cluster_till(cluster_client)
    watcher = await subscribe_terminal(cluster_client, KEYS, MANUAL)
    assert (await watcher.get_message(timeout=10))["type"] == "ssubscribe"
    ended: list[str] = []

    async def move_the_slot_mid_payment() -> None:
        await till.wait_for(MANUAL, lambda events: "initialized" in statuses(events), timeout=60)
        await anyio.to_thread.run_sync(redis_cluster.move_slot, "{pos}", new_owner)
        # Redis ends the subscriptions of the slot it no longer serves
        with anyio.fail_after(30):
            while not ended:
                message = await watcher.get_message(timeout=1)
                if message is not None and message["type"] == "sunsubscribe":
                    ended.append(message["channel"])
        async with httpx.AsyncClient() as http:
            answer = await http.post(
                simulator.url + "_sim/press", json={"terminal_id": MANUAL, "action": "tap"}
            )
            assert answer.status_code == 200, answer.text

    try:
        async with running_bridge(config):
            code, out, err = await run_cli(
                pay_argv(other_node(redis_cluster, owner), MANUAL, "--order-id", "till7-r1"),
                capsys,
                move_the_slot_mid_payment,
            )
            assert ended == [KEYS.terminal_channel(MANUAL)]
            assert code == 0, err
            assert out[-1]["status"] == "completed" and out[-1]["final"] is True
            code, out, err = await run_cli(
                pay_argv(redis_cluster.url, "SIM-APPROVE-01", "--order-id", "till7-r2"), capsys
            )
            assert code == 0, err
            await till.finished("till7-r1", timeout=60)
            await till.finished("till7-r2", timeout=60)
    finally:
        await watcher.aclose()

    assert redis_cluster.master_of("{pos}") == new_owner
    events = [e for e in await till.events(MANUAL) if e["type"] != "order.details"]
    assert statuses(events) == ["order.created", "initialized", "completed"]
    assert len({e["event_id"] for e in events}) == 3
    # every key went along: none is left on the old master
    assert list(redis.Redis(host=redis_cluster.host, port=owner).scan_iter()) == []
    assert await cluster_client.get(KEYS.order("till7-r2")) is not None
