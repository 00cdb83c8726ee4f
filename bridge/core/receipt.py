"""A MultiSafepay receipt -> the bridge's stable receipt shape (``order.receipt`` ``details``).

``GET pos/receipt/{order_id}`` (MultiSafepay/docs: ``openapi/paths/receipt@{order_id}.yaml``)
answers ``merchant``, ``order``, ``payment``, ``printed_on`` and ``related_transactions``; the
docs warn that "the structure of the response may differ depending on type of transaction"
(MultiSafepay/docs: ``openapi/components/schemas/ReceiptDetails.yaml``), and their own examples
disagree (``tests/vectors/receipts/README.md``): ``items`` is an array or ``{"items": [...]}``,
``tip`` an object or an array, ``last4``/``authorization_code``/``response_code`` strings or
numbers (``"006459"`` and ``6459`` for one code). So every field is read defensively here: a
value of an unexpected type becomes ``None`` (or is left out of a list), never an exception,
and the whole upstream object is kept under ``raw`` so nothing is lost when MultiSafepay adds
or reshapes fields. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, tzinfo
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bridge.core.events import Event, EventType, Source, format_time, make_event_id
from bridge.core.normalize import MalformedPayload, canonical_terminal_id, parse_upstream_time
from bridge.core.state import OrderState

#: Bounds on what one receipt may put into an event (upstream input is hostile until parsed).
MAX_TEXT = 200
MAX_LINES = 100
#: A raw upstream object larger than this (as compact JSON) is not copied into the event.
MAX_RAW_BYTES = 64 * 1024

#: ISO 8583 response code of an approval, as MultiSafepay's examples write it.
APPROVED_RESPONSE_CODE = "00"

_DIGITS = re.compile(r"^\d+$")


class ReceiptResult(StrEnum):
    """What the receipt says about the payment."""

    APPROVED = "approved"  # completed: money taken
    DECLINED = "declined"  # a card was refused (the response code says why)
    NOT_COMPLETED = "not_completed"  # no approval and no decline: cancelled, expired, in progress


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ReceiptMerchant(_Part):
    name: str | None = None
    address: str | None = None


class ReceiptCard(_Part):
    """The card side, as a receipt printer shows it. No full number: MultiSafepay sends only
    the last four digits, and ``masked_number`` is made from them."""

    brand: str | None = Field(None, description="payment method, e.g. VISA, MASTERCARD")
    last4: str | None = None
    masked_number: str | None = Field(None, description="**** **** **** 1234")
    entry_mode: str | None = Field(None, description="ICC, ICC_CONTACTLESS, MAGSTRIPE")
    verification: str | None = Field(None, description="cardholder verification method (CVM)")
    application_id: str | None = Field(None, description="the chip application (AID)")
    authorization_code: str | None = None
    response_code: str | None = Field(None, description="ISO 8583; 00 is an approval")
    issuer_country: str | None = None


class ReceiptItem(_Part):
    name: str | None = None
    quantity: int | None = None
    unit_price: int | None = Field(None, description="cents")
    item_price: int | None = Field(None, description="cents: quantity x unit price")
    currency: str | None = None


class ReceiptEmployee(_Part):
    id: str | None = None
    name: str | None = None


class ReceiptTip(_Part):
    amount: int | None = Field(None, description="cents")
    employees: list[ReceiptEmployee] = Field(default_factory=list)


class ReceiptRefund(_Part):
    transaction_id: str | None = None
    amount: int | None = Field(None, description="cents")
    currency: str | None = None
    status: str | None = None
    created_at: str | None = Field(None, description="ISO 8601 UTC")
    description: str | None = None


class Receipt(_Part):
    """The ``details`` of an ``order.receipt`` event (besides ``raw``, the upstream object).

    Every field may be null when MultiSafepay did not say it; amounts are in cents, times are
    ISO 8601 UTC (upstream writes them without a zone, in ``upstream_timezone``).
    """

    result: ReceiptResult
    merchant: ReceiptMerchant
    transaction_id: str | None = None
    amount: int | None = Field(None, description="cents, as charged (a tip included)")
    currency: str | None = None
    amount_refunded: int | None = Field(None, description="cents")
    completed_at: str | None = Field(None, description="ISO 8601 UTC; null if not completed")
    printed_on: str | None = Field(None, description="ISO 8601 UTC: when upstream made it")
    terminal_id: str | None = Field(None, description="as MultiSafepay writes it")
    location: str | None = Field(None, description="card acceptor location")
    card: ReceiptCard
    items: list[ReceiptItem] = Field(default_factory=list)
    tip: ReceiptTip | None = None
    refunds: list[ReceiptRefund] = Field(default_factory=list)


# -- defensive readers: a value of the wrong type is None, never an exception ------------------


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (str, int)):
        text = str(value).strip()
        return text[:MAX_TEXT] or None
    return None


def _code(value: Any, width: int) -> str | None:
    """A code written as digits: a number loses its leading zeros upstream (``6459`` for
    ``"006459"``, ``0`` for ``"00"``), so numbers are padded back to ``width``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value).zfill(width)
    return _text(value)


