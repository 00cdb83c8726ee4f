"""Refunds over real sockets: the ``refund`` command, and refunds made outside the bridge
(the dashboard, the terminal) that reach the till through the webhook.

A refund is a new transition of a completed payment: one ``order.refund`` per new
``amount_refunded`` (``final: false``), whichever channel (the command's ``GET``
confirmation, the webhook) says it first; the payment's final stays the only final.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from helpers.harness import API_KEY, Till, bridge_config, running_bridge, sim_orders, statuses
from redis.asyncio import Redis

from bridge.redis.server import free_port
from bridge.simulator.server import SimulatorServer

pytestmark = pytest.mark.anyio


def refunds(events: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(refund_amount, amount_refunded) of every ``order.refund``, in order."""
    return [
        (e["details"]["refund_amount"], e["details"]["amount_refunded"])
        for e in events
        if e["type"] == "order.refund"
    ]


def failures(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["command_id"], e["error"]["code"]) for e in events if e["type"] == "command.failed"]


def of_order(events: list[dict[str, Any]], order_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e["order_id"] == order_id]


async def refund(
    till: Till, terminal: str, order_id: str, amount: int | None = None, **kw: Any
) -> str:
    command: dict[str, Any] = {
        "type": "refund",
        "terminal_id": terminal,
        "order_id": order_id,
        **kw,
    }
    if amount is not None:
        command["amount"] = amount
    return await till.send(command)


async def paid(till: Till, terminal: str, amount: int, order_id: str) -> list[dict[str, Any]]:
    command_id = await till.pay(terminal, amount, order_id=order_id)
    events = await till.until_final(terminal, command_id)
    assert statuses(events)[-1] == "completed", statuses(events)
    return events


def count(kind: str, n: int):
    return lambda events: sum(e["type"] == kind for e in events) >= n


async def test_partial_then_the_rest_then_nothing_left(
    redis_server, redis_client: Redis, simulator
) -> None:
    till = Till(redis_client)
    terminal = "SIM-APPROVE-01"
    async with running_bridge(bridge_config(redis_server.url, simulator.base_url)):
        await paid(till, terminal, 1250, "refund-me")
        await refund(
            till, terminal, "refund-me", 300, description="returned item", command_id="r-1"
        )
        await till.wait_for(terminal, count("order.refund", 1))
        await refund(
            till, terminal, "refund-me", 2000, command_id="r-too-much"
        )  # more than remains
        await till.wait_for(terminal, count("command.failed", 1))
        await refund(till, terminal, "refund-me", command_id="r-rest")  # no amount: what remains
        await till.wait_for(terminal, count("order.refund", 2))
        await refund(till, terminal, "refund-me", command_id="r-nothing-left")
        await refund(till, terminal, "refund-me", 1, command_id="r-one-cent-more")
        await till.wait_for(terminal, count("command.failed", 3))
        await till.settled()  # every command answered: nothing else follows
        events = await till.events(terminal)
    upstream = {o["order_id"]: o for o in await sim_orders(simulator)}["refund-me"]

    assert statuses(events) == [
        "order.created",
        "initialized",
        "completed",
        "order.refund",
        "command.failed",
        "order.refund",
        "command.failed",
        "command.failed",
    ]
    assert refunds(events) == [(300, 300), (950, 1250)]
    refund_events = [e for e in events if e["type"] == "order.refund"]
    assert [e["status"] for e in refund_events] == ["partial_refunded", "refunded"]
    assert all(e["final"] is False and e["order_id"] == "refund-me" for e in refund_events)
    assert all(e["terminal_id"] == terminal and e["amount"] == 1250 for e in refund_events)
    assert sorted(failures(events)) == [
        ("r-nothing-left", "not_refundable"),
        ("r-one-cent-more", "not_refundable"),
        ("r-too-much", "not_refundable"),
    ]
    assert all(e["final"] is False for e in events if e["type"] == "command.failed")
    assert sum(e["final"] for e in events) == 1  # the payment's completed stays the only final
    assert len({e["event_id"] for e in events}) == len(events)
    # upstream agrees: exactly what the till was told was refunded, once each
    assert upstream["amount_refunded"] == 1250 and upstream["status"] == "refunded"
    # each refund is answered with its own command's id; the pay's stays in the details
    assert [e["command_id"] for e in refund_events] == ["r-1", "r-rest"]
    pay_id = events[0]["command_id"]
    assert all(e["details"]["pay_command_id"] == pay_id for e in refund_events)
    # the order key keeps the payment's outcome (its final), with the refunded total current
    latest = json.loads(await redis_client.get(till.keys.order("refund-me")))
    assert latest["type"] == "order.status" and latest["status"] == "completed"
    assert latest["final"] is True and latest["command_id"] == pay_id
    assert latest["details"]["amount_refunded"] == 1250
    assert latest["stream_id"] == events[2]["stream_id"]


