"""Redis Sentinel for real: a master, a replica and three sentinels (``redis-server
--sentinel``), the daemon and the tills following the master through ``SENTINEL FAILOVER``
and through a ``kill -9`` of the master, mid-payment. Nothing acknowledged is lost, nothing
is published twice."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest
from helpers.harness import Till, bridge_config, running_bridge, sim_orders
from redis.asyncio import Redis

from bridge.cli import main
from bridge.daemon.app import Bridge
from bridge.redis.client import BridgeRedis, connect, sentinels_say_alone
from bridge.redis.deployment import SentinelDeployment
from bridge.redis.keys import Keys
from bridge.simulator.server import SimulatorServer

pytestmark = pytest.mark.anyio

MANUAL = "SIM-MANUAL-01"  # waits for a tap: the failover happens while the payment is open


@pytest.fixture(scope="module")
def deployment() -> Iterator[SentinelDeployment]:
    with SentinelDeployment(replicas=1, sentinels=3) as d:
        yield d


@pytest.fixture(autouse=True)
def nodes_back(deployment: SentinelDeployment) -> Iterator[None]:
    """After each test, a node it killed and did not start again (it failed first) rejoins:
    the next test must not meet a master with no replica to promote (CI: NOGOODSLAVE)."""
    yield
    for node in deployment.nodes:
        if not node.running:
            deployment.revive(node.port)


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


# -- the till tools ride out a failover (bridge.till.retry) -------------------------------------


def sentinel_flags(deployment: SentinelDeployment) -> list[str]:
    return [
        "--master-name", deployment.master_name,
        *(f"--sentinel={s}" for s in deployment.sentinel_addresses),
    ]  # fmt: skip


async def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``pos-bridge ARGV`` in a worker thread (its own event loop), as a till runs it."""
    code = await anyio.to_thread.run_sync(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


async def commands_of(deployment: SentinelDeployment, prefix: str) -> list[dict[str, Any]]:
    client = connect(deployment.target())
    try:
        entries = await client.xrange(Keys(prefix).commands)
    finally:
        await client.aclose()
    return [json.loads(fields["command"]) for _id, fields in entries]


async def test_pay_sent_while_the_master_is_down(
    deployment: SentinelDeployment, capsys: pytest.CaptureFixture[str]
) -> None:
    """The master was just kill -9'd and the sentinels still name it: ``pay`` retries through
    them until they promote the replica, then sends the command once."""
    killed = deployment.master_port()
    assert killed is not None
    deployment.node(killed).kill()
    argv = [
        "pay", "--prefix", "down", "--terminal", "T1", "--amount", "1.00",
        "--wait-timeout", "1", *sentinel_flags(deployment),
    ]  # fmt: skip
    try:
        code, out, err = await cli(argv, capsys)
        now = await anyio.to_thread.run_sync(deployment.promoted_after, killed)
        assert code == 0, err
        assert "lost Redis sending the command" in err and "through the sentinels" in err, err
        assert "reached Redis again (sentinel master 'pos' via 127.0.0.1:" in err
        sent = json.loads(out)
        sent_ids = [c["command_id"] for c in await commands_of(deployment, "down")]
        assert sent_ids == [sent["command_id"]]
        assert deployment.master_port() == now
    finally:  # a failure here must not leave the next tests a deployment without a replica
        await anyio.to_thread.run_sync(deployment.revive, killed)


async def test_pay_whose_wait_the_kill_cut_is_sent_again_and_paid_once(
    deployment: SentinelDeployment, capsys: pytest.CaptureFixture[str], daemon_log: io.StringIO
) -> None:
    """``pay --wait``'s ``XADD`` is on the master and its replica, its ``WAIT`` (for two
    replicas: one more than there is, so it blocks) still open when the master is kill -9'd.
    The tool sends the same command again on the new master; the daemon takes the second copy
    as a replay of the command id: one payment, one of each event, exit 0."""
    with SimulatorServer(speed=10) as sim:
        section = deployment.redis_section(prefix="cut", wait_timeout=5.0)
        config = bridge_config("redis://127.0.0.1:6379/0", sim.base_url, redis=section)
        watcher = connect(deployment.target())
        till = Till(watcher, prefix="cut")
        argv = [
            "pay", "--prefix", "cut", "--terminal", MANUAL, "--amount", "2.00",
            "--order-id", "cut-1", "--wait", "--timeout", "120",
            "--wait-replicas", "2", "--wait-timeout", "15", *sentinel_flags(deployment),
        ]  # fmt: skip
        result: list[tuple[int, str, str]] = []
        try:
            async with running_bridge(config), anyio.create_task_group() as tg:

                async def tool() -> None:
                    result.append(await cli(argv, capsys))

                tg.start_soon(tool)
                await till.wait_for(
                    MANUAL, lambda evs: any(e.get("order_id") == "cut-1" for e in evs), 60
                )
                killed, _now = await anyio.to_thread.run_sync(deployment.kill_master)
                await tap(sim, MANUAL)
            code, out, err = result[0]
            assert code == 0, err
            assert "lost Redis sending the command" in err, err
            printed = [json.loads(line) for line in out.splitlines()]
            assert [e["status"] for e in printed if e.get("final")] == ["completed"]
            copies = [c for c in await commands_of(deployment, "cut") if c["order_id"] == "cut-1"]
            assert len(copies) == 2 and copies[0] == copies[1]  # the same command, twice
            stream = [e for e in await till.events(MANUAL) if e["order_id"] == "cut-1"]
            stream = [e for e in stream if e["type"] != "order.details"]
            assert_once_each(stream, ["order.created", "initialized", "completed"])
            assert [o["order_id"] for o in await sim_orders(sim)].count("cut-1") == 1
        finally:
            await watcher.aclose()
    await anyio.to_thread.run_sync(deployment.revive, killed)


async def test_pay_gives_up_at_its_deadline_with_the_reason(
    deployment: SentinelDeployment, capsys: pytest.CaptureFixture[str]
) -> None:
    """No master the sentinels know: retried for ``--retry-for``, then one line that says
    where, how long and why, exit 2 (nothing could have been sent)."""
    argv = [
        "pay", "--terminal", "T1", "--amount", "1.00", "--retry-for", "1.5",
        "--master-name", "nosuch", *(f"--sentinel={s}" for s in deployment.sentinel_addresses),
    ]  # fmt: skip
    code, out, err = await cli(argv, capsys)
    assert code == 2 and out == "", err
    last = err.splitlines()[-1]
    assert last.startswith("pos-bridge: cannot reach Redis at sentinel master 'nosuch' via ")
    assert "within 1.5 s (" in last and "attempts): No master found for 'nosuch'" in last


def down_after(deployment: SentinelDeployment, ms: int) -> None:
    """How long every sentinel waits before it takes the master for down."""
    for sentinel in deployment.sentinels:
        with sentinel.client() as c:
            c.execute_command("SENTINEL SET", deployment.master_name, "down-after-milliseconds", ms)


async def _lines_until(stream: Any, text: str, seen: list[str], timeout: float) -> None:
    """Read ``stream`` (a process's pipe) into ``seen`` until a line contains ``text``."""
    buffered = b""
    with anyio.fail_after(timeout):
        while not any(text in line for line in seen):
            buffered += await stream.receive()
            *lines, buffered = buffered.split(b"\n")
            seen += [line.decode() for line in lines]


async def test_tail_starts_during_a_failover_and_follows_through_the_next(
    deployment: SentinelDeployment,
) -> None:
    """``tail`` started while the master is down (the sentinels still name it) retries its
    start until they promote the replica, then follows through a ``SENTINEL FAILOVER`` and a
    kill -9: every event written after its start once, in order."""
    stream = Keys("tl").terminal_stream("T1")
    written: list[str] = []

    async def write(writer: Redis, n: int) -> None:
        for _ in range(n):
            event_id = f"ev-{len(written)}"
            await writer.xadd(stream, {"event": json.dumps({"event_id": event_id})})
            written.append(event_id)

    try:
        down_after(deployment, 60000)  # no failover on its own: the tail surely starts first
        killed = deployment.master_port()
        assert killed is not None
        deployment.node(killed).kill()
        argv = [
            sys.executable, "-m", "bridge.cli", "tail", "--prefix", "tl", "--terminal", "T1",
            *sentinel_flags(deployment),
        ]  # fmt: skip
        async with await anyio.open_process(argv) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            errors: list[str] = []
            await _lines_until(proc.stderr, "lost Redis starting", errors, 30)
            await anyio.to_thread.run_sync(deployment.failover)  # forced: the master is down
            down_after(deployment, 1000)
            await _lines_until(proc.stderr, "reached Redis again", errors, 30)
            await anyio.to_thread.run_sync(deployment.revive, killed)
            writer = connect(deployment.target(wait_replicas=1, wait_timeout=5.0))
            try:
                await write(writer, 3)
                await anyio.to_thread.run_sync(deployment.failover)
                await write(writer, 3)
            finally:
                await writer.aclose()
            again, _now = await anyio.to_thread.run_sync(deployment.kill_master)
            writer = connect(deployment.target())  # alone now: no replica to wait for
            try:
                await write(writer, 3)
            finally:
                await writer.aclose()
            printed: list[str] = []
            await _lines_until(proc.stdout, '"ev-8"', printed, 60)
            proc.terminate()
            await proc.wait()
        events = [json.loads(line) for line in printed]
        assert [e["event_id"] for e in events] == written
        ids = [e["stream_id"] for e in events]
        assert ids == sorted(set(ids), key=lambda i: tuple(map(int, i.split("-"))))
    finally:
        down_after(deployment, 1000)
    await anyio.to_thread.run_sync(deployment.revive, again)
