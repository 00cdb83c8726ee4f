"""Commands that cannot be done, replays, busy terminals, upstream refusals and faults."""

from __future__ import annotations

import json

import anyio
import pytest
from helpers.harness import Till, bridge_config, running_bridge, sim_orders, statuses
from redis.asyncio import Redis

from bridge.core.commands import derive_order_id
from bridge.metrics import REGISTRY
from bridge.simulator.server import SimulatorServer

pytestmark = pytest.mark.anyio


def errors(events: list[dict]) -> list[tuple[str, str]]:
    return [(e["type"], e["error"]["code"]) for e in events if e.get("error")]


async def test_invalid_commands_each_get_their_failure(
    redis_server, redis_client: Redis, simulator
) -> None:
    till = Till(redis_client)
    async with running_bridge(bridge_config(redis_server.url, simulator.base_url)):
        await till.send(
            {"type": "pay", "terminal_id": "TILL-A", "amount": -5, "command_id": "bad-pay"}
        )
        await till.send({"type": "cancel", "terminal_id": "TILL-A", "command_id": "bad-cancel"})
        await till.send({"type": "teleport", "terminal_id": "TILL-A", "command_id": "bad-type"})
        await redis_client.xadd(till.keys.commands, {"command": "{not json"})
        await redis_client.xadd(till.keys.commands, {"something": "else"})
        events = await till.wait_for("TILL-A", lambda ev: len(ev) >= 3)
        dead = await till.redis.xrange(till.keys.commands_dead)
        with anyio.fail_after(5):
            while len(dead) < 2:
                await anyio.sleep(0.05)
                dead = await till.redis.xrange(till.keys.commands_dead)
    by_command = {e["command_id"]: e for e in events}
    assert by_command["bad-pay"]["type"] == "order.failed" and by_command["bad-pay"]["final"]
    assert by_command["bad-pay"]["error"]["code"] == "invalid_command"
    assert "amount" in by_command["bad-pay"]["error"]["message"]
    assert by_command["bad-pay"]["order_id"] == derive_order_id("bad-pay")
    assert (
        by_command["bad-cancel"]["type"] == "command.failed"
        and not by_command["bad-cancel"]["final"]
    )
    assert "order_id" in by_command["bad-cancel"]["error"]["message"]
    assert by_command["bad-type"]["type"] == "command.failed"
    assert sorted(f["error"][:20] for _, f in dead) == sorted(
        ["command is not JSON:", "entry has no 'comman"]
    )
    # nothing is left unacknowledged
    assert (await redis_client.xpending(till.keys.commands, "pos-bridge"))["pending"] == 0


async def test_replayed_command_changes_nothing(
    redis_server, redis_client: Redis, simulator
) -> None:
    till = Till(redis_client)
    command = {"type": "pay", "terminal_id": "TILL-A", "amount": 1250, "command_id": "replay-1"}
    async with running_bridge(bridge_config(redis_server.url, simulator.base_url)):
        await till.send(dict(command))
        first = await till.until_final("TILL-A", "replay-1")
        await till.send(dict(command))  # at-least-once delivery: the same command again
        await till.send(dict(command, amount=999))  # the same id for another command
        await till.wait_for("TILL-A", lambda ev: any(e["type"] == "command.failed" for e in ev))
        await till.settled()  # both replays answered: nothing more follows
        events = await till.events("TILL-A")
    assert statuses(first) == ["order.created", "initialized", "completed"]
    assert statuses(events) == ["order.created", "initialized", "completed", "command.failed"]
    assert errors(events) == [("command.failed", "invalid_command")]
    assert len(await sim_orders(simulator)) == 1  # one payment upstream


async def test_busy_terminal_then_cancel(redis_server, redis_client: Redis, simulator) -> None:
    till = Till(redis_client)
    async with running_bridge(bridge_config(redis_server.url, simulator.base_url)):
        first = await till.pay("SIM-TIMEOUT-01", 500, order_id="first-order")
        await till.wait_for(
            "SIM-TIMEOUT-01", lambda ev: any(e["status"] == "initialized" for e in ev)
        )
        second = await till.pay("SIM-TIMEOUT-01", 700, order_id="second-order")
        busy = await till.until_final("SIM-TIMEOUT-01", second)
        await till.send(
            {"type": "cancel", "terminal_id": "SIM-TIMEOUT-01", "order_id": "first-order"}
        )
        cancelled = await till.until_final("SIM-TIMEOUT-01", first)
    assert errors(busy) == [("order.failed", "terminal_busy")]
    assert "first-order" in busy[0]["error"]["message"]
    # the cancel's answer is the order's final, which names it
    cancel_id = cancelled[-1]["details"]["cancel_command_id"]
    assert cancel_id.startswith("t-") and cancelled[-1]["command_id"] == first
    # the refusal names the refused pay, never the payment in flight, which goes on
    assert (busy[0]["command_id"], busy[0]["order_id"]) == (second, "second-order")
    assert "goes on" in busy[0]["error"]["message"]
    assert statuses(cancelled) == ["order.created", "initialized", "cancelled"]


