"""The receipt normalizer against MultiSafepay's documented examples and hostile shapes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.commands import InvalidCommand, ReceiptCommand, parse_command
from bridge.core.events import EventType
from bridge.core.normalize import MalformedPayload
from bridge.core.receipt import (
    MAX_LINES,
    MAX_RAW_BYTES,
    MAX_TEXT,
    Receipt,
    ReceiptResult,
    normalize_receipt,
    receipt_details,
    receipt_event,
)
from bridge.core.state import OrderState

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "receipts"
AMSTERDAM = ZoneInfo("Europe/Amsterdam")


def vector(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())["data"]


def test_completed_receipt_with_items_and_tip() -> None:
    r = normalize_receipt(vector("getReceipt.json"), AMSTERDAM)
    assert r.result is ReceiptResult.APPROVED
    assert (r.merchant.name, r.merchant.address) == (
        "MultiSafepay B.V.",
        "Rue de la Gares test1 fdsas",
    )
    assert (r.transaction_id, r.amount, r.currency, r.amount_refunded) == (
        "1721733637106739",
        1247,
        "EUR",
        0,
    )
    assert r.completed_at == "2024-07-23T11:20:38.000000Z"  # CEST: UTC+2
    assert r.printed_on == "2024-12-02T10:11:26.000000Z"  # CET: UTC+1
    assert r.card.model_dump() == {
        "brand": "MASTERCARD",
        "last4": "6913",
        "masked_number": "**** **** **** 6913",
        "entry_mode": "ICC_CONTACTLESS",
        "verification": "PLAINTEXT_PIN_OFFLINE",
        "application_id": "a0000000041010",
        "authorization_code": "006459",
        "response_code": "00",
        "issuer_country": "ES",
    }
    assert (r.terminal_id, r.location) == ("000002Or", "fdsas")
    assert [(i.name, i.quantity, i.unit_price, i.item_price) for i in r.items] == [
        ("Caffè Mocha", 1, 320, 320),
        ("Cortado", 1, 320, 320),
        ("Flat White", 1, 399, 399),
    ]
    assert r.tip is not None and r.tip.amount == 208
    assert [(e.id, e.name) for e in r.tip.employees] == [("33", "Alonso")]
    assert r.refunds == []


def test_numbers_where_strings_are_documented_read_the_same() -> None:
    """getReceiptTip.json writes the codes as numbers: leading zeros come back."""
    r = normalize_receipt(vector("getReceiptTip.json"), AMSTERDAM)
    assert r.result is ReceiptResult.APPROVED
    assert r.transaction_id == "1758302748915264"
    assert (r.card.last4, r.card.masked_number) == ("1234", "**** **** **** 1234")
    assert r.card.authorization_code == "006459"  # 6459 upstream; "006459" in getReceipt.json
    assert r.card.response_code == "00"  # 0 upstream
    assert r.tip is not None and [(e.id, e.name) for e in r.tip.employees] == [("33", "John Doe")]


def test_declined_receipt() -> None:
    r = normalize_receipt(vector("gerReceiptDeclined.json"), AMSTERDAM)
    assert r.result is ReceiptResult.DECLINED
    assert r.completed_at is None
    assert (r.card.brand, r.card.last4, r.card.response_code) == ("VISA", "2001", "54")
    assert r.card.verification == "FAILED"
    assert r.items == [] and r.tip is None


def test_refunded_receipt_lists_its_refunds() -> None:
    r = normalize_receipt(vector("getReceiptRefund.json"), AMSTERDAM)
    assert r.result is ReceiptResult.APPROVED  # the payment completed; refunds are listed
    assert (r.amount, r.amount_refunded) == (2501, 2501)
    assert [x.model_dump() for x in r.refunds] == [
        {
            "transaction_id": "7686125",
            "amount": 2501,
            "currency": "EUR",
            "status": "reserved",
            "created_at": "2023-02-23T14:34:25.000000Z",
            "description": "Refund order 94543565 for 4terminals",
        }
    ]


@pytest.mark.parametrize("name", sorted(p.name for p in VECTORS.glob("*.json")))
def test_details_keep_the_upstream_object_whole(name: str) -> None:
    data = vector(name)
    details = receipt_details(data, AMSTERDAM)
    assert details["raw"] == data
    Receipt.model_validate({k: v for k, v in details.items() if k != "raw"})
    json.dumps(details)  # publishable as is


def test_status_decides_when_upstream_gives_one() -> None:
    """``order.status`` is not documented (the SDK's model has it): when given, it decides."""
    data = vector("getReceipt.json")
    data["order"]["status"] = "cancelled"
    assert normalize_receipt(data, AMSTERDAM).result is ReceiptResult.NOT_COMPLETED
    data = vector("gerReceiptDeclined.json")
    data["order"]["status"] = "completed"
    assert normalize_receipt(data, AMSTERDAM).result is ReceiptResult.APPROVED


def test_cancelled_without_a_card_is_not_completed() -> None:
    data = vector("gerReceiptDeclined.json")
    data["payment"] = {k: None for k in data["payment"]}
    r = normalize_receipt(data, AMSTERDAM)
    assert r.result is ReceiptResult.NOT_COMPLETED
    assert r.card.masked_number is None and r.card.last4 is None


def test_tip_as_an_array_as_the_schema_says() -> None:
    data = vector("getReceipt.json")
    data["order"]["tip"] = [
        {"amount": 100, "employee": [{"id": "1", "name": "A"}]},
        {"amount": 50, "employee": [{"id": 2, "name": "B"}]},
    ]
    data["order"]["items"] = [{"name": "Tea", "quantity": 2, "unit_price": 150, "item_price": 300}]
    r = normalize_receipt(data, AMSTERDAM)
    assert r.tip is not None and r.tip.amount == 150
    assert [(e.id, e.name) for e in r.tip.employees] == [("1", "A"), ("2", "B")]
    assert [(i.name, i.item_price) for i in r.items] == [("Tea", 300)]


def test_not_an_object_is_malformed() -> None:
    for data in (None, [], "receipt", 3):
        with pytest.raises(MalformedPayload):
            normalize_receipt(data, AMSTERDAM)


def test_bounds() -> None:
    data = vector("getReceipt.json")
    data["merchant"]["name"] = "x" * 10_000
    data["order"]["items"] = [{"name": "i"}] * (MAX_LINES * 3)
    data["payment"]["last4"] = "12345"  # not four digits: no masked number
    data["order"]["amount"] = 10**20
    details = receipt_details(data, AMSTERDAM)
    assert len(details["merchant"]["name"]) == MAX_TEXT
    assert len(details["items"]) == MAX_LINES
    assert details["card"]["masked_number"] is None
    assert details["amount"] is None
    data["payload"] = "y" * MAX_RAW_BYTES
    raw = receipt_details(data, AMSTERDAM)["raw"]
    assert raw["omitted"] is True and raw["bytes"] > MAX_RAW_BYTES


# -- hostile shapes: anything JSON can hold, where the documented parts are ---------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
DOCUMENTED = {
    "merchant": ["name", "address"],
    "order": ["amount", "amountrefunded", "completed", "currency", "items", "tip", "status"],
    "payment": [
        "application_id",
        "authorization_code",
        "card_entry_mode",
        "last4",
        "payment_method",
        "response_code",
        "terminal_id",
    ],
}


@st.composite
def receipt_like(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for part, fields in DOCUMENTED.items():
        if draw(st.booleans()):
            data[part] = {f: draw(json_values) for f in fields if draw(st.booleans())}
        elif draw(st.booleans()):
            data[part] = draw(json_values)
    for key in ("printed_on", "related_transactions"):
        if draw(st.booleans()):
            data[key] = draw(json_values | st.just("2024-12-02T11:11:26"))
    return data


@settings(max_examples=400, deadline=None)
@given(receipt_like())
def test_any_object_normalizes_without_error(data: dict[str, Any]) -> None:
    details = receipt_details(data, AMSTERDAM)
    receipt = Receipt.model_validate({k: v for k, v in details.items() if k != "raw"})
    assert details["raw"] == data
    assert receipt.card.masked_number is None or receipt.card.masked_number.endswith(
        str(receipt.card.last4)
    )
    for text in (receipt.merchant.name, receipt.card.brand, receipt.transaction_id):
        assert text is None or 0 < len(text) <= MAX_TEXT
    for amount in (receipt.amount, receipt.amount_refunded):
        assert amount is None or amount >= 0
    assert len(receipt.items) <= MAX_LINES and len(receipt.refunds) <= MAX_LINES


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(p.name for p in VECTORS.glob("*.json"))), json_values)
def test_an_unknown_field_changes_nothing_but_raw(name: str, extra: Any) -> None:
    """MultiSafepay adding a field must not change the normalized receipt."""
    data = vector(name)
    before = normalize_receipt(data, AMSTERDAM)
    data["order"]["new_field"] = extra
    data["something_new"] = extra
    assert normalize_receipt(data, AMSTERDAM) == before


