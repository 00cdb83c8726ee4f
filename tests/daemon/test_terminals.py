"""Terminal groups: each group's terminals are paid with that group's key; terminals listed in
the config or discovered (``GET terminal-groups/{id}/terminals``) at start and on reload; a
terminal in no group fails clearly."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from helpers.harness import Till, bridge_config, running_bridge, sim_orders, statuses
from redis.asyncio import Redis

from bridge.config import Config
from bridge.redis.server import free_port
from bridge.simulator.scenarios import TERMINAL_GROUP, TERMINALS
from bridge.simulator.server import SimulatorServer

pytestmark = pytest.mark.anyio

KEY_A = "group-a-key-0123456789"
KEY_B = "group-b-key-9876543210"


def groups_config(
    redis_url: str, api_base_url: str, groups: list[dict[str, Any]], **sections: Any
) -> Config:
    return bridge_config(
        redis_url, api_base_url, multisafepay={"terminal_groups": groups}, **sections
    )


def errors(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["error"]["code"]) for e in events if e.get("error")]


async def lookup(sim: SimulatorServer, order_id: str, key: str) -> int:
    async with httpx.AsyncClient() as client:
        return (
            await client.get(f"{sim.base_url}orders/{order_id}", headers={"api_key": key})
        ).status_code


async def test_each_group_pays_with_its_own_key(redis_server, redis_client: Redis) -> None:
    port = free_port()
    till = Till(redis_client)
    groups = [
        {"name": "front", "api_key": KEY_A, "terminals": ["SIM-APPROVE-01", "TILL-A"]},
        {"name": "back", "api_key": KEY_B, "terminals": ["SIM-APPROVE-02", "till-b"]},
    ]
    with SimulatorServer(speed=40, api_keys=[KEY_A, KEY_B]) as sim:
        # webhooks too: each group's notifications are signed with, and checked against, its key
        config = groups_config(
            redis_server.url,
            sim.base_url,
            groups,
            webhook={
                "enabled": True,
                "listen": f"127.0.0.1:{port}",
                "public_url": f"http://127.0.0.1:{port}",
            },
        )
        async with running_bridge(config):
            paid = {
                t: await till.pay(t, 1250, order_id=f"o-{t.lower()}")
                for t in ("SIM-APPROVE-01", "SIM-APPROVE-02", "TILL-A", "TILL-B")
            }
            nowhere = await till.pay("SIM-APPROVE-03", 1250, order_id="o-nowhere")
            results = {t: await till.until_final(t, c) for t, c in paid.items()}
            failed = await till.until_final("SIM-APPROVE-03", nowhere)
            async with httpx.AsyncClient() as client:
                with anyio.fail_after(
                    10
                ):  # both groups' webhooks answered (initialized, completed)
                    while True:
                        hooks = (await client.get(sim.url + "_sim/webhooks")).json()["data"]
                        if len([a for a in hooks if a["result"] == 200]) >= 8:
                            break
                        await anyio.sleep(0.05)
        visible = {
            (o, k): await lookup(sim, o, k)
            for o in ("o-sim-approve-01", "o-till-a", "o-sim-approve-02", "o-till-b")
            for k in (KEY_A, KEY_B)
        }
        upstream = await sim_orders(sim)

    for terminal, events in results.items():
        # (two channels race at this speed: a webhook's "completed" may overtake "initialized").
        # A webhook that beats the create answer waits for it: every event of the payment has
        # its order.created first and carries the pay's command_id (until_final filters on it)
        assert statuses(events)[0] == "order.created" and statuses(events)[-1] == "completed", (
            terminal
        )
        assert sum(e["final"] for e in events) == 1
    # an order belongs to the key (account) that made it: the other group's key cannot see it
    assert visible == {
        ("o-sim-approve-01", KEY_A): 200,
        ("o-sim-approve-01", KEY_B): 404,
        ("o-till-a", KEY_A): 200,
        ("o-till-a", KEY_B): 404,
        ("o-sim-approve-02", KEY_A): 404,
        ("o-sim-approve-02", KEY_B): 200,
        ("o-till-b", KEY_A): 404,
        ("o-till-b", KEY_B): 200,
    }
    # the ID is sent to MultiSafepay as configured ("till-b"), used upper case on Redis
    assert {o["order_id"]: o["terminal_id"] for o in upstream}["o-till-b"] == "till-b"
    assert all(e["terminal_id"] == "TILL-B" for e in results["TILL-B"])
    # a terminal in no group: a clear final failure, and nothing sent upstream
    assert errors(failed) == [("order.failed", "unknown_terminal")] and failed[0]["final"] is True
    assert "no configured terminal group" in failed[0]["error"]["message"]
    assert "o-nowhere" not in {o["order_id"] for o in upstream}
    # every webhook went to its group's path and was verified with that group's key
    assert {(a["url"].rsplit("/", 1)[1], a["result"]) for a in hooks} == {
        ("front", 200),
        ("back", 200),
    }
    assert {a["order_id"] for a in hooks if a["url"].endswith("/back")} == {
        "o-sim-approve-02",
        "o-till-b",
    }


async def test_discovered_terminals_and_reload(redis_server, redis_client: Redis) -> None:
    """A group with ``discover = true`` gets the terminals MultiSafepay lists for it at start;
    a reload (SIGHUP) adds a group without disturbing the payment in flight."""
    till = Till(redis_client)
    shop = {"name": "shop", "api_key": KEY_A, "discover": True, "group_id": TERMINAL_GROUP}
    counters = {"name": "counters", "api_key": KEY_B, "discover": True, "group_id": 1002}
    counter = next(t.id for t in TERMINALS if t.group_id == 1002)  # e.g. 0000004D
    with SimulatorServer(speed=10) as sim:
        config = groups_config(redis_server.url, sim.base_url, [shop])
        # waiting before the daemon starts (as after a restart): handled only once discovered
        first = await till.pay("SIM-APPROVE-01", 1250, order_id="disc-1")
        async with running_bridge(config) as bridge:
            assert statuses(await till.until_final("SIM-APPROVE-01", first))[-1] == "completed"
            early = await till.pay(counter, 1250, order_id="too-early")  # group 1002 not configured
            assert errors(await till.until_final(counter, early)) == [
                ("order.failed", "unknown_terminal")
            ]

            in_flight = await till.pay("SIM-SOFTDECLINE-APPROVE-01", 1250, order_id="in-flight")
            await till.wait_for(
                "SIM-SOFTDECLINE-APPROVE-01",
                lambda ev: any(e["status"] == "initialized" for e in ev),
            )
            bridge.load_config = lambda: groups_config(
                redis_server.url, sim.base_url, [shop, counters]
            )
            await bridge._reload()  # what SIGHUP does
            assert bridge.sessions is not None and "in-flight" in bridge.sessions

            later = await till.pay(counter, 1250, order_id="after-reload")
            counted = await till.until_final(counter, later)
            flown = await till.until_final("SIM-SOFTDECLINE-APPROVE-01", in_flight)
            again = await till.pay(
                "SIM-APPROVE-01", 1250, order_id="disc-2"
            )  # the first group kept
            assert statuses(await till.until_final("SIM-APPROVE-01", again))[-1] == "completed"
            # listed by its group but not active: not discovered, so not paid on
            inactive = next(t.id for t in TERMINALS if not t.active)
            refused = await till.pay(inactive, 1250, order_id="on-inactive")
            assert errors(await till.until_final(inactive, refused)) == [
                ("order.failed", "unknown_terminal")
            ]
        visible = [
            await lookup(sim, o, k)
            for o, k in (
                ("disc-1", KEY_A),
                ("disc-1", KEY_B),
                ("after-reload", KEY_B),
                ("after-reload", KEY_A),
            )
        ]

    assert statuses(counted) == ["order.created", "initialized", "completed"]
    assert statuses(flown) == [
        "order.created",
        "initialized",
        "declined",
        "initialized",
        "completed",
    ]
    assert sum(e["final"] for e in flown) == 1
    # discovered terminals are paid with the key of the group that listed them
    assert visible == [200, 404, 200, 404]