def _cents(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and _DIGITS.match(value.strip()) and len(value.strip()) <= 15:
        value = int(value.strip())
    if isinstance(value, int) and 0 <= value < 10**15:
        return value
    return None


def _time(value: Any, upstream_tz: tzinfo) -> str | None:
    try:
        parsed, _zoned = parse_upstream_time(value, upstream_tz)
    except (MalformedPayload, OverflowError):
        return None
    return None if parsed is None else format_time(parsed)


def _objects(value: Any) -> list[dict[str, Any]]:
    """A list of objects from a list, one object, or ``{"items": [...]}``."""
    if isinstance(value, dict):
        inner = value.get("items")
        value = inner if isinstance(inner, list) else [value]
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, dict)][:MAX_LINES]


# -- the parts ---------------------------------------------------------------------------------


def _card(payment: dict[str, Any]) -> ReceiptCard:
    last4 = _code(payment.get("last4"), 4)
    valid_last4 = last4 is not None and len(last4) == 4 and last4.isdigit()
    return ReceiptCard(
        brand=_text(payment.get("payment_method")),
        last4=last4,
        masked_number=f"**** **** **** {last4}" if valid_last4 else None,
        entry_mode=_text(payment.get("card_entry_mode")),
        verification=_text(payment.get("cardholder_verification_method")),
        application_id=_text(payment.get("application_id")),
        authorization_code=_code(payment.get("authorization_code"), 6),
        response_code=_code(payment.get("response_code"), 2),
        issuer_country=_text(payment.get("issuer_country_code")),
    )


def _item(item: dict[str, Any]) -> ReceiptItem:
    return ReceiptItem(
        name=_text(item.get("name")),
        quantity=_cents(item.get("quantity")),
        unit_price=_cents(item.get("unit_price")),
        item_price=_cents(item.get("item_price")),
        currency=_text(item.get("currency")),
    )


def _tip(value: Any) -> ReceiptTip | None:
    """One tip object (the examples) or an array of them (the schema): amounts added up."""
    tips = _objects(value)
    if not tips:
        return None
    amounts = [_cents(t.get("amount")) for t in tips]
    known = [a for a in amounts if a is not None]
    employees = [
        ReceiptEmployee(id=_text(e.get("id")), name=_text(e.get("name")))
        for t in tips
        for e in _objects(t.get("employee"))
    ]
    return ReceiptTip(amount=sum(known) if known else None, employees=employees[:MAX_LINES])


def _refund(tx: dict[str, Any], upstream_tz: tzinfo) -> ReceiptRefund:
    return ReceiptRefund(
        transaction_id=_text(tx.get("transaction_id")),
        amount=_cents(tx.get("amount")),
        currency=_text(tx.get("currency")),
        status=_text(tx.get("status")),
        created_at=_time(tx.get("created"), upstream_tz),
        description=_text(tx.get("description")),
    )


def _result(order: dict[str, Any], completed_at: str | None, card: ReceiptCard) -> ReceiptResult:
    """Approved when the order completed. ``order.status`` is not in the documented shape
    (the official SDK's model has it): when present it decides; else the ``completed`` time.
    Declined when a card was answered with a response code other than ``00``."""
    status = _text(order.get("status"))
    approved = status.lower() == "completed" if status else completed_at is not None
    if approved:
        return ReceiptResult.APPROVED
    if card.response_code not in (None, APPROVED_RESPONSE_CODE):
        return ReceiptResult.DECLINED
    return ReceiptResult.NOT_COMPLETED