# -- the event ----------------------------------------------------------------------------------


def _state(**kw: Any) -> OrderState:
    base: dict[str, Any] = dict(
        order_id="o-1",
        terminal_id="TILL-A",
        seq=3,
        status="completed",
        final=True,
        command_id="pay-1",
        session_id="s-1",
        transaction_id="890000001",
        amount=1000,
        currency="EUR",
    )
    return OrderState(**(base | kw))


def test_receipt_event_is_never_final_and_keeps_the_orders_ids() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    event = receipt_event(
        vector("getReceiptTip.json"),
        order_id="o-1",
        terminal_id="till-a",
        command_id="r-1",
        state=_state(),
        upstream_tz=AMSTERDAM,
        now=now,
    )
    assert event.type is EventType.ORDER_RECEIPT and event.final is False
    assert (event.terminal_id, event.command_id, event.status) == ("TILL-A", "r-1", "completed")
    assert (event.transaction_id, event.amount, event.session_id) == ("890000001", 1000, "s-1")
    assert event.details["result"] == "approved" and event.details["raw"]["order"]["amount"] == 1247
    assert event.error is None
    json.loads(event.to_json())


def test_receipt_event_of_an_order_the_bridge_never_saw() -> None:
    event = receipt_event(
        vector("gerReceiptDeclined.json"),
        order_id="o-2",
        terminal_id="TILL-A",
        command_id=None,
        state=None,
        upstream_tz=AMSTERDAM,
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert (event.status, event.amount, event.currency) == (None, 100, "EUR")
    assert event.transaction_id == "1733221896103112"


def test_text_that_is_not_utf8_is_made_publishable() -> None:
    """JSON may escape a lone surrogate (``"\\ud800"``), which no UTF-8 text can hold."""
    data = json.loads((VECTORS / "getReceipt.json").read_text().replace("Alonso", "Al\\ud800onso"))[
        "data"
    ]
    event = receipt_event(
        data,
        order_id="o-1",
        terminal_id="TILL-A",
        command_id=None,
        state=None,
        upstream_tz=AMSTERDAM,
        now=datetime.now(UTC),
    )
    wire = json.loads(event.to_json())
    assert wire["details"]["tip"]["employees"][0]["name"] == "Al?onso"
    assert wire["details"]["raw"]["order"]["tip"]["employee"]["name"] == "Al?onso"


def test_receipt_event_ids() -> None:
    def event_id(command_id: str | None, order_id: str = "o-1", name: str = "getReceipt") -> str:
        return receipt_event(
            vector(f"{name}.json"),
            order_id=order_id,
            terminal_id="TILL-A",
            command_id=command_id,
            state=None,
            upstream_tz=AMSTERDAM,
            now=datetime.now(UTC),
        ).event_id

    assert event_id("r-1") == event_id("r-1", name="getReceiptTip")  # one command: one id
    assert len({event_id("r-1"), event_id("r-2"), event_id(None), event_id("r-1", "o-2")}) == 4


# -- the command --------------------------------------------------------------------------------


def test_receipt_command_parses_and_refuses() -> None:
    command = parse_command(
        '{"type":"receipt","terminal_id":"till-a","order_id":"o/1","command_id":"c-1"}'
    )
    assert isinstance(command, ReceiptCommand)
    assert (command.terminal, command.order_id, command.command_id) == ("TILL-A", "o/1", "c-1")
    for bad, word in (
        ('{"type":"receipt","terminal_id":"T","command_id":"c"}', "order_id"),
        ('{"type":"receipt","terminal_id":"T","order_id":"x y"}', "order_id"),
        ('{"type":"receipt","terminal_id":"T","order_id":"x","amount":5}', "amount"),
    ):
        with pytest.raises(InvalidCommand) as info:
            parse_command(bad)
        assert info.value.command_type == "receipt" and word in info.value.message
        assert info.value.terminal_id == "T"
