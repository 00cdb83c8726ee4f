"""A Redis Cluster master killed (SIGKILL) in the middle of a payment: its replica takes over,
the payment completes, nothing is lost or published twice, and the next payment goes through.

Each run has its own cluster: the test leaves one node dead."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import anyio
import httpx
import pytest
import redis
from helpers.cluster import KEYS, cluster_till, other_node, pay_argv, run_cli
from helpers.harness import bridge_config, running_bridge, sim_orders, statuses
from redis.asyncio import Redis

from bridge.redis.cluster_server import RedisClusterServer
from bridge.simulator.server import SimulatorServer

pytestmark = pytest.mark.anyio

MANUAL = "SIM-MANUAL-01"  # initialized, then waits for a person: the kill lands mid-payment


@pytest.fixture
def redis_cluster() -> Iterator[RedisClusterServer]:
    """A cluster per test (not per module, as elsewhere): each run kills a master."""
    with RedisClusterServer(masters=3, replicas_per_master=1) as cluster:
        yield cluster


@pytest.mark.parametrize("wait_replicas", [1, 0], ids=["commits-wait", "no-wait"])
async def test_a_master_killed_mid_payment(
    wait_replicas: int,
    redis_cluster: RedisClusterServer,
    cluster_client: Redis,
    simulator: SimulatorServer,
    capsys: pytest.CaptureFixture[str],
    daemon_log: io.StringIO,
) -> None:
    section = {"layout": "cluster", "wait_replicas": wait_replicas}
    config = bridge_config(redis_cluster.url, simulator.base_url, redis=section)
    owner = redis_cluster.master_of("{pos}")
    replicas = redis_cluster.replicas_of(owner)
    assert len(replicas) == 1
    till_url = other_node(redis_cluster, owner)  # survives the kill
    till = cluster_till(cluster_client)
    took_over: list[int] = []

    async def kill_the_master_mid_payment() -> None:
        await till.wait_for(MANUAL, lambda events: "initialized" in statuses(events), timeout=60)
        if not wait_replicas:
            # Replication is asynchronous: without the daemon's WAIT, make the kill land
            # after the replica has what was written, so this tests the failover, not
            # Redis's window of loss. With it, what the till saw is on the replica already.
            master = redis.Redis(host=redis_cluster.host, port=owner)
            assert master.execute_command("WAIT", 1, 10_000) == 1  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        redis_cluster.kill(owner)
        took_over.append(
            await anyio.to_thread.run_sync(redis_cluster.wait_failover, "{pos}", owner)
        )
        async with httpx.AsyncClient() as http:  # the customer taps the card now
            answer = await http.post(
                simulator.url + "_sim/press", json={"terminal_id": MANUAL, "action": "tap"}
            )
            assert answer.status_code == 200, answer.text

    async with running_bridge(config) as bridge:
        code, out, err = await run_cli(
            pay_argv(till_url, MANUAL, "--order-id", "till7-f1"),
            capsys,
            kill_the_master_mid_payment,
        )
        assert took_over == replicas, "the slot's replica is its master now"

        assert code == 0, err  # the till saw its payment complete
        assert out[-1]["status"] == "completed" and out[-1]["final"] is True
        # the next payment, after the failover
        code, out, err = await run_cli(
            pay_argv(till_url, "SIM-APPROVE-01", "--order-id", "till7-f2"), capsys
        )
        assert code == 0, err
        # the daemon met the lost master (its command reader was blocked on it), and its
        # reader was back for the next pay
        outage = ("redis.unreachable", "redis.reachable")
        events = [json.loads(line)["event"] for line in daemon_log.getvalue().splitlines()]
        assert [e for e in events if e in outage] == list(outage), events
        # the daemon's commits did WAIT (none of the new master's can be acknowledged: its
        # replica was the master killed) or, without wait_replicas, sent no WAIT at all
        assert ("redis.wait_short" in events) == bool(wait_replicas), events
        await till.finished("till7-f1", timeout=60)
        await till.finished("till7-f2", timeout=60)
        # /readyz: the probe's PING reaches every node the cluster client knows now
        assert bridge.ops is not None
        assert await bridge.ops.probe.check(), bridge.ops.probe.error
        assert bridge.ops.readiness() == (True, "ok")
        # Redis's health names the master of the bridge's slot: the replica that took over
        health = bridge.ops.probe.health
        assert health.master == f"{redis_cluster.host}:{took_over[0]}", health.as_dict()
        assert health.role == "master" and health.failovers == 1, health.as_dict()

    # nothing lost, nothing twice: each transition once in the durable stream, in order
    events = [e for e in await till.events(MANUAL) if e["type"] != "order.details"]
    assert statuses(events) == ["order.created", "initialized", "completed"]
    assert len({e["event_id"] for e in events}) == 3
    assert all(e["order_id"] == "till7-f1" for e in events)
    after = [e for e in await till.events("SIM-APPROVE-01") if e["type"] != "order.details"]
    assert statuses(after)[0] == "order.created" and statuses(after)[-1] == "completed"
    # the order keys hold the finals, and MultiSafepay (the simulator) agrees
    for order_id in ("till7-f1", "till7-f2"):
        stored = await cluster_client.get(KEYS.order(order_id))
        assert stored is not None and '"status":"completed"' in stored
    upstream = {o["order_id"]: o["status"] for o in await sim_orders(simulator)}
    assert upstream == {"till7-f1": "completed", "till7-f2": "completed"}