async def test_refund_of_an_order_that_did_not_complete(
    redis_server, redis_client: Redis, simulator
) -> None:
    till = Till(redis_client)
    terminal = "SIM-CUSTOMER-CANCEL-01"
    async with running_bridge(bridge_config(redis_server.url, simulator.base_url)):
        command_id = await till.pay(terminal, 1250, order_id="never-paid")
        assert statuses(await till.until_final(terminal, command_id))[-1] == "cancelled"
        await refund(till, terminal, "never-paid", 500, command_id="r-cancelled")
        await refund(till, terminal, "never-paid", command_id="r-cancelled-all")
        # the stream's final is followed by its details, fetched as the session ends: they may
        # come before or after the refunds' answers, so the answers are found by command id
        await till.finished("never-paid")
        events = await till.events(terminal)
    assert sorted(failures(events)) == [
        ("r-cancelled", "not_refundable"),
        ("r-cancelled-all", "not_refundable"),
    ]
    answers = [e for e in events if e["type"] == "command.failed"]
    assert all("cancelled" in e["error"]["message"] for e in answers)
    assert not any(e["type"] == "order.refund" for e in events)
    upstream = {o["order_id"]: o for o in await sim_orders(simulator)}["never-paid"]
    assert upstream["amount_refunded"] == 0 and upstream["status"] == "cancelled"


def _webhook_config(redis_url: str, api_base_url: str, port: int):
    return bridge_config(
        redis_url,
        api_base_url,
        webhook={
            "enabled": True,
            "listen": f"127.0.0.1:{port}",
            "public_url": f"http://127.0.0.1:{port}",
        },
    )


async def _acknowledged_webhooks(
    sim: SimulatorServer, order_id: str, n: int
) -> list[dict[str, Any]]:
    """Wait until the simulator has had ``n`` notifications of the order acknowledged."""
    async with httpx.AsyncClient() as client:
        with anyio.fail_after(10):
            while True:
                attempts = (await client.get(sim.url + "_sim/webhooks")).json()["data"]
                done = [a for a in attempts if a["order_id"] == order_id and a["result"] == 200]
                if len(done) >= n:
                    return attempts
                await anyio.sleep(0.05)


async def test_refunds_with_webhooks_and_from_the_dashboard(
    redis_server, redis_client: Redis
) -> None:
    """Each refund reaches the bridge twice (the command's GET and the webhook): published once.
    A refund made on the dashboard (straight to the API) reaches the till by webhook alone."""
    port = free_port()
    till = Till(redis_client)
    terminal = "SIM-APPROVE-01"
    with SimulatorServer(speed=40) as sim:
        async with running_bridge(_webhook_config(redis_server.url, sim.base_url, port)):
            await paid(till, terminal, 2000, "hooked-refund")
            await _acknowledged_webhooks(sim, "hooked-refund", 2)  # initialized, completed
            await refund(till, terminal, "hooked-refund", 500, command_id="r-hook-1")
            await till.wait_for(terminal, count("order.refund", 1))
            await _acknowledged_webhooks(sim, "hooked-refund", 3)  # the refund's webhook too
            # the dashboard: the group's key, straight to MultiSafepay; the bridge never asked
            async with httpx.AsyncClient() as client:
                answer = await client.post(
                    sim.base_url + "orders/hooked-refund/refunds",
                    headers={"api_key": API_KEY},
                    json={"amount": 700, "currency": "EUR", "description": "dashboard"},
                )
            assert answer.status_code == 200, answer.text
            await till.wait_for(terminal, count("order.refund", 2))
            await refund(till, terminal, "hooked-refund", command_id="r-hook-rest")  # what remains
            await till.wait_for(terminal, count("order.refund", 3))
            # a notification is answered 200 only once its transition is in Redis, a command
            # acknowledged once answered: a duplicate of either would be published by now
            attempts = await _acknowledged_webhooks(sim, "hooked-refund", 5)
            await till.settled()
            events = of_order(await till.events(terminal), "hooked-refund")

    assert statuses(events) == [
        "order.created",
        "initialized",
        "completed",
        "order.refund",
        "order.refund",
        "order.refund",
    ]
    assert refunds(events) == [(500, 500), (700, 1200), (800, 2000)]
    by_amount = {e["details"]["amount_refunded"]: e for e in events if e["type"] == "order.refund"}
    assert by_amount[1200]["source"] == "webhook"  # only the webhook knew of the dashboard's
    assert {by_amount[500]["source"], by_amount[2000]["source"]} <= {"poll", "webhook"}
    assert sum(e["final"] for e in events) == 1 and events[2]["status"] == "completed"
    assert len({e["event_id"] for e in events}) == len(events)
    # every refund was notified (and acknowledged), yet each was published once
    refunded = [
        a
        for a in attempts
        if a["order_id"] == "hooked-refund"
        and a["status"] in ("partial_refunded", "refunded")
        and a["result"] == 200
    ]
    assert len(refunded) == 3