async def test_cancel_of_a_final_order_and_duplicate_order_id(
    redis_server, redis_client: Redis, simulator
) -> None:
    till = Till(redis_client)
    async with running_bridge(bridge_config(redis_server.url, simulator.base_url)):
        paid = await till.pay("TILL-B", 1250, order_id="once")
        await till.until_final("TILL-B", paid)
        await till.send(
            {"type": "cancel", "terminal_id": "TILL-B", "order_id": "once", "command_id": "late"}
        )
        await till.pay("TILL-B", 300, order_id="once", command_id="again")
        events = await till.wait_for("TILL-B", lambda ev: len(ev) >= 5)
    assert errors(events) == [
        ("command.failed", "not_cancellable"),
        ("command.failed", "duplicate_order_id"),
    ] or sorted(errors(events)) == sorted(
        [("command.failed", "not_cancellable"), ("command.failed", "duplicate_order_id")]
    )
    final = json.loads(await redis_client.get(till.keys.order("once")))
    assert final["status"] == "completed"  # the failed commands did not touch the order


async def test_cancel_that_arrives_before_its_pay_is_applied(
    redis_server, redis_client: Redis, simulator
) -> None:
    till = Till(redis_client)
    async with running_bridge(bridge_config(redis_server.url, simulator.base_url)):
        await till.send({"type": "cancel", "terminal_id": "SIM-TIMEOUT-01", "order_id": "early"})
        command_id = await till.pay("SIM-TIMEOUT-01", 100, order_id="early")
        events = await till.until_final("SIM-TIMEOUT-01", command_id)
    assert statuses(events)[0] == "order.created" and statuses(events)[-1] == "cancelled"


@pytest.mark.parametrize(
    ("terminal", "code"),
    [
        ("NOT-CONFIGURED", "unknown_terminal"),
        ("SIM-UNKNOWN-01", "unknown_terminal"),
        ("SIM-FAIL-01", "upstream_unavailable"),
    ],
)
async def test_pay_that_cannot_start(
    redis_server, redis_client: Redis, simulator, terminal: str, code: str
) -> None:
    till = Till(redis_client)
    async with running_bridge(bridge_config(redis_server.url, simulator.base_url)):
        command_id = await till.pay(terminal, 1250)
        events = await till.until_final(terminal, command_id)
    assert errors(events) == [("order.failed", code)]
    assert events[0]["final"] is True


async def test_wrong_api_key_is_unauthorized(redis_server, redis_client: Redis) -> None:
    till = Till(redis_client)
    with SimulatorServer(speed=40, api_keys=["the-only-valid-key"]) as sim:
        async with running_bridge(bridge_config(redis_server.url, sim.base_url)):
            command_id = await till.pay("TILL-A", 1250)
            events = await till.until_final("TILL-A", command_id)
    assert errors(events) == [("order.failed", "unauthorized")]
    assert "test-group-key" not in json.dumps(events)  # the key never reaches an event


async def test_create_that_timed_out_after_the_order_was_made(
    redis_server, redis_client: Redis, simulator
) -> None:
    """The create answer never comes, but the order exists: GET finds it, one payment, its end."""
    till = Till(redis_client)
    async with running_bridge(bridge_config(redis_server.url, simulator.base_url)):
        command_id = await till.pay("SIM-CREATE-TIMEOUT-01", 1250)
        events = await till.until_final("SIM-CREATE-TIMEOUT-01", command_id, timeout=25)
    assert statuses(events)[0] == "order.created"
    assert statuses(events)[-1] == "completed"
    assert [e["source"] for e in events[1:]] == ["poll"] * (len(events) - 1)
    assert len(await sim_orders(simulator)) == 1


async def test_replayed_cancel_after_it_worked_says_nothing_more(
    redis_server, redis_client: Redis, simulator
) -> None:
    till = Till(redis_client)
    cancel = {
        "type": "cancel",
        "terminal_id": "SIM-TIMEOUT-01",
        "order_id": "to-cancel",
        "command_id": "cx-1",
    }
    async with running_bridge(bridge_config(redis_server.url, simulator.base_url)):
        paid = await till.pay("SIM-TIMEOUT-01", 100, order_id="to-cancel")
        await till.wait_for(
            "SIM-TIMEOUT-01", lambda ev: any(e["status"] == "initialized" for e in ev)
        )
        await till.send(dict(cancel))
        await till.until_final("SIM-TIMEOUT-01", paid)
        await till.send(dict(cancel))  # delivered again (at least once), maybe while the first runs
        await till.settled(timeout=20)  # a replay met mid-way is retried once the first is done
        events = await till.events("SIM-TIMEOUT-01")
    assert statuses(events) == ["order.created", "initialized", "cancelled"]


