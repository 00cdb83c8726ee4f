"""Receipts over real sockets: the ``receipt`` command and automatic receipts after a final.

An ``order.receipt`` is never final and never touches the order (its state, its order key):
checked here on every path. The simulator can hold or fail its receipt endpoint, which is how
"the receipt follows the final without delaying it" is shown without timing anything.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from helpers.harness import (
    API_KEY,
    PLAIN_TERMINALS,
    Till,
    bridge_config,
    running_bridge,
    sim_orders,
    statuses,
)
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from bridge.config import Config
from bridge.simulator.server import SimulatorServer

pytestmark = pytest.mark.anyio


def config(redis_url: str, sim: SimulatorServer, *, auto: bool = False) -> Config:
    return bridge_config(redis_url, sim.base_url, receipts={"auto": auto, "attempts": 6})


async def sim_receipts(sim: SimulatorServer, change: dict[str, Any] | None = None) -> Any:
    async with httpx.AsyncClient() as http:
        if change is None:
            r = await http.get(sim.url + "_sim/receipts")
        else:
            r = await http.put(sim.url + "_sim/receipts", json=change)
        r.raise_for_status()
        return r.json()["data"]


def receipts(events: list[dict[str, Any]], command_id: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if e["type"] == "order.receipt" and (command_id is None or e["command_id"] == command_id)
    ]


async def paid(till: Till, terminal: str, order_id: str, amount: int = 1250) -> dict[str, Any]:
    command_id = await till.pay(terminal, amount, order_id=order_id)
    events = await till.until_final(terminal, command_id)
    assert statuses(events)[-1] == "completed", statuses(events)
    return events[-1]


@asynccontextmanager
async def subscribed(redis: Redis, channel: str) -> AsyncIterator[PubSub]:
    pubsub = redis.pubsub()
    await pubsub.subscribe(channel)
    try:
        with anyio.fail_after(5):
            while (await pubsub.get_message(timeout=1)) is None:
                pass  # the subscribe confirmation
        yield pubsub
    finally:
        await pubsub.aclose()


async def next_message(pubsub: PubSub, predicate: Any) -> dict[str, Any]:
    with anyio.fail_after(15):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                event = json.loads(message["data"])
                if predicate(event):
                    return dict(event)


async def all_handled(redis: Redis, till: Till) -> None:
    """Every command written has been read and acknowledged: no answer can come after this."""
    with anyio.fail_after(15):
        while True:
            groups = await redis.xinfo_groups(till.keys.commands)
            info = groups[0]
            pending = (await redis.xpending(till.keys.commands, "pos-bridge"))["pending"]
            last = (await redis.xinfo_stream(till.keys.commands))["last-generated-id"]
            if pending == 0 and info["last-delivered-id"] == last:
                return
            await anyio.sleep(0.05)


async def test_receipt_by_command_arrives_on_the_channel(
    redis_server, redis_client: Redis, simulator
) -> None:
    till = Till(redis_client)
    async with running_bridge(config(redis_server.url, simulator)):
        final = await paid(till, "TILL-A", "rc-1")
        # its card details (order.details) are merged into the order key after the final
        await till.finished("rc-1")
        order_key = await redis_client.get(till.keys.order("rc-1"))
        state = await redis_client.hget(till.keys.order_state("rc-1"), "state")
        async with subscribed(redis_client, till.keys.terminal_channel("TILL-A")) as pubsub:
            command_id = await till.send(
                {"type": "receipt", "terminal_id": "TILL-A", "order_id": "rc-1"}
            )
            event = await next_message(pubsub, lambda e: e["command_id"] == command_id)
        events = await till.events("TILL-A")
    # a final the stream gave carries no card details: they follow it as order.details
    card = next(
        (e["details"] for e in events if e["type"] == "order.details" and e["order_id"] == "rc-1"),
        final["details"],
    )
    assert event["type"] == "order.receipt" and event["final"] is False
    assert event["order_id"] == "rc-1" and event["terminal_id"] == "TILL-A"
    assert (event["amount"], event["currency"], event["status"]) == (1250, "EUR", "completed")
    assert event["transaction_id"] == final["transaction_id"]
    d = event["details"]
    assert d["result"] == "approved"
    assert d["card"]["brand"] == card["card"]
    assert d["card"]["last4"] == card["last4"]
    assert d["card"]["masked_number"] == "**** **** **** " + card["last4"]
    assert d["card"]["authorization_code"] == card["authorization_code"]
    assert d["completed_at"] is not None and d["merchant"]["name"] == "pos-bridge simulator"
    assert d["raw"]["payment"]["last4"] == card["last4"]  # upstream's object, whole
    # the durable stream has it too, after the final; the order is untouched
    assert [e["type"] for e in events if e["type"] != "order.details"][-2:] == [
        "order.status",
        "order.receipt",
    ]  # the final, then its receipt (its card details, order.details, may come between)
    assert receipts(events)[0]["stream_id"] == event["stream_id"]
    assert await redis_client.get(till.keys.order("rc-1")) == order_key
    assert await redis_client.hget(till.keys.order_state("rc-1"), "state") == state


async def test_receipt_of_a_declined_payment(redis_server, redis_client: Redis, simulator) -> None:
    till = Till(redis_client)
    async with running_bridge(config(redis_server.url, simulator)):
        pay_id = await till.pay("SIM-SOFTDECLINE-CANCEL-01", 1250, order_id="rc-declined")
        await till.until_final("SIM-SOFTDECLINE-CANCEL-01", pay_id)
        command_id = await till.send(
            {
                "type": "receipt",
                "terminal_id": "SIM-SOFTDECLINE-CANCEL-01",
                "order_id": "rc-declined",
            }
        )
        events = await till.wait_for(
            "SIM-SOFTDECLINE-CANCEL-01", lambda ev: bool(receipts(ev, command_id))
        )
    event = receipts(events, command_id)[0]
    assert event["status"] == "cancelled"
    assert event["details"]["result"] == "declined"
    assert event["details"]["card"]["response_code"] == "65"
    assert event["details"]["completed_at"] is None


async def test_unknown_order_is_not_found(redis_server, redis_client: Redis, simulator) -> None:
    till = Till(redis_client)
    async with running_bridge(config(redis_server.url, simulator)):
        unknown = await till.send(
            {"type": "receipt", "terminal_id": "TILL-A", "order_id": "no-such-order"}
        )
        # a pay that never became a payment (its terminal is in no group): its id is spent
        never = await till.pay("TILL-Z", 1250, order_id="rc-never")
        await till.until_final("TILL-Z", never)
        never_made = await till.send(
            {"type": "receipt", "terminal_id": "TILL-Z", "order_id": "rc-never"}
        )
        stranger = await till.send(
            {"type": "receipt", "terminal_id": "TILL-Z", "order_id": "other-order"}
        )
        a = await till.wait_for("TILL-A", lambda ev: len(ev) >= 1)
        z = await till.wait_for("TILL-Z", lambda ev: len(ev) >= 3)
    codes = {e["command_id"]: (e["type"], e["error"]["code"]) for e in a + z if e["error"]}
    assert codes[unknown] == ("command.failed", "not_found")
    assert codes[never_made] == ("command.failed", "not_found")
    assert codes[stranger] == ("command.failed", "unknown_terminal")
    assert receipts(a + z) == []


async def test_receipt_is_refused_to_a_terminal_of_another_group(
    redis_server, redis_client: Redis, simulator
) -> None:
    """A group's key speaks only for its own terminals: a till of another group is refused,
    with nothing asked upstream; another terminal of the order's own group is answered."""
    groups = [
        {"name": "shop", "api_key": API_KEY, "terminals": PLAIN_TERMINALS},
        {"name": "other", "api_key": "other-group-key-9876543210", "terminals": ["OTHER-01"]},
    ]
    two_groups = bridge_config(
        redis_server.url, simulator.base_url, multisafepay={"terminal_groups": groups}
    )
    till = Till(redis_client)
    async with running_bridge(two_groups):
        await paid(till, "TILL-A", "rc-group")
        served_before = (await sim_receipts(simulator))["served"].count("rc-group")
        stranger = await till.send(
            {"type": "receipt", "terminal_id": "OTHER-01", "order_id": "rc-group"}
        )
        refused = await till.wait_for("OTHER-01", lambda ev: len(ev) >= 1)
        assert (await sim_receipts(simulator))["served"].count("rc-group") == served_before
        neighbour = await till.send(
            {"type": "receipt", "terminal_id": "TILL-B", "order_id": "rc-group"}
        )
        answered = await till.wait_for("TILL-B", lambda ev: bool(receipts(ev, neighbour)))
    assert [(e["type"], e["command_id"]) for e in refused] == [("command.failed", stranger)]
    assert refused[0]["error"]["code"] == "invalid_command"
    assert receipts(answered, neighbour)[0]["order_id"] == "rc-group"
    assert receipts(answered, neighbour)[0]["terminal_id"] == "TILL-B"


