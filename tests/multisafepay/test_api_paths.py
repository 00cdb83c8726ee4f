"""The REST client against the simulator over real sockets: order ids containing ``/``.

MultiSafepay allows ``/`` in an order id (MultiSafepay/docs:
content/point-of-sale/smartpos-solutions.md), so every path segment is percent-encoded; an id
that looks like a path (``X/refunds``, ``X/cancel``) must reach its own order, never another
endpoint of order ``X``.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from bridge.core.events import ErrorCode
from bridge.multisafepay.api import ApiError, MultiSafepayApi, _path, rest_clients
from bridge.multisafepay.rest import RestPool
from bridge.simulator import SimulatorServer

pytestmark = pytest.mark.anyio

KEY = "paths-key-1"


@pytest.fixture  # one per test: each transport creates the same order ids
def sim() -> AsyncIterator[SimulatorServer]:
    with SimulatorServer(speed=20) as server:
        yield server


@pytest.fixture(params=["rest", "httpx"])
async def api(
    sim: SimulatorServer, request: pytest.FixtureRequest
) -> AsyncIterator[MultiSafepayApi]:
    """The API over the project's own client (the daemon's, without a proxy) and over httpx
    (with one): the same answers."""
    if request.param == "rest":
        pool = RestPool(tls=ssl.create_default_context())
        try:
            yield MultiSafepayApi(pool, sim.base_url, request_timeout=10.0)
        finally:
            pool.close()
        return
    async with httpx.AsyncClient() as http:
        yield MultiSafepayApi(http, sim.base_url, request_timeout=10.0)


async def _create(api: MultiSafepayApi, order_id: str, terminal: str, amount: int = 1250) -> None:
    created = await api.create_order(
        KEY,
        order_id=order_id,
        terminal_id=terminal,
        amount=amount,
        currency="EUR",
        description="paths",
    )
    assert created.order_id == order_id


async def _until(api: MultiSafepayApi, order_id: str, status: str) -> dict[str, Any]:
    with anyio.fail_after(20):
        while True:
            order = await api.get_order(KEY, order_id)
            if order["status"] == status:
                return order
            await anyio.sleep(0.05)


def test_every_segment_is_encoded() -> None:
    assert _path("orders", "till7/123", "refunds") == "orders/till7%2F123/refunds"
    assert _path("orders", "a b?c#d%e") == "orders/a%20b%3Fc%23d%25e"
    assert _path("terminal-groups", 7, "terminals") == "terminal-groups/7/terminals"


async def test_pay_get_refund_an_order_whose_id_has_slashes(api: MultiSafepayApi) -> None:
    await _create(api, "till7/2026/000123", "SIM-APPROVE-31", 1000)
    order = await _until(api, "till7/2026/000123", "completed")
    assert order["order_id"] == "till7/2026/000123"
    await api.refund_order(
        KEY, "till7/2026/000123", amount=400, currency="EUR", description="partial"
    )
    await api.refund_order(KEY, "till7/2026/000123", amount=600, currency="EUR", description="rest")
    order = await api.get_order(KEY, "till7/2026/000123")
    assert (order["status"], order["amount_refunded"]) == ("refunded", 1000)


async def test_cancel_an_order_whose_id_has_a_slash(api: MultiSafepayApi) -> None:
    # A hard decline waits 60 simulated seconds in `declined`: the troubleshooting page's fix
    # for an order stuck there is POST orders/{id}/cancel, which must work with a `/` in the id.
    await _create(api, "till7/000124", "SIM-DECLINE-31")
    await _until(api, "till7/000124", "declined")
    answer = await api.cancel_order(KEY, "till7/000124")
    assert answer["status"] == "cancelled"
    assert (await api.get_order(KEY, "till7/000124"))["status"] == "cancelled"


async def test_an_id_that_looks_like_a_path_reaches_its_own_order(api: MultiSafepayApi) -> None:
    await _create(api, "X31", "SIM-APPROVE-32", 1000)
    await _until(api, "X31", "completed")
    await _create(api, "X31/refunds", "SIM-APPROVE-33", 500)
    refunds_order = await _until(api, "X31/refunds", "completed")
    assert (refunds_order["order_id"], refunds_order["amount"]) == ("X31/refunds", 500)
    # a refund of "X31/refunds" refunds that order, not order X31
    await api.refund_order(KEY, "X31/refunds", amount=500, currency="EUR", description="r")
    assert (await api.get_order(KEY, "X31/refunds"))["amount_refunded"] == 500
    assert (await api.get_order(KEY, "X31"))["amount_refunded"] == 0
    # ids naming another endpoint of X31 that do not exist are unknown orders, and X31 is untouched
    for lookalike in ("X31/cancel", "X31/refunds/1", "X31/../X31"):
        with pytest.raises(ApiError) as err:
            await api.get_order(KEY, lookalike)
        assert err.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(ApiError) as err:
        await api.cancel_order(KEY, "X31/cancel")
    assert err.value.code is ErrorCode.NOT_FOUND
    assert (await api.get_order(KEY, "X31"))["status"] == "completed"


async def test_calls_go_to_the_least_busy_of_the_rest_clients(sim: SimulatorServer) -> None:
    """Calls in flight together are spread over the clients (each pool stays short); one call
    at a time always uses the first (its connections are reused)."""
    used: list[int] = []

    def hook(shard: int) -> Any:
        async def record(_request: httpx.Request) -> None:
            used.append(shard)

        return record

    async with rest_clients(shards=3) as clients:
        for shard, client in enumerate(clients):
            client.event_hooks["request"] = [hook(shard)]
        api = MultiSafepayApi(clients, sim.base_url, request_timeout=10.0)
        await _create(api, "shards-1", "SIM-APPROVE-01")
        for _ in range(3):
            await api.get_order(KEY, "shards-1")
        assert used == [0, 0, 0, 0]
        used.clear()
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(api.get_order, KEY, "shards-1")
        assert sorted(used) == [0, 1, 2]