def normalize_receipt(data: Any, upstream_tz: tzinfo) -> Receipt:
    """The ``data`` of a receipt answer -> :class:`Receipt`. Raises :class:`MalformedPayload`
    only when ``data`` is not a JSON object; inside one, anything unreadable is null."""
    if not isinstance(data, dict):
        raise MalformedPayload("receipt is not a JSON object")
    order, payment = _object(data.get("order")), _object(data.get("payment"))
    merchant = _object(data.get("merchant"))
    card = _card(payment)
    completed_at = _time(order.get("completed"), upstream_tz)
    refunds = data.get("related_transactions")
    return Receipt(
        result=_result(order, completed_at, card),
        merchant=ReceiptMerchant(
            name=_text(merchant.get("name")), address=_text(merchant.get("address"))
        ),
        transaction_id=_text(order.get("transaction_id")),
        amount=_cents(order.get("amount")),
        currency=_text(order.get("currency")),
        amount_refunded=_cents(
            order["amountrefunded"] if "amountrefunded" in order else order.get("amount_refunded")
        ),
        completed_at=completed_at,
        printed_on=_time(data.get("printed_on"), upstream_tz),
        terminal_id=_text(payment.get("terminal_id")),
        location=_text(payment.get("card_acceptor_location")),
        card=card,
        items=[_item(i) for i in _objects(order.get("items"))],
        tip=_tip(order.get("tip")),
        refunds=[_refund(t, upstream_tz) for t in _objects(refunds)],
    )


def details_json_schema() -> dict[str, Any]:
    """JSON Schema of an ``order.receipt`` event's ``details``: its ``$defs`` are to be merged
    into the document's (``#/$defs/...`` references)."""
    schema = Receipt.model_json_schema(ref_template="#/$defs/{model}")
    schema["title"] = "ReceiptDetails"
    schema["properties"]["raw"] = {
        "description": "MultiSafepay's receipt object as it came (GET pos/receipt/{order_id}"
        f" data), or {{omitted: true, bytes, limit}} when larger than {MAX_RAW_BYTES} bytes",
    }
    schema["required"] = [*schema.get("required", []), "raw"]
    return schema


def bounded_raw(data: Any) -> Any:
    """The upstream object as it came, unless it is larger than :data:`MAX_RAW_BYTES`: then a
    note saying so (the normalized fields are bounded; this keeps the event bounded too)."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    size = len(text.encode("utf-8", "replace"))  # a lone surrogate: "?" when published
    if size > MAX_RAW_BYTES:
        return {"omitted": True, "bytes": size, "limit": MAX_RAW_BYTES}
    return data


def receipt_details(data: Any, upstream_tz: tzinfo) -> dict[str, Any]:
    """What an ``order.receipt`` event carries in ``details``: the normalized receipt and,
    under ``raw``, MultiSafepay's object itself."""
    receipt = normalize_receipt(data, upstream_tz)
    return {**receipt.model_dump(mode="json"), "raw": bounded_raw(data)}


#: The ``command_id`` part of the event id of a receipt the bridge fetched by itself.
AUTO = "auto"


def receipt_event(
    data: Any,
    *,
    order_id: str,
    terminal_id: str,
    command_id: str | None,
    state: OrderState | None,
    upstream_tz: tzinfo,
    now: datetime,
) -> Event:
    """The ``order.receipt`` event for a receipt answer. Never final; its ids, status and
    amount are the order's as the bridge knows them (``state``), or the receipt's own when the
    bridge never saw the order. Its ``event_id`` depends on the order and the command only, so
    the answers to one command (delivered again) carry one ``event_id``."""
    details = receipt_details(data, upstream_tz)
    return Event(
        event_id=make_event_id(order_id, EventType.ORDER_RECEIPT, command_id or AUTO),
        type=EventType.ORDER_RECEIPT,
        terminal_id=canonical_terminal_id(terminal_id),
        order_id=order_id,
        command_id=command_id,
        session_id=state.session_id if state else None,
        transaction_id=(state.transaction_id if state else None) or details["transaction_id"],
        status=state.status if state else None,
        final=False,
        amount=state.amount if state and state.amount is not None else details["amount"],
        currency=(state.currency if state else None) or details["currency"],
        source=Source.BRIDGE,
        received_at=now,
        details=details,
    )
