"""Normalization of every upstream shape, against MultiSafepay's documented payloads."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from helpers.vectors import vector_json, vector_text
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.events import Source
from bridge.core.normalize import (
    MalformedPayload,
    canonical_terminal_id,
    from_order,
    from_stream_message,
    parse_upstream_time,
)

AMSTERDAM = ZoneInfo("Europe/Amsterdam")


def vector(name: str) -> dict:
    return vector_json(name)


def test_sse_example_messages() -> None:
    datas = [
        line[6:]
        for line in vector_text("sse-stream-example.txt").splitlines()
        if line.startswith("data: ")
    ]
    first, last = (from_stream_message(d, Source.STREAM) for d in datas)
    assert (first.status, first.transaction_id, first.order_id) == (
        "initialized",
        "89000000",
        "example_order_id",
    )
    assert last.final and not first.final
    assert first.session_id == "d5MrwfDyPY36t8XAb2aMh5s6nH1XHOwqrOA00Ei"


def test_transaction_id_number_or_string() -> None:
    a = from_stream_message(
        {"order_id": "o", "status": "initialized", "transaction_id": 89}, Source.STREAM
    )
    b = from_stream_message(
        {"order_id": "o", "status": "initialized", "transaction_id": "89"}, Source.STREAM
    )
    assert a.transaction_id == b.transaction_id == "89"


def test_completed_order_vector() -> None:
    data = vector("get-order-pos-completed.json")["data"]
    o = from_order(data, Source.POLL, AMSTERDAM)
    assert o.status == "completed" and o.final
    assert o.terminal_id == "0000004D"  # lower case upstream, canonical upper here
    assert o.transaction_id == "123412342341234"
    assert o.amount == 1 and o.amount_refunded == 0 and o.currency == "EUR"
    assert o.details == {
        "card": "VISA",
        "last4": "1234",
        "entry_mode": "ICC_CONTACTLESS",
        "authorization_code": "705151",
        "response_code": "00",
        "reason": "Approved",
        "reason_code": "1000",
    }
    # "2024-06-04T15:50:18" is Amsterdam summer time, two hours ahead of UTC; no zone given,
    # so occurred_at stays unset.
    assert o.modified == datetime(2024, 6, 4, 13, 50, 18, tzinfo=UTC)
    assert o.occurred_at is None


def test_webhook_body_vector_from_raw_bytes() -> None:
    raw = vector("webhook-docs-example.json")["raw_body"].encode()
    o = from_order(raw, Source.WEBHOOK, AMSTERDAM)
    assert (o.order_id, o.status, o.amount) == ("my-order-id", "initialized", 1000)


def test_zoned_time_sets_occurred_at() -> None:
    t, zoned = parse_upstream_time("2026-01-02T03:04:05+01:00", AMSTERDAM)
    assert zoned and t == datetime(2026, 1, 2, 2, 4, 5, tzinfo=UTC)
    o = from_order(
        {"order_id": "o", "status": "completed", "modified": "2026-01-02T03:04:05Z"}, Source.POLL
    )
    assert o.occurred_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'{"status": "completed"}',
        b'{"order_id": "o"}',
        b'{"order_id": "o", "status": 5}',
        b'{"order_id": "o", "status": "no spaces allowed"}',
        b'{"order_id": "o", "status": "completed", "transaction_id": {"x": 1}}',
        b'{"order_id": "o", "status": "completed", "transaction_id": true}',
        b"\xff\xfe",
    ],
)
def test_malformed_stream_messages_raise_one_clear_error(payload: bytes) -> None:
    with pytest.raises(MalformedPayload):
        from_stream_message(payload, Source.STREAM)


@pytest.mark.parametrize(
    "order",
    [
        {"order_id": "o", "status": "completed", "amount": "12"},
        {"order_id": "o", "status": "completed", "amount": 1.5},
        {"order_id": "o", "status": "completed", "amount_refunded": -1},
        {"order_id": "o", "status": "completed", "modified": "yesterday"},
        {"order_id": "o", "status": "completed", "payment_details": ["x"]},
    ],
)
def test_malformed_orders_raise(order: dict) -> None:
    with pytest.raises(MalformedPayload):
        from_order(order, Source.WEBHOOK)


@given(st.text(max_size=200))
def test_any_text_is_parsed_or_refused_cleanly(text: str) -> None:
    try:
        from_stream_message(text, Source.STREAM)
    except MalformedPayload:
        pass


@given(st.from_regex(r"[A-Za-z0-9]{1,16}", fullmatch=True))
def test_terminal_id_canonical_form_is_idempotent(tid: str) -> None:
    assert (
        canonical_terminal_id(canonical_terminal_id(tid))
        == canonical_terminal_id(tid)
        == tid.upper()
    )
