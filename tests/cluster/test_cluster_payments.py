"""Payments through a real Redis Cluster (3 masters, 3 replicas): the daemon in cluster mode,
``pos-bridge pay --cluster --wait`` as the till, the simulator upstream."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import anyio
import pytest
import redis
from helpers.cluster import KEYS, cluster_till, other_node, pay_argv, run_cli
from helpers.harness import assert_faithful, bridge_config, running_bridge
from redis.asyncio import Redis
from redis.crc import key_slot

from bridge.core.state import order_created
from bridge.redis.client import RedisTarget, connect
from bridge.redis.cluster import subscribe_terminal
from bridge.redis.cluster_server import RedisClusterServer
from bridge.redis.leases import Leases
from bridge.redis.publisher import EventStore
from bridge.simulator.server import SimulatorServer
from bridge.till.output import Printer
from bridge.till.tail import Tail

pytestmark = pytest.mark.anyio

TERMINAL = "SIM-APPROVE-01"


async def test_a_payment_in_cluster_mode(
    redis_cluster: RedisClusterServer,
    cluster_client: Redis,
    simulator: SimulatorServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The daemon and ``pay --wait`` on a cluster: the payment completes, every name is in the
    cluster layout on the master of ``{pos}``'s slot, events went out on the shard channel."""
    config = bridge_config(redis_cluster.url, simulator.base_url, redis={"layout": "cluster"})
    owner = redis_cluster.master_of("{pos}")
    till_url = other_node(redis_cluster, owner)
    # a second till listening on the shard channel the way the tools do, and one that made
    # the single-node mistake (plain SUBSCRIBE): sharded messages never reach it
    sharded = await subscribe_terminal(cluster_client, KEYS, TERMINAL)
    assert (await sharded.get_message(timeout=10))["type"] == "ssubscribe"
    plain = cluster_client.pubsub()
    await plain.subscribe(KEYS.terminal_channel(TERMINAL))
    try:
        async with running_bridge(config):
            code, out, err = await run_cli(pay_argv(till_url, TERMINAL), capsys)
            assert code == 0, err
            final = out[-1]
            assert final["status"] == "completed" and final["final"] is True, out
            order_id = final["order_id"]
            await cluster_till(cluster_client).finished(order_id, timeout=30)
        events = await cluster_till(cluster_client).events(TERMINAL)
        assert_faithful(
            [e for e in events if e["type"] != "order.details"],
            ["order.created", "initialized", "completed"],
        )
        # what pay --wait printed is what the durable stream holds, each once
        printed = [e for e in out if "event_id" in e]
        assert {e["stream_id"] for e in printed} <= {e["stream_id"] for e in events}
        # the shard channel carried every event, with its stream id, in order
        live = []
        while len(live) < len(events):
            message = await sharded.get_message(timeout=10)
            assert message is not None, live
            if message["type"] == "smessage":
                live.append(json.loads(message["data"]))
        assert [(e["event_id"], e["stream_id"]) for e in live] == [
            (e["event_id"], e["stream_id"]) for e in events
        ]
        # nothing was broadcast with PUBLISH: the plain subscriber's first message is ours
        await cluster_client.publish(KEYS.terminal_channel(TERMINAL), "marker")
        while (message := await plain.get_message(timeout=10)) is not None:
            if message["type"] == "message":
                break
        assert message is not None and message["data"] == "marker"
    finally:
        await sharded.aclose()
        await plain.aclose()

    # the order key, in the cluster layout, holds the final
    stored = json.loads(await cluster_client.get(KEYS.order(order_id)))
    assert stored["status"] == "completed" and stored["order_id"] == order_id
    assert KEYS.order(order_id) == "{pos}:order:" + order_id
    # every key the bridge wrote is on the one master of {pos}'s slot, none elsewhere
    slot = key_slot(b"pos")
    for port in redis_cluster.ports:
        node = redis.Redis(host=redis_cluster.host, port=port, decode_responses=True)
        if node.role()[0] != "master":
            continue
        found = list(node.scan_iter(count=1000))
        if port == owner:
            assert KEYS.order(order_id) in found and KEYS.commands in found
            assert all(k.startswith("{pos}:") and key_slot(k.encode()) == slot for k in found)
        else:
            assert found == [], (port, found)


