"""A daemon in-process against the simulator and a private Redis, and a till to drive it."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
from redis.asyncio import Redis

from bridge.config import Config
from bridge.daemon.app import Bridge
from bridge.redis.keys import COMMANDS_GROUP, Keys
from bridge.simulator.scenarios import BY_TERMINAL
from bridge.simulator.server import SimulatorServer

API_KEY = "test-group-key-0123456789"
PLAIN_TERMINALS = ["0000004d", "TILL-A", "TILL-B"]
SIM_TERMINALS = [f"{prefix}-01" for prefix in BY_TERMINAL]


def bridge_config(redis_url: str, api_base_url: str, **overrides: Any) -> Config:
    upstream = {
        "api_base_url": api_base_url,
        "connect_timeout": 2.0,
        "request_timeout": 2.0,
        "stream_idle_timeout": 3.0,
        "reconnect_initial": 0.05,
        "reconnect_cap": 0.5,
        "poll_interval": 0.5,
        "max_payment_age": 30.0,
        "create_retries": 1,
        "terminal_groups": [
            {"name": "shop", "api_key": API_KEY, "terminals": SIM_TERMINALS + PLAIN_TERMINALS},
        ],
    }
    upstream.update(overrides.pop("multisafepay", {}))
    data = {
        "multisafepay": upstream,
        "redis": {"url": redis_url, "order_ttl": 3600, "command_claim_idle": 5.0},
        "log": {"level": "debug", "format": "json"},
        "http": {"listen": "127.0.0.1:0"},  # /healthz, /metrics on a free port (bridge.ops.port)
    }
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    return Config.from_mapping(data)


@asynccontextmanager
async def running_bridge(config: Config) -> AsyncIterator[Bridge]:
    bridge = Bridge(config)
    async with anyio.create_task_group() as tg:
        await tg.start(bridge.run)
        try:
            yield bridge
        finally:
            bridge.request_stop()


class Till:
    """Plays a till: writes commands, reads a terminal's events from the durable stream."""

    def __init__(self, redis: Redis, prefix: str = "pos") -> None:
        self.redis = redis
        self.keys = Keys(prefix)

    async def send(self, command: dict[str, Any]) -> str:
        command.setdefault("command_id", "t-" + uuid.uuid4().hex[:12])
        await self.redis.xadd(self.keys.commands, {"command": json.dumps(command)})
        return command["command_id"]

    async def pay(self, terminal: str, amount: int, **kw: Any) -> str:
        return await self.send({"type": "pay", "terminal_id": terminal, "amount": amount, **kw})

    async def events(self, terminal: str) -> list[dict[str, Any]]:
        entries = await self.redis.xrange(self.keys.terminal_stream(terminal))
        return [json.loads(fields["event"]) | {"stream_id": eid} for eid, fields in entries]

    async def wait_for(
        self, terminal: str, predicate: Any, timeout: float = 15.0
    ) -> list[dict[str, Any]]:
        """Events of the terminal once ``predicate(events)`` holds (polling the stream)."""
        with anyio.fail_after(timeout):
            while True:
                events = await self.events(terminal)
                if predicate(events):
                    return events
                await anyio.sleep(0.05)

    async def settled(self, timeout: float = 15.0) -> None:
        """Every command sent so far was read and acknowledged: the daemon acknowledges a command
        once its answer is published, so what it publishes for them is in the streams by now.
        The marker to wait for instead of "sleep a while, nothing more arrives"."""
        with anyio.fail_after(timeout):
            while not await self._all_commands_acknowledged():  # noqa: ASYNC110  # Redis state
                await anyio.sleep(0.02)

    async def finished(self, order_id: str, timeout: float = 15.0) -> None:
        """Every command answered and the order followed no more (its session has left the
        registry): nothing more will be published for it."""
        await self.settled(timeout)
        with anyio.fail_after(timeout):
            while await self.redis.sismember(self.keys.sessions_index, order_id):  # noqa: ASYNC110  # Redis state
                await anyio.sleep(0.02)

    async def _all_commands_acknowledged(self) -> bool:
        last = (await self.redis.xinfo_stream(self.keys.commands))["last-generated-id"]
        for group in await self.redis.xinfo_groups(self.keys.commands):
            if group["name"] == COMMANDS_GROUP:
                return bool(group["pending"] == 0 and group["last-delivered-id"] == last)
        return False

    async def until_final(
        self, terminal: str, command_id: str, timeout: float = 15.0
    ) -> list[dict[str, Any]]:
        """The command's events up to and including its final one, once it came."""

        def done(events: list[dict[str, Any]]) -> bool:
            return any(e["final"] and e["command_id"] == command_id for e in events)

        events = await self.wait_for(terminal, done, timeout)
        mine = [e for e in events if e["command_id"] == command_id]
        # up to the final: what may follow it (order.details, refunds) is read with events()
        return mine[: next(i for i, e in enumerate(mine) if e["final"]) + 1]


async def sim_orders(sim: SimulatorServer) -> list[dict[str, Any]]:
    """The orders the simulator holds (its admin API): what really happened upstream."""
    return await _sim_admin_list(sim, "orders")


async def sim_webhooks(sim: SimulatorServer) -> list[dict[str, Any]]:
    """The webhook deliveries the simulator attempted (its admin API)."""
    return await _sim_admin_list(sim, "webhooks")


async def _sim_admin_list(sim: SimulatorServer, what: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        data: list[dict[str, Any]] = (await client.get(f"{sim.url}_sim/{what}")).json()["data"]
        return data


def statuses(events: list[dict[str, Any]]) -> list[str]:
    """The transitions a till acts on, by status or type; ``order.details`` (card details that
    follow a final) are left out: tests that care read them with :func:`details_of`."""
    return [
        e["type"] if e["type"] != "order.status" else e["status"]
        for e in events
        if e["type"] != "order.details"
    ]


def details_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "order.details"]


def assert_faithful(events: list[dict[str, Any]], happened: list[str]) -> None:
    """What the bridge guarantees for one payment whose upstream went through ``happened``
    (``order.created`` first): ``order.created``, then statuses in the order they happened, none
    invented or repeated, and the final, once, last (``order.details`` aside: it may follow).
    A status that came and went between two looks (before the stream opened, between polls)
    may be missing: no exact sequence."""
    events = [e for e in events if e["type"] != "order.details"]
    got = statuses(events)
    assert got[0] == "order.created" and got[-1] == happened[-1], (got, happened)
    rest = iter(happened)
    assert all(any(s == h for h in rest) for s in got), (got, happened)  # a subsequence
    assert len({e["event_id"] for e in events}) == len(events), got
    assert [e["final"] for e in events] == [False] * (len(events) - 1) + [True], got