async def test_replayed_receipt_is_answered_once_per_delivery(
    redis_server, redis_client: Redis, simulator
) -> None:
    till = Till(redis_client)
    async with running_bridge(config(redis_server.url, simulator)) as bridge:
        await paid(till, "TILL-A", "rc-replay")
        await till.finished("rc-replay")  # its order.details, merged into the order key, too
        order_key = await redis_client.get(till.keys.order("rc-replay"))
        upstream_before = await sim_orders(simulator)
        command = {
            "type": "receipt",
            "terminal_id": "TILL-A",
            "order_id": "rc-replay",
            "command_id": "rc-replay-receipt",
        }
        first = await redis_client.xadd(till.keys.commands, {"command": json.dumps(command)})
        await redis_client.xadd(till.keys.commands, {"command": json.dumps(command)})
        await all_handled(redis_client, till)
        # the first entry delivered again (as after a claim): no second answer to it
        assert bridge.handlers is not None
        await bridge.handlers.handle(first, {"command": json.dumps(command)})
        # the same command id for another order: refused, not answered with a receipt
        await till.send(dict(command, order_id="other-order"))
        await all_handled(redis_client, till)
        events = await till.events("TILL-A")
    answers = receipts(events, "rc-replay-receipt")
    assert len(answers) == 2  # two deliveries, two answers
    assert answers[0]["event_id"] == answers[1]["event_id"]  # one answer, said twice
    assert [e["error"]["code"] for e in events if e["type"] == "command.failed"] == [
        "invalid_command"
    ]
    assert await redis_client.get(till.keys.order("rc-replay")) == order_key
    assert await sim_orders(simulator) == upstream_before  # nothing changed upstream
    assert (await sim_receipts(simulator))["served"].count("rc-replay") == 2