async def test_a_replayed_refund_refunds_once(redis_server, redis_client: Redis, simulator) -> None:
    """At-least-once delivery: the same refund command again (same id, same body) is a replay,
    and must not give the customer their money twice."""
    till = Till(redis_client)
    terminal = "SIM-APPROVE-01"
    async with running_bridge(bridge_config(redis_server.url, simulator.base_url)):
        await paid(till, terminal, 1250, "refund-once")
        command = {
            "type": "refund",
            "terminal_id": terminal,
            "order_id": "refund-once",
            "amount": 300,
            "command_id": "r-replayed",
        }
        await till.send(dict(command))
        await till.wait_for(terminal, count("order.refund", 1))
        await till.send(
            dict(command)
        )  # handed out again (e.g. the first daemon died before its ack)
        await till.send(dict(command, amount=400))  # the same id for another refund: refused
        await till.wait_for(terminal, count("command.failed", 1))
        await till.settled()  # the replay too is answered (or it never would be)
        events = await till.events(terminal)
    upstream = {o["order_id"]: o for o in await sim_orders(simulator)}["refund-once"]
    assert upstream["amount_refunded"] == 300
    assert refunds(events) == [(300, 300)]
    assert failures(events) == [("r-replayed", "invalid_command")]


async def test_the_order_key_after_a_partial_refund_and_refunds_of_another_terminal(
    redis_server, redis_client: Redis, simulator
) -> None:
    """After a partial refund the order key still holds the final (a till catching up from it
    does not wait forever), with ``details.amount_refunded``; a refund sent from another
    terminal is refused on that terminal and nothing is refunded."""
    till = Till(redis_client)
    terminal, other = "SIM-APPROVE-01", "TILL-B"
    async with running_bridge(bridge_config(redis_server.url, simulator.base_url)):
        await paid(till, terminal, 1000, "partly-back")
        await refund(till, other, "partly-back", 100, command_id="r-elsewhere")
        refused = await till.wait_for(other, count("command.failed", 1))
        await refund(till, terminal, "partly-back", 400, command_id="r-part")
        events = await till.wait_for(terminal, count("order.refund", 1))
    assert failures(refused) == [("r-elsewhere", "invalid_command")]
    assert "belongs to terminal SIM-APPROVE-01" in refused[0]["error"]["message"]
    assert not any(e["type"] == "command.failed" for e in events)  # nothing on the owner's
    refund_event = [e for e in events if e["type"] == "order.refund"]
    assert [(e["command_id"], e["details"]["refund_amount"]) for e in refund_event] == [
        ("r-part", 400)
    ]
    latest = json.loads(await redis_client.get(till.keys.order("partly-back")))
    assert (latest["type"], latest["status"], latest["final"]) == (
        "order.status",
        "completed",
        True,
    )
    assert latest["details"]["amount_refunded"] == 400
    upstream = {o["order_id"]: o for o in await sim_orders(simulator)}["partly-back"]
    assert upstream["amount_refunded"] == 400  # the other terminal's refund never went upstream
