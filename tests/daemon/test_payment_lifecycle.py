"""What a payment in flight holds in the daemon, and how it lets go: a quiet payment is one task
and two timers on the shared scheduler; a lost lease and a stop each end it without a task or a
timer left behind, and only a stop releases the lease. Real Redis and simulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import anyio
import httpx
import pytest
from helpers.harness import Till, bridge_config, running_bridge, statuses
from redis.asyncio import Redis
from structlog.testing import capture_logs

from bridge.daemon.ownership import Sessions
from bridge.simulator.server import SimulatorServer

pytestmark = pytest.mark.anyio

TERMINAL = "SIM-MANUAL-01"  # initialized, then waits for a person: quiet for as long as needed


def task_names() -> list[str]:
    return [task.get_name() for task in asyncio.all_tasks()]


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - the daemon's state, in this process
            await anyio.sleep(0.02)


async def quiet_payment(till: Till) -> str:
    """Pay on the manual terminal; its order id once it is initialized (the stream is open)."""
    await till.pay(TERMINAL, 1250)
    events = await till.wait_for(TERMINAL, lambda ev: "initialized" in statuses(ev))
    order_id: str = events[0]["order_id"]
    return order_id


async def test_a_quiet_payment_is_no_task_and_a_lost_lease_leaves_nothing(
    redis_server, redis_client: Redis, simulator
) -> None:
    config = bridge_config(
        redis_server.url, simulator.base_url, multisafepay={"poll_interval": 600.0}
    )
    till = Till(redis_client)
    async with running_bridge(config) as bridge:
        sessions = bridge.sessions
        assert isinstance(sessions, Sessions)
        order_id = await quiet_payment(till)
        assert order_id in sessions
        # no task at all between events: its stream is a connection, the rest timers
        await until(lambda: sessions.running[order_id].live)  # connected, first GET asked
        await until(lambda: not [n for n in task_names() if "PaymentSession" in n])
        assert not [n for n in task_names() if order_id in n]
        assert len(sessions.timers) == 3  # its poll, its deadline and its stream's idle check

        # Another live daemon holds the lease now (as after a stall past the lease's TTL).
        await redis_client.set(
            till.keys.daemon("other"),
            json.dumps({"host": "elsewhere", "pid": 1, "incarnation": "i2"}),
            px=600_000,
        )
        await redis_client.set(till.keys.lease(order_id), "999999:i2@other", px=600_000)
        await until(lambda: order_id not in sessions)
        assert len(sessions.timers) == 0
        assert f"session {order_id}" not in task_names()
        # the new owner's lease is left alone, and so is the payment's registry entry
        assert await redis_client.get(till.keys.lease(order_id)) == "999999:i2@other"
        assert await redis_client.sismember(till.keys.sessions_index, order_id)


async def test_a_stop_hands_a_quiet_payment_over(
    redis_server, redis_client: Redis, simulator
) -> None:
    config = bridge_config(
        redis_server.url,
        simulator.base_url,
        daemon={"shutdown_grace": 0.5},
    )
    till = Till(redis_client)
    async with running_bridge(config) as bridge:
        sessions = bridge.sessions
        assert isinstance(sessions, Sessions)
        order_id = await quiet_payment(till)
        assert await redis_client.get(till.keys.lease(order_id)) is not None
    # drained for the grace, then stopped: the lease released at once for another daemon, the
    # payment kept in the registry, nothing of it left running
    assert not sessions.running and len(sessions.timers) == 0
    assert f"session {order_id}" not in task_names()
    assert await redis_client.get(till.keys.lease(order_id)) is None
    assert await redis_client.sismember(till.keys.sessions_index, order_id)


async def test_a_lease_outlives_a_create_slower_than_its_ttl(
    redis_server, redis_client: Redis
) -> None:
    """The lease is taken before ``POST orders``; a create that takes four times the lease's
    TTL must not let it lapse (this daemon's own orphan scan would then take the payment over
    mid-open, and the pay's commit be refused)."""
    with SimulatorServer(speed=1) as sim:  # SIM-SLOW: every answer about the order takes 4 s
        config = bridge_config(
            redis_server.url,
            sim.base_url,
            multisafepay={"request_timeout": 20.0},
            daemon={"lease_ttl": 1.0},
        )
        till = Till(redis_client)
        with capture_logs() as logs:
            async with running_bridge(config):
                command_id = await till.pay("SIM-SLOW-01", 1250)
                events = await till.until_final("SIM-SLOW-01", command_id, timeout=90)
    assert statuses(events)[0] == "order.created" and events[-1]["status"] == "completed"
    lapsed = [e for e in logs if e["event"] in ("session.adopted", "session.lease_lost")]
    assert not lapsed, lapsed
    assert not [e for e in logs if e["event"] == "command.crashed"]


async def test_a_lease_that_lapsed_with_nobody_taking_it_is_renewed(
    redis_server, redis_client: Redis, simulator
) -> None:
    """As after a stall past the TTL (a GC pause, a starved CPU) with no other daemon taking
    the payment: the renewal sets the lease again and the payment goes on, not lost and
    taken over again by this very daemon."""
    config = bridge_config(redis_server.url, simulator.base_url)
    till = Till(redis_client)
    with capture_logs() as logs:
        async with running_bridge(config) as bridge:
            sessions = bridge.sessions
            assert isinstance(sessions, Sessions)
            order_id = await quiet_payment(till)
            lease = till.keys.lease(order_id)
            token = await redis_client.get(lease)
            await redis_client.delete(lease)  # lapsed
            with anyio.fail_after(15):
                while not await redis_client.exists(lease):  # noqa: ASYNC110 - Redis state
                    await anyio.sleep(0.02)
            assert await redis_client.get(lease) == token
            assert order_id in sessions
    assert [e["count"] for e in logs if e["event"] == "leases.revived"] == [1]
    assert not [e for e in logs if e["event"] in ("session.lease_lost", "session.adopted")]


async def test_a_connected_stream_is_polled_rarely_and_a_lost_one_at_once(
    redis_server, redis_client: Redis, simulator
) -> None:
    """While a quiet order's stream is connected it is polled only after POLL_BACKOFF_LIMIT
    intervals; once the stream is lost it is asked at once and polled at its interval again
    (the reconnect here waits seconds, so the stream stays down meanwhile)."""
    interval = 0.3
    config = bridge_config(
        redis_server.url,
        simulator.base_url,
        multisafepay={"poll_interval": interval, "reconnect_initial": 5.0, "reconnect_cap": 5.0},
    )
    till = Till(redis_client)
    async with running_bridge(config) as bridge:
        sessions = bridge.sessions
        assert isinstance(sessions, Sessions)
        order_id = await quiet_payment(till)
        session = sessions.running[order_id]
        await until(lambda: session.live)
        api = session.ctx.api
        real_get = api.get_order
        polls: list[str] = []

        async def counted(api_key: str, polled: str) -> dict[str, object]:
            polls.append(polled)
            return await real_get(api_key, polled)

        api.get_order = counted  # type: ignore[method-assign]  # counts, then the real call
        await anyio.sleep(4 * interval)  # a stream-less order: polled twice by now
        assert polls == []
        async with httpx.AsyncClient() as http:
            root = simulator.base_url.removesuffix("v1/json/")
            dropped = await http.post(f"{root}_sim/orders/{order_id}/drop")
            assert dropped.json()["data"]["dropped"] >= 1
        await until(lambda: not session.live)
        await until(lambda: len(polls) >= 3, timeout=3.0)  # the loss's GET, then polls
        assert set(polls) == {order_id}
        assert not session.live  # all while the stream was down