async def test_auto_receipt_follows_the_final_without_delaying_it(
    redis_server, redis_client: Redis, simulator
) -> None:
    till = Till(redis_client)
    await sim_receipts(simulator, {"hold": True})  # every receipt request waits
    async with running_bridge(config(redis_server.url, simulator, auto=True)):
        await paid(till, "TILL-A", "rc-auto")  # the final is out while receipts are held
        with anyio.fail_after(15):
            while True:
                if (await sim_receipts(simulator))["held"] >= 1:  # the bridge asked
                    break
                await anyio.sleep(0.05)
        assert receipts(await till.events("TILL-A")) == []
        await till.finished("rc-auto")  # its order.details, merged into the order key, too
        order_key = await redis_client.get(till.keys.order("rc-auto"))
        await sim_receipts(simulator, {"hold": False})
        events = await till.wait_for("TILL-A", lambda ev: bool(receipts(ev)))
    assert [e["type"] for e in events if e["type"] != "order.details"][-2:] == [
        "order.status",
        "order.receipt",
    ]  # the final, then its receipt (its card details, order.details, may come between)
    final, receipt = [e for e in events if e["type"] != "order.details"][-2:]
    card = next((e["details"] for e in events if e["type"] == "order.details"), final["details"])
    assert final["final"] and final["status"] == "completed"
    assert receipt["final"] is False and receipt["command_id"] is None
    assert receipt["details"]["result"] == "approved" and receipt["source"] == "bridge"
    assert receipt["details"]["card"]["last4"] == card["last4"]
    assert await redis_client.get(till.keys.order("rc-auto")) == order_key


async def test_auto_receipt_is_retried_with_backoff(
    redis_server, redis_client: Redis, simulator
) -> None:
    till = Till(redis_client)
    await sim_receipts(simulator, {"fail": 3})  # the first three requests fail (HTTP 500)
    async with running_bridge(config(redis_server.url, simulator, auto=True)):
        await paid(till, "TILL-B", "rc-retry")
        pay_cancel = await till.pay("SIM-CUSTOMER-CANCEL-01", 1250, order_id="rc-cancelled")
        await till.until_final("SIM-CUSTOMER-CANCEL-01", pay_cancel)
        b = await till.wait_for("TILL-B", lambda ev: bool(receipts(ev)))
        c = await till.wait_for("SIM-CUSTOMER-CANCEL-01", lambda ev: bool(receipts(ev)))
    assert [r["details"]["result"] for r in receipts(b)] == ["approved"]
    assert [r["details"]["result"] for r in receipts(c)] == ["not_completed"]
    state = await sim_receipts(simulator)
    assert state["fail"] == 0  # the failures were met, and retried past
    assert sorted(state["served"]) == ["rc-cancelled", "rc-retry"]  # one receipt each