async def test_orders_and_commands_from_any_node(
    redis_cluster: RedisClusterServer,
    cluster_client: Redis,
    simulator: SimulatorServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A till may know any node: it is redirected (MOVED) to the master of the slot for the
    commands stream and the order keys; ``cancel`` finds the order's terminal by its id;
    ``tail`` finds the terminals' streams across the cluster."""
    config = bridge_config(redis_cluster.url, simulator.base_url, redis={"layout": "cluster"})
    owner = redis_cluster.master_of("{pos}")
    async with running_bridge(config):
        code, out, err = await run_cli(
            pay_argv(redis_cluster.url, TERMINAL, "--order-id", "till7-c1"), capsys
        )
        assert code == 0, err
        await cluster_till(cluster_client).finished("till7-c1", timeout=30)
        for port in redis_cluster.ports:
            url = f"redis://{redis_cluster.host}:{port}"
            if port != owner:  # a plain client there is refused: the redirection is real
                with pytest.raises(redis.exceptions.MovedError):
                    redis.Redis(host=redis_cluster.host, port=port).get(KEYS.order("till7-c1"))
            client = connect(RedisTarget(url=url, cluster=True))
            try:
                stored = json.loads(await client.get(KEYS.order("till7-c1")))
                assert stored["status"] == "completed"
                assert await client.xlen(KEYS.commands) >= 1
            finally:
                await client.aclose()
        # cancel by order id only, from a node that does not hold it: the terminal is read
        # from {pos}:order:till7-c1, the answer (not_cancellable: it completed) comes back
        elsewhere = other_node(redis_cluster, owner)
        argv = ["cancel", "--redis-url", elsewhere, "--cluster", "--order-id", "till7-c1"]
        code, out, err = await run_cli([*argv, "--wait", "--timeout", "60"], capsys)
        assert code == 1, err
        assert out[-1]["type"] == "command.failed"
        assert out[-1]["error"]["code"] == "not_cancellable"
        assert out[-1]["terminal_id"] == TERMINAL
    # tail (every terminal) finds the stream with SCAN across the masters
    printed = io.StringIO()
    tail = Tail(cluster_client, KEYS, Printer(json_lines=True, out=printed), from_start=True)
    await tail.start()
    assert list(tail.positions) == [KEYS.terminal_stream(TERMINAL)]
    with anyio.fail_after(30):
        while "not_cancellable" not in printed.getvalue():  # noqa: ASYNC110 - reads Redis
            await tail.step()
    lines = [json.loads(line) for line in printed.getvalue().splitlines()]
    assert [e["order_id"] for e in lines] == ["till7-c1"] * len(lines)


async def test_batched_transitions_through_a_cluster_pipeline(cluster_client: Redis) -> None:
    """The transition batcher writes a batch on a pooled connection of a single-node client;
    a cluster client has no one pool, so the batch goes as a cluster pipeline of EVALSHA
    commands (pipe.evalsha() is refused there). Many orders at once (batches of several),
    after the scripts were flushed on every master (each batch's NOSCRIPT is answered by
    loading the script and sending those calls again)."""
    assert getattr(cluster_client, "connection_pool", None) is None  # the pipeline path
    events = EventStore(cluster_client, KEYS, stream_maxlen=1000, order_ttl=3600)
    await cluster_client.script_flush()  # every master
    terminals = [f"T{n:03d}" for n in range(12)]
    stream_ids: dict[str, tuple[str, ...]] = {}

    async def create(terminal: str) -> None:
        order_id = f"batch-{terminal}"
        recorded = await events.record(
            order_id,
            lambda _state: order_created(
                order_id=order_id,
                terminal_id=terminal,
                command_id=f"c-{terminal}",
                amount=100,
                currency="EUR",
                session_id="s",
                now=datetime.now(UTC),
            ),
        )
        stream_ids[terminal] = recorded.stream_ids

    async with anyio.create_task_group() as tg:
        for terminal in terminals:
            tg.start_soon(create, terminal)
    for terminal in terminals:
        assert len(stream_ids[terminal]) == 1, terminal
        entries = await cluster_client.xrange(KEYS.terminal_stream(terminal))
        assert [eid for eid, _ in entries] == list(stream_ids[terminal])
        stored = json.loads(await cluster_client.get(KEYS.order(f"batch-{terminal}")))
        assert stored["type"] == "order.created" and stored["terminal_id"] == terminal


async def test_leases_renewed_together_on_a_cluster(cluster_client: Redis) -> None:
    """Every lease a daemon holds is renewed in one pipeline of script calls; on a cluster
    that pipeline refuses ``.evalsha()`` (a daemon following a payment past a renewal ended
    on it), so the calls are EVALSHA commands, and after SCRIPT FLUSH the script is loaded
    and the chunks that missed it are sent again."""
    leases = Leases(cluster_client, KEYS, 5.0, "a")
    held = {f"o{i}": await leases.acquire(f"o{i}") for i in range(12)}
    await cluster_client.delete(KEYS.lease("o7"))  # lapsed, nobody took it
    await cluster_client.set(KEYS.lease("o3"), "999:b")  # taken over
    await cluster_client.pexpire(KEYS.lease("o0"), 50)
    await cluster_client.script_flush()  # every master
    lost, revived = await leases.renew_all(held, batch=5)  # type: ignore[arg-type]
    assert (lost, revived) == ({"o3"}, {"o7"})
    assert await cluster_client.pttl(KEYS.lease("o0")) > 4000  # renewed to the full TTL
    assert await cluster_client.get(KEYS.lease("o7")) == held["o7"]