async def test_cancel_of_an_order_that_never_appears_is_answered(
    redis_server, redis_client: Redis, simulator
) -> None:
    """No pay for the order is in progress or waiting: once none can arrive, ``not_found``
    on the sender's channel, with the cancel's own id."""
    till = Till(redis_client)
    async with running_bridge(bridge_config(redis_server.url, simulator.base_url)) as bridge:
        assert bridge.handlers is not None
        bridge.handlers.cancel_grace = 0.5
        await till.send(
            {"type": "cancel", "terminal_id": "TILL-A", "order_id": "ghost", "command_id": "cx-g"}
        )
        events = await till.wait_for("TILL-A", lambda ev: len(ev) >= 1)
        assert await redis_client.zcard(till.keys.pending_cancels) == 0
    assert [(e["command_id"], e["order_id"]) for e in events] == [("cx-g", "ghost")]
    assert errors(events) == [("command.failed", "not_found")]
    assert await sim_orders(simulator) == []


async def test_cancel_remembered_for_a_pay_that_fails_is_answered(
    redis_server, redis_client: Redis, simulator
) -> None:
    """The cancel's pay is waiting in the stream, then fails: the cancel is answered too."""
    till = Till(redis_client)
    async with running_bridge(bridge_config(redis_server.url, simulator.base_url)):
        await till.send(
            {
                "type": "cancel",
                "terminal_id": "SIM-FAIL-01",
                "order_id": "doomed",
                "command_id": "cx-d",
            }
        )
        await till.pay("SIM-FAIL-01", 1250, order_id="doomed", command_id="pay-d")
        events = await till.wait_for("SIM-FAIL-01", lambda ev: len(ev) >= 2)
    by_command = {e["command_id"]: e for e in events}
    assert by_command["pay-d"]["type"] == "order.failed"
    assert by_command["cx-d"]["type"] == "command.failed"
    assert by_command["cx-d"]["error"]["code"] == "not_cancellable"


async def test_cancel_and_refund_from_another_terminal_are_refused(
    redis_server, redis_client: Redis, simulator
) -> None:
    """Only the order's own terminal may cancel it: the other terminal is told
    (``invalid_command``), nothing happens upstream, the payment goes on to its end."""
    till = Till(redis_client)
    terminal = "SIM-SOFTDECLINE-APPROVE-01"
    async with running_bridge(bridge_config(redis_server.url, simulator.base_url)):
        paid = await till.pay(terminal, 1250, order_id="mine")
        await till.wait_for(terminal, lambda ev: any(e["status"] == "initialized" for e in ev))
        await till.send(
            {"type": "cancel", "terminal_id": "TILL-B", "order_id": "mine", "command_id": "cx-x"}
        )
        refused = await till.wait_for("TILL-B", lambda ev: len(ev) >= 1)
        events = await till.until_final(terminal, paid)
    assert [(e["command_id"], e["error"]["code"]) for e in refused] == [("cx-x", "invalid_command")]
    assert statuses(events)[-1] == "completed"  # not cancelled
    assert not any(e["type"] == "command.failed" for e in await till.events(terminal))
    upstream = {o["order_id"]: o for o in await sim_orders(simulator)}
    assert upstream["mine"]["status"] == "completed"


def _pay_commands(result: str) -> float:
    sample = REGISTRY.get_sample_value(
        "pos_bridge_commands_total", {"type": "pay", "result": result}
    )
    return sample or 0.0


async def test_a_create_slower_than_the_lease_keeps_it(redis_server, redis_client: Redis) -> None:
    """The daemon renews a running session's lease; a pay still creating its order (here each
    answer takes 4 s, the lease 1 s) renews its own, so the orphan scan does not take it and
    the pay's commit is not refused (it crashed with LeaseLost and was left for a retry)."""
    till = Till(redis_client)
    crashed, unfinished = _pay_commands("crashed"), _pay_commands("unfinished")
    with SimulatorServer(speed=1) as sim:
        config = bridge_config(
            redis_server.url,
            sim.base_url,
            multisafepay={"request_timeout": 10.0, "connect_timeout": 10.0},
            daemon={"lease_ttl": 1.0},
        )
        async with running_bridge(config):
            pay = await till.pay("SIM-SLOW-01", 1250, order_id="slow-order")
            events = await till.until_final("SIM-SLOW-01", pay, timeout=60)
            await till.settled(timeout=30)  # the pay was acknowledged (not left for a retry)
    # initialized may come and go while the first (4 s) GET is answered
    assert statuses(events) in (
        ["order.created", "initialized", "completed"],
        ["order.created", "completed"],
    )
    assert (_pay_commands("crashed"), _pay_commands("unfinished")) == (crashed, unfinished)
