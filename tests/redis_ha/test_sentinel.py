"""Redis Sentinel for real: a master, a replica and three sentinels (``redis-server
--sentinel``), the daemon and the tills following the master through ``SENTINEL FAILOVER``
and through a ``kill -9`` of the master, mid-payment. Nothing acknowledged is lost, nothing
is published twice."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest
from helpers.harness import Till, bridge_config, running_bridge
from redis.asyncio import Redis

from bridge.daemon.app import Bridge
from bridge.redis.client import BridgeRedis, connect, sentinels_say_alone
from bridge.redis.deployment import SentinelDeployment
from bridge.simulator.server import SimulatorServer

pytestmark = pytest.mark.anyio

MANUAL = "SIM-MANUAL-01"  # waits for a tap: the failover happens while the payment is open


@pytest.fixture(scope="module")
def deployment() -> Iterator[SentinelDeployment]:
    with SentinelDeployment(replicas=1, sentinels=3) as d:
        yield d


@pytest.fixture
async def master(deployment: SentinelDeployment) -> AsyncIterator[BridgeRedis]:
    client = connect(deployment.target())
    try:
        yield client
    finally:
        await client.aclose()


async def tap(sim: SimulatorServer, terminal: str) -> None:
    """The customer taps a card, as soon as the terminal asks for one."""
    async with httpx.AsyncClient(base_url=sim.url) as http:
        with anyio.fail_after(60):
            while True:
                r = await http.post("_sim/press", json={"terminal_id": terminal, "action": "tap"})
                if r.status_code == 200:
                    return
                assert r.status_code == 409, r.text  # not asking for a card yet
                await anyio.sleep(0.1)


def initialized(command_id: str) -> Any:
    return lambda events: any(
        e["command_id"] == command_id and e.get("status") == "initialized" for e in events
    )


def assert_once_each(events: list[dict[str, Any]], want: list[str]) -> None:
    assert [e.get("status") or e["type"] for e in events] == want, events
    assert len({e["event_id"] for e in events}) == len(events)


async def test_sentinel_finds_the_master(deployment: SentinelDeployment, master: Redis) -> None:
    info = await master.info("replication")
    assert info["role"] == "master" and info["connected_slaves"] == 1
    port = deployment.master_port()
    assert (await master.config_get("port"))["port"] == str(port)


async def test_payments_across_a_failover_and_a_killed_master(
    deployment: SentinelDeployment, master: BridgeRedis
) -> None:
    with SimulatorServer(speed=10) as sim:
        section = deployment.redis_section(prefix="ha", wait_timeout=5.0)
        config = bridge_config("redis://127.0.0.1:6379/0", sim.base_url, redis=section)
        assert config.redis.target.wait_replicas == 1  # the default with sentinels
        till = Till(master, prefix="ha")
        async with running_bridge(config) as bridge:
            # 1. SENTINEL FAILOVER while the payment waits for the card
            command_id = await till.pay(MANUAL, 1250)
            await till.wait_for(MANUAL, initialized(command_id), timeout=60)
            before = deployment.master_port()
            after = await anyio.to_thread.run_sync(deployment.failover)
            assert after != before
            await tap(sim, MANUAL)
            events = await till.until_final(MANUAL, command_id, timeout=90)
            assert_once_each(events, ["order.created", "initialized", "completed"])

            # 2. kill -9 of the master mid-payment; the till is a `pos-bridge pay --wait`
            #    process of its own, following the master through the sentinels as well
            argv = [
                sys.executable, "-m", "bridge.cli", "pay", "--prefix", "ha", "--terminal", MANUAL,
                "--amount", "7.50", "--order-id", "ha-kill-1", "--wait", "--timeout", "120",
                "--master-name", deployment.master_name,
                *(f"--sentinel={s}" for s in deployment.sentinel_addresses),
            ]  # fmt: skip
            result: dict[str, Any] = {}
            async with anyio.create_task_group() as tg:

                async def pay_tool() -> None:
                    result["done"] = await anyio.run_process(argv, check=False)

                tg.start_soon(pay_tool)
                await till.wait_for(
                    MANUAL, lambda evs: any(e.get("order_id") == "ha-kill-1" for e in evs), 60
                )
                killed, now = await anyio.to_thread.run_sync(deployment.kill_master)
                assert now != killed
                await tap(sim, MANUAL)
            done = result["done"]
            assert done.returncode == 0, done.stderr.decode()[-2000:]
            printed = [json.loads(line) for line in done.stdout.decode().splitlines()]
            finals = [e for e in printed if e.get("final")]
            assert [e["status"] for e in finals] == ["completed"]
            stream = [e for e in await till.events(MANUAL) if e["order_id"] == "ha-kill-1"]
            # the final's card details may follow it (enrich_final), once
            assert sum(e["type"] == "order.details" for e in stream) <= 1
            stream = [e for e in stream if e["type"] != "order.details"]
            assert_once_each(stream, ["order.created", "initialized", "completed"])
            # the daemon saw both failovers (its probe asks the sentinels every second)
            await failovers_seen(bridge, 2, f"127.0.0.1:{now}")
        await anyio.to_thread.run_sync(deployment.revive, killed)


async def failovers_seen(bridge: Bridge, count: int, master: str) -> None:
    """The daemon saw ``count`` failovers, names ``master``, and is ready again (its command
    intake may still be backing off after the kill: waited for, as the probe is)."""
    ops = bridge.ops
    assert ops is not None
    with anyio.fail_after(30):
        while ops.redis_health()["failovers"] < count or not ops.readiness()[0]:  # noqa: ASYNC110 # the probe's state
            await anyio.sleep(0.1)
    health = ops.redis_health()
    assert health["failovers"] == count and health["master"] == master
    assert health["role"] == "master"


async def test_alone_is_what_the_sentinels_say(
    deployment: SentinelDeployment, master: BridgeRedis
) -> None:
    """The master is alone (WAITs bounded short) only while the sentinels know no replica of it
    they could promote: after its replica's host died, not before, and not once it is back."""
    sentinels = master.sentinels
    assert sentinels is not None
    # set-up: the sentinels learn the fresh replica (not down, role "slave") on their next INFO
    with anyio.fail_after(60):
        while await sentinels_say_alone(sentinels, deployment.master_name):  # noqa: ASYNC110 # the sentinels state
            await anyio.sleep(0.1)
    killed, _now = await anyio.to_thread.run_sync(deployment.kill_master)
    with anyio.fail_after(60):  # the sentinels mark the killed node down within a second or so
        while not await sentinels_say_alone(sentinels, deployment.master_name):  # noqa: ASYNC110 # the sentinels state
            await anyio.sleep(0.1)
    await anyio.to_thread.run_sync(deployment.revive, killed)
    # revive() waits for the node to be a replica in sync; the sentinels learn that (not
    # down, role "slave") on their next PING and INFO of it, which can come a little later
    with anyio.fail_after(60):
        while await sentinels_say_alone(sentinels, deployment.master_name):  # noqa: ASYNC110 # the sentinels state
            await anyio.sleep(0.1)
