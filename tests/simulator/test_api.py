"""The simulator's REST API over real sockets."""

from __future__ import annotations

import time

import httpx
import pytest
from helpers.vectors import vector_json

from bridge.simulator import SimulatorServer
from tests.simulator.conftest import (
    KEY,
    SteppedClock,
    create,
    in_background,
    new_order_id,
    order_body,
    read_sse,
    statuses,
    wait_admin,
)


def wait_final(sim: SimulatorServer, order_id: str, key: str = KEY, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = httpx.get(f"{sim.base_url}orders/{order_id}", headers={"api_key": key}).json()[
            "data"
        ]
        if data["status"] in ("completed", "cancelled"):
            return data
        time.sleep(0.02)
    raise AssertionError(f"{order_id} not final")


def test_create_answer_shape(sim: SimulatorServer) -> None:
    r = create(sim, "SIM-APPROVE-01")
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True
    d = body["data"]
    # MultiSafepay/docs: content/point-of-sale/event-notifications.md ("Example response")
    assert set(d) == {
        "order_id",
        "session_id",
        "payment_url",
        "events_token",
        "events_url",
        "events_stream_url",
    }
    assert d["payment_url"].startswith(f"http://127.0.0.1:{sim.port}/connect/{d['session_id']}/")
    assert d["events_stream_url"] == f"http://127.0.0.1:{sim.port}/events/stream/"
    assert d["events_url"] == f"ws://127.0.0.1:{sim.port}/events/"
    wait_final(sim, d["order_id"])


def test_urls_use_the_host_the_client_used(sim: SimulatorServer) -> None:
    r = httpx.post(
        f"http://localhost:{sim.port}/v1/json/orders",
        headers={"api_key": KEY},
        json=order_body("SIM-APPROVE-02"),
    )
    assert r.json()["data"]["events_stream_url"].startswith(f"http://localhost:{sim.port}/")
    wait_final(sim, r.json()["data"]["order_id"])


@pytest.mark.parametrize("how", ["header", "bearer", "query"])
def test_api_key_forms(sim: SimulatorServer, how: str) -> None:
    body = order_body("SIM-APPROVE-03")
    headers, params = {}, {}
    if how == "header":
        headers["api_key"] = KEY
    elif how == "bearer":
        headers["Authorization"] = f"Bearer {KEY}"
    else:
        params["api_key"] = KEY
    r = httpx.post(sim.base_url + "orders", headers=headers, params=params, json=body)
    assert r.status_code == 200, r.text
    assert (
        httpx.get(f"{sim.base_url}orders/{body['order_id']}", params={"api_key": KEY}).status_code
        == 200
    )
    wait_final(sim, body["order_id"])


def test_missing_key_is_401(sim: SimulatorServer) -> None:
    for headers in ({}, {"api_key": ""}, {"Authorization": "Bearer"}):
        r = httpx.post(sim.base_url + "orders", headers=headers, json=order_body("SIM-APPROVE-04"))
        assert r.status_code == 401
        assert r.json() == {
            "success": False,
            "data": {},
            "error_code": 1032,
            "error_info": "Invalid API key",
        }


def test_allowed_keys_only() -> None:
    with SimulatorServer(speed=100, api_keys=["good-key"]) as s:
        assert create(s, "SIM-APPROVE-01", key="other").status_code == 401
        assert create(s, "SIM-APPROVE-01", key="good-key").status_code == 200


def test_other_key_sees_no_order(sim: SimulatorServer) -> None:
    d = create(sim, "SIM-APPROVE-05").json()["data"]
    for method, path in (("GET", ""), ("POST", "/cancel"), ("POST", "/refunds")):
        r = httpx.request(
            method,
            f"{sim.base_url}orders/{d['order_id']}{path}",
            headers={"api_key": "someone-else"},
            json={"amount": 1, "currency": "EUR"},
        )
        assert r.status_code == 404 and r.json()["error_code"] == 1006
    wait_final(sim, d["order_id"])


@pytest.mark.parametrize(
    "change,code",
    [
        ({"order_id": "has space"}, 1006),
        ({"order_id": "x" * 51}, 1006),
        ({"amount": 0}, 1001),
        ({"amount": "12"}, 1001),
        ({"description": "d" * 201}, 1008),
        # required (MultiSafepay/docs: openapi/components/schemas/CloudMode.yaml)
        ({"description": None}, 1008),
        ({"description": ""}, 1008),
        ({"currency": None}, 1002),
        ({"gateway_info": {}}, 1016),
    ],
)
def test_validation_errors(sim: SimulatorServer, change: dict, code: int) -> None:
    body = order_body("SIM-APPROVE-06")
    body.update(change)
    r = httpx.post(sim.base_url + "orders", headers={"api_key": KEY}, json=body)
    assert r.status_code == 400
    j = r.json()
    assert j["success"] is False and j["error_code"] == code and j["error_info"]


def test_not_json_and_unknown_path(sim: SimulatorServer) -> None:
    r = httpx.post(sim.base_url + "orders", headers={"api_key": KEY}, content=b"{nope")
    assert r.status_code == 400 and r.json()["error_code"] == 1016
    r = httpx.get(sim.base_url + "nothing-here", headers={"api_key": KEY})
    assert r.status_code == 404 and r.json()["success"] is False


def test_duplicate_order_id(sim: SimulatorServer) -> None:
    oid = new_order_id("dup")
    assert create(sim, "SIM-APPROVE-07", order_id=oid).status_code == 200
    wait_final(sim, oid)
    r = create(sim, "SIM-APPROVE-07", order_id=oid)
    assert r.status_code == 409 and r.json()["error_code"] == 1006


def test_busy_terminal_then_free(sim: SimulatorServer) -> None:
    first = create(sim, "SIM-TIMEOUT-09").json()["data"]["order_id"]
    r = create(sim, "sim-timeout-09")  # the same terminal written in lower case
    assert r.status_code == 409 and r.json()["error_code"] == 1022  # "Cannot initiate"
    httpx.post(f"{sim.base_url}orders/{first}/cancel", headers={"api_key": KEY})
    assert create(sim, "SIM-TIMEOUT-09").status_code == 200


def test_unknown_terminal_and_failing_api(sim: SimulatorServer) -> None:
    r = create(sim, "SIM-UNKNOWN-01")
    assert r.status_code == 404 and r.json()["error_code"] == 1000  # no code documented
    body = order_body("SIM-FAIL-01")
    r = httpx.post(sim.base_url + "orders", headers={"api_key": KEY}, json=body)
    assert r.status_code == 500 and r.json()["success"] is False
    # no order was made, and the terminal is free
    assert (
        httpx.get(f"{sim.base_url}orders/{body['order_id']}", headers={"api_key": KEY}).status_code
        == 404
    )
    r = create(sim, "0000FA11", amount=1209)  # amount ending 09: the API fails too
    assert r.status_code == 500


def test_create_timeout_still_creates(sim: SimulatorServer) -> None:
    body = order_body("SIM-CREATE-TIMEOUT-01")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(sim.base_url + "orders", headers={"api_key": KEY}, json=body, timeout=0.5)
    data = wait_final(sim, body["order_id"])
    assert data["status"] == "completed"


def test_slow_api(stepped: tuple[SimulatorServer, SteppedClock]) -> None:
    sim, clock = stepped
    order_id = new_order_id("slow")
    answer = in_background(lambda: create(sim, "SIM-SLOW-01", order_id=order_id))
    wait_admin(sim, order_id, lambda o: True)  # made upstream...
    assert answer.running  # ...and its answer held: only the clock can let it go
    clock.step(3)  # the held answer (SLOW_ANSWER) and the payment's two steps
    assert answer().status_code == 200
    # (every API answer about a slow order is held: its end is read from the admin API)
    wait_admin(sim, order_id, lambda o: o["status"] == "completed")


def test_get_completed_order_shape(sim: SimulatorServer) -> None:
    d = create(sim, "SIM-APPROVE-08", amount=1250).json()["data"]
    data = wait_final(sim, d["order_id"])
    assert data["status"] == data["financial_status"] == "completed"
    assert data["amount"] == 1250 and data["currency"] == "EUR" and data["amount_refunded"] == 0
    pd = data["payment_details"]
    assert pd["terminal_id"] == "sim-approve-08"
    assert pd["type"] in ("VISA", "MASTERCARD") and len(pd["last4"]) == 4
    assert pd["card_entry_mode"] and pd["authorization_code"] and pd["response_code"] == "00"
    assert isinstance(data["transaction_id"], int)
    for ts in ("created", "modified", "completed"):
        assert len(data[ts]) == 19 and data[ts][10] == "T"  # no zone, like MultiSafepay
    assert data["reason"] == "Approved"
    for k in (
        "costs",
        "related_transactions",
        "payment_methods",
        "customer",
        "custom_info",
        "var1",
        "var2",
        "var3",
    ):
        assert k in data


def test_soft_decline_is_code_65_then_a_step_up_transaction(sim_ids: SimulatorServer) -> None:
    """MultiSafepay/docs: content/point-of-sale/pos-card-payment-flow.md: declined (65/71),
    then `initialized` for the step-up transaction, then completed."""
    d = create(sim_ids, "SIM-SOFTDECLINE-APPROVE-07").json()["data"]
    msgs = read_sse(d["events_stream_url"], d["events_token"], last_event_id="0")
    assert statuses(msgs) == ["initialized", "declined", "initialized", "completed"]
    final = wait_final(sim_ids, d["order_id"])
    assert final["status"] == "completed" and final["payment_details"]["response_code"] == "00"
    d = create(sim_ids, "SIM-SOFTDECLINE-CANCEL-07").json()["data"]
    msgs = read_sse(d["events_stream_url"], d["events_token"], last_event_id="0")
    assert statuses(msgs) == ["initialized", "declined", "initialized", "cancelled"]
    final = wait_final(sim_ids, d["order_id"])  # the decline's code stays on the order
    assert final["status"] == "cancelled" and final["payment_details"]["response_code"] == "65"


def test_declined_has_reason(sim: SimulatorServer) -> None:
    d = create(sim, "SIM-DECLINE-01").json()["data"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        data = httpx.get(f"{sim.base_url}orders/{d['order_id']}", headers={"api_key": KEY}).json()[
            "data"
        ]
        if data["status"] == "declined":
            break
        time.sleep(0.005)
    assert data["status"] == "declined" and data["reason"] and data["reason_code"]
    assert wait_final(sim, d["order_id"])["status"] == "cancelled"


def test_cancel(sim: SimulatorServer) -> None:
    d = create(sim, "SIM-TIMEOUT-02").json()["data"]
    r = httpx.post(f"{sim.base_url}orders/{d['order_id']}/cancel", headers={"api_key": KEY})
    assert r.status_code == 200
    assert r.json()["success"] is True and r.json()["data"]["status"] == "cancelled"
    # the keys of MultiSafepay's documented cancel answer (vendored vector)
    assert set(r.json()["data"]) == set(vector_json("cancel-order-response.json")["data"])
    r = httpx.post(f"{sim.base_url}orders/{d['order_id']}/cancel", headers={"api_key": KEY})
    assert r.status_code == 409 and r.json()["error_code"] == 1000  # no code documented
    r = httpx.post(f"{sim.base_url}orders/nope-404/cancel", headers={"api_key": KEY})
    assert r.status_code == 404 and r.json()["error_code"] == 1006


def test_refunds(sim: SimulatorServer) -> None:
    """MultiSafepay/docs: openapi/components/requestBody/Refund.yaml (currency required; no,
    empty or 0 amount = full refund) and api/general/error-reference.md (1034)."""
    d = create(sim, "SIM-APPROVE-09", amount=1000).json()["data"]
    url = f"{sim.base_url}orders/{d['order_id']}/refunds"
    h = {"api_key": KEY}
    wait_final(sim, d["order_id"])
    r = httpx.post(url, headers=h, json={"amount": 300})
    assert r.status_code == 400 and r.json()["error_code"] == 1002  # currency is required
    r = httpx.post(url, headers=h, json={"currency": "EUR", "amount": 300, "description": "x"})
    assert r.status_code == 200 and r.json()["data"]["order_id"] == d["order_id"]
    assert set(r.json()["data"]) == {"order_id", "transaction_id"}  # refundOrder.json
    data = httpx.get(f"{sim.base_url}orders/{d['order_id']}", headers=h).json()["data"]
    assert (data["status"], data["amount_refunded"]) == ("partial_refunded", 300)
    r = httpx.post(url, headers=h, json={"currency": "EUR", "amount": 300})
    assert r.status_code == 400 and r.json()["error_code"] == 1034  # same amount within 5 min
    r = httpx.post(url, headers=h, json={"currency": "EUR", "amount": 701})
    assert r.status_code == 400 and r.json()["error_code"] == 1034  # more than remains
    r = httpx.post(url, headers=h, json={"currency": "EUR", "amount": 200})
    assert r.status_code == 200
    r = httpx.post(url, headers=h, json={"currency": "EUR", "amount": 0})  # 0: what remains
    assert r.status_code == 200
    data = httpx.get(f"{sim.base_url}orders/{d['order_id']}", headers=h).json()["data"]
    assert (data["status"], data["amount_refunded"]) == ("refunded", 1000)
    assert [t["amount"] for t in data["related_transactions"]] == [300, 200, 500]
    r = httpx.post(url, headers=h, json={"currency": "EUR"})
    assert r.status_code == 400 and r.json()["error_code"] == 1034  # already refunded
    # a missing or empty amount is a full refund too
    for amount in ({}, {"amount": ""}):
        d3 = create(sim, "SIM-APPROVE-09", amount=1000).json()["data"]
        wait_final(sim, d3["order_id"])
        r = httpx.post(
            f"{sim.base_url}orders/{d3['order_id']}/refunds",
            headers=h,
            json={"currency": "EUR"} | amount,
        )
        assert r.status_code == 200
        data = httpx.get(f"{sim.base_url}orders/{d3['order_id']}", headers=h).json()["data"]
        assert (data["status"], data["amount_refunded"]) == ("refunded", 1000)
    # not refundable before completion
    d2 = create(sim, "SIM-TIMEOUT-03").json()["data"]
    r = httpx.post(
        f"{sim.base_url}orders/{d2['order_id']}/refunds",
        headers=h,
        json={"currency": "EUR", "amount": 1},
    )
    assert r.status_code == 400 and r.json()["error_code"] == 1034
    httpx.post(f"{sim.base_url}orders/{d2['order_id']}/cancel", headers=h)


def test_terminals_paging(sim: SimulatorServer) -> None:
    """As MultiSafepay/docs: openapi/components/examples/responses/listTerminals.json."""
    h = {"api_key": KEY}
    first = httpx.get(sim.base_url + "terminals", headers=h, params={"page": 1, "limit": 5}).json()
    assert first["success"] and len(first["data"]) == 5
    assert set(first["pager"]) == {"total_items"}  # all the pager documents
    total = first["pager"]["total_items"]
    seen: list[dict] = []
    for page in range(1, total // 5 + 2):
        seen += httpx.get(
            sim.base_url + "terminals", headers=h, params={"page": page, "limit": 5}
        ).json()["data"]
    assert len(seen) == total and len({t["id"] for t in seen}) == total
    ids = {t["id"] for t in seen}
    assert {"SIM-APPROVE-01", "SIM-DECLINE-01", "SIM-DROP-01", "0000004D"} <= ids
    documented = set(vector_json("list-terminals.json")["data"][0])
    for t in seen:
        assert set(t) == documented
        assert t["provider"] in ("SMARTPOS", "VERIFONE")
    assert {t["provider"] for t in seen} == {"SMARTPOS", "VERIFONE"}
    assert [t["id"] for t in seen if not t["active"]] == ["00000LQT"]
    group = seen[0]["group_id"]
    g = httpx.get(
        f"{sim.base_url}terminal-groups/{group}/terminals", headers=h, params={"limit": 100}
    ).json()
    assert g["data"] and all(t["group_id"] == group for t in g["data"])
    assert httpx.get(sim.base_url + "terminals").status_code == 401


def test_admin_api(sim: SimulatorServer, reset_variants: None) -> None:
    v = httpx.get(sim.url + "_sim/variants").json()["data"]
    assert v["sse_ids"] == "off" and v["keepalive"] == "data" and v["token_ttl"] == 600
    r = httpx.put(sim.url + "_sim/variants", json={"field_spelling": "event", "events_url": "off"})
    assert r.json()["data"]["field_spelling"] == "event"
    assert httpx.put(sim.url + "_sim/variants", json={"sse_ids": "sometimes"}).status_code == 400
    d = create(sim, "SIM-APPROVE-10").json()["data"]
    assert set(d) == {"order_id", "session_id", "payment_url", "event_token", "event_stream_url"}
    orders = httpx.get(sim.url + "_sim/orders").json()["data"]
    assert any(o["order_id"] == d["order_id"] for o in orders)
    assert httpx.post(sim.url + "_sim/orders/none/drop").status_code == 404
    wait_final(sim, d["order_id"])
