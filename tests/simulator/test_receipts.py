"""The simulator's receipt endpoint over real sockets, read with the bridge's own REST client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import httpx
import pytest

from bridge.core.events import ErrorCode
from bridge.core.receipt import ReceiptResult, normalize_receipt
from bridge.multisafepay.api import ApiError, MultiSafepayApi
from bridge.simulator import SimulatorServer
from tests.simulator.conftest import KEY, create, new_order_id
from tests.simulator.test_api import wait_final

pytestmark = pytest.mark.anyio

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "receipts"
AMSTERDAM = ZoneInfo("Europe/Amsterdam")


def documented(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())["data"]
    return data


@pytest.fixture
async def api(sim: SimulatorServer) -> AsyncIterator[MultiSafepayApi]:
    async with httpx.AsyncClient() as http:
        yield MultiSafepayApi(http, sim.base_url, request_timeout=10)


async def admin(sim: SimulatorServer, method: str, body: Any = None) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.request(method, sim.url + "_sim/receipts", json=body)


def paid_order(sim: SimulatorServer, terminal: str, amount: int = 1250, **kw: Any) -> dict:
    order_id = kw.pop("order_id", None) or new_order_id("rcpt")
    assert create(sim, terminal, amount, order_id=order_id, **kw).status_code == 200
    return wait_final(sim, order_id)


async def test_completed_receipt_has_the_card_the_order_played(
    sim: SimulatorServer, api: MultiSafepayApi
) -> None:
    order = paid_order(sim, "SIM-APPROVE-01")
    data = await api.get_receipt(KEY, order["order_id"])
    shape = documented("getReceipt.json")
    assert set(data) == set(shape)
    assert set(data["order"]) == set(shape["order"])
    assert set(data["payment"]) == set(shape["payment"])
    card = order["payment_details"]
    assert data["payment"]["last4"] == card["last4"]
    assert data["payment"]["authorization_code"] == card["authorization_code"]
    assert data["payment"]["payment_method"] == card["type"]
    assert data["payment"]["response_code"] == "00"
    assert data["order"]["completed"] == order["completed"]
    assert data["order"]["transaction_id"] == str(order["transaction_id"])
    assert data["related_transactions"] is None
    assert normalize_receipt(data, AMSTERDAM).result is ReceiptResult.APPROVED


async def test_declined_then_cancelled_receipt(sim: SimulatorServer, api: MultiSafepayApi) -> None:
    order = paid_order(sim, "SIM-SOFTDECLINE-CANCEL-01")
    assert order["status"] == "cancelled"
    data = await api.get_receipt(KEY, order["order_id"])
    assert set(data["payment"]) == set(documented("gerReceiptDeclined.json")["payment"])
    assert data["order"]["completed"] is None
    assert data["payment"]["response_code"] == "65"
    assert data["payment"]["cardholder_verification_method"] == "FAILED"
    assert data["payment"]["last4"] == order["payment_details"]["last4"]
    assert normalize_receipt(data, AMSTERDAM).result is ReceiptResult.DECLINED


async def test_cancelled_without_a_card(sim: SimulatorServer, api: MultiSafepayApi) -> None:
    order = paid_order(sim, "SIM-CUSTOMER-CANCEL-01")
    data = await api.get_receipt(KEY, order["order_id"])
    assert data["payment"]["last4"] is None and data["payment"]["payment_method"] is None
    receipt = normalize_receipt(data, AMSTERDAM)
    assert receipt.result is ReceiptResult.NOT_COMPLETED and receipt.amount == 1250


async def test_refunded_receipt_lists_the_refund(
    sim: SimulatorServer, api: MultiSafepayApi
) -> None:
    order = paid_order(sim, "SIM-APPROVE-01", amount=2500)
    await api.refund_order(KEY, order["order_id"], amount=1000, currency="EUR", description="r")
    data = await api.get_receipt(KEY, order["order_id"])
    related = data["related_transactions"]
    assert isinstance(related, list) and len(related) == 1
    assert set(related[0]) == set(documented("getReceiptRefund.json")["related_transactions"][0])
    assert (related[0]["type"], related[0]["amount"]) == ("refund", 1000)
    assert data["order"]["amountrefunded"] == 1000


async def test_unknown_order_and_another_keys_order_are_1006(
    sim: SimulatorServer, api: MultiSafepayApi
) -> None:
    order = paid_order(sim, "SIM-APPROVE-01")
    for key, order_id in (
        (KEY, "no-such-order"),
        ("another-key", order["order_id"]),
    ):
        with pytest.raises(ApiError) as info:
            await api.get_receipt(key, order_id)
        assert info.value.code is ErrorCode.NOT_FOUND
        assert (info.value.http_status, info.value.upstream_code) == (404, 1006)


async def test_order_id_with_a_slash(sim: SimulatorServer, api: MultiSafepayApi) -> None:
    """``/`` is allowed in an order id: the client percent-encodes it as one path segment."""
    order_id = f"{new_order_id('shop')}/7"
    assert create(sim, "SIM-APPROVE-01", 1250, order_id=order_id).status_code == 200
    with anyio.fail_after(10):
        while True:
            if (await api.get_receipt(KEY, order_id))["order"]["completed"] is not None:
                break
            await anyio.sleep(0.02)
    assert (await admin(sim, "GET")).json()["data"]["served"][-1] == order_id


async def test_failures_on_demand(sim: SimulatorServer, api: MultiSafepayApi) -> None:
    order = paid_order(sim, "SIM-APPROVE-01")
    (await admin(sim, "PUT", {"fail": 1})).raise_for_status()
    with pytest.raises(ApiError) as info:
        await api.get_receipt(KEY, order["order_id"])
    assert info.value.code is ErrorCode.UPSTREAM_UNAVAILABLE
    assert (await api.get_receipt(KEY, order["order_id"]))["order"]["amount"] == 1250
    bad = await admin(sim, "PUT", {"hold": "yes"})
    assert bad.status_code == 400
    served = (await admin(sim, "GET")).json()["data"]["served"]
    assert served.count(order["order_id"]) == 1  # the failed request served nothing
