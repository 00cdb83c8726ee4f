"""The receipt printer layout (pure): MultiSafepay's documented receipts, and anything at all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.receipt import receipt_details
from bridge.till.output import format_event
from bridge.till.receipt_layout import MAX_WIDTH, MIN_WIDTH, render, render_copies

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "receipts"
AMSTERDAM = ZoneInfo("Europe/Amsterdam")


def details(name: str) -> dict[str, Any]:
    return receipt_details(json.loads((VECTORS / name).read_text())["data"], AMSTERDAM)


def test_completed_receipt_both_copies() -> None:
    text = render_copies(details("getReceipt.json"), width=42, tz=AMSTERDAM, order_id="till7-1")
    lines = text.splitlines()
    assert all(len(line) <= 42 for line in lines)
    assert text.count("CUSTOMER COPY") == 1 and text.count("MERCHANT COPY") == 1
    assert text.index("CUSTOMER COPY") < text.index("8<") < text.index("MERCHANT COPY")
    assert text.count("*** APPROVED ***") == 2
    assert "MASTERCARD" + " " * 13 + "**** **** **** 6913" in lines
    assert "Date" + " " * 19 + "2024-07-23 13:20:38" in lines  # Amsterdam time again
    assert "Order" + " " * 30 + "till7-1" in lines
    assert "1 x Caffè Mocha" + " " * 23 + "3.20" in lines
    assert "TOTAL" + " " * 28 + "EUR 12.47" in lines
    assert "Tip" + " " * 31 + "EUR 2.08" in lines
    assert "Auth. code" + " " * 26 + "006459" in lines
    assert "Signature:" not in text


def test_declined_receipt() -> None:
    text = render_copies(details("gerReceiptDeclined.json"), width=32)
    assert text.count("*** DECLINED ***") == 2
    assert "Response" + " " * 22 + "54" in text.splitlines()


def test_refund_and_signature_on_the_merchant_copy_only() -> None:
    d = details("getReceiptRefund.json")
    customer = render(d, copy="CUSTOMER COPY", tz=AMSTERDAM)
    merchant = render(d, copy="MERCHANT COPY", tz=AMSTERDAM)
    assert "Signature:" in merchant and "Signature:" not in customer
    assert any(
        line.startswith("Refund 2023-02-23 15:34:25") and line.endswith("-EUR 25.01")
        for line in customer
    )


def test_cancelled_without_a_card_prints_no_card_block() -> None:
    d = details("gerReceiptDeclined.json")
    d["card"] = {k: None for k in d["card"]}
    d["result"] = "not_completed"
    text = render_copies(d)
    assert "*** NOT COMPLETED ***" in text and "AID" not in text and "****" not in text


@pytest.mark.parametrize("width", [0, MIN_WIDTH, 33, MAX_WIDTH, 500])
def test_width_is_bounded(width: int) -> None:
    d = details("getReceipt.json")
    d["merchant"]["name"] = "A very long merchant name " * 8
    d["items"][0]["name"] = "x" * 150
    lines = render_copies(d, width=width).splitlines()
    assert max(len(line) for line in lines) == max(MIN_WIDTH, min(MAX_WIDTH, width))


def test_control_characters_never_reach_the_printer() -> None:
    d = details("getReceipt.json")
    d["merchant"]["name"] = "Shop\x1b[2J\nName\r"
    d["card"]["brand"] = "VISA\x07"
    text = render_copies(d)
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "Shop [2J Name" in text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=60),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=15,
)
keys = st.sampled_from(
    ["merchant", "card", "items", "tip", "refunds", "result", "amount", "currency", "completed_at"]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, json_values), st.integers(min_value=0, max_value=200))
def test_anything_renders_within_the_width(d: dict[str, Any], width: int) -> None:
    lines = render_copies(d, width=width).splitlines()
    assert all(len(line) <= max(MIN_WIDTH, min(MAX_WIDTH, width)) for line in lines)


def test_one_readable_line_for_tail_and_pay() -> None:
    """``tail`` and ``pay --wait`` on a terminal show a receipt event as one line."""
    event = {
        "type": "order.receipt",
        "terminal_id": "TILL-A",
        "order_id": "o-1",
        "status": "completed",
        "amount": 1247,
        "currency": "EUR",
        "source": "bridge",
        "details": details("getReceipt.json"),
    }
    line = format_event(event)
    assert "order.receipt" in line and "receipt approved" in line
    assert "MASTERCARD ****6913" in line and "{" not in line and "\n" not in line
