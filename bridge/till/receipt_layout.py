"""A receipt laid out for a receipt printer: plain text, a fixed width, two copies. Pure.

Takes the ``details`` of an ``order.receipt`` event (``bridge.core.receipt.Receipt``: any
field may be null, and nothing in it is trusted: control characters are removed and long
text is wrapped, so one line is never wider than the paper). Times are shown in ``tz`` (the
machine's zone by default), amounts as ``EUR 12.50``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from datetime import tzinfo
from typing import Any

from bridge.till.output import _clean, _parse_time, format_money

MIN_WIDTH = 24
MAX_WIDTH = 80
DEFAULT_WIDTH = 42

RESULT_TEXT = {"approved": "APPROVED", "declined": "DECLINED", "not_completed": "NOT COMPLETED"}


def _text(value: Any) -> str:
    return "" if value is None else _clean(value)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _mappings(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _money(cents: Any, currency: Any) -> str:
    return format_money(cents, currency or None)


def _time(value: Any, tz: tzinfo | None) -> str:
    parsed = _parse_time(value)
    return "" if parsed is None else parsed.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


class _Paper:
    def __init__(self, width: int) -> None:
        self.width = width
        self.lines: list[str] = []

    def rule(self, char: str = "-") -> None:
        self.lines.append(char * self.width)

    def center(self, text: str) -> None:
        for line in textwrap.wrap(text, self.width) or [""]:
            self.lines.append(line.center(self.width).rstrip())

    def left(self, text: str) -> None:
        self.lines.extend(textwrap.wrap(text, self.width) or [""])

    def pair(self, label: str, value: str) -> None:
        """``label`` left, ``value`` right; on two lines when both do not fit on one."""
        if not value:
            return
        room = self.width - len(label) - 1
        if len(value) <= room:
            self.lines.append(label + value.rjust(room + 1))
            return
        self.left(label)
        for line in textwrap.wrap(value, self.width):
            self.lines.append(line.rjust(self.width))


def render(
    details: Mapping[str, Any],
    *,
    width: int = DEFAULT_WIDTH,
    copy: str = "",
    tz: tzinfo | None = None,
    order_id: str | None = None,
) -> list[str]:
    """One copy of the receipt, as lines of at most ``width`` characters."""
    width = max(MIN_WIDTH, min(MAX_WIDTH, width))
    paper = _Paper(width)
    merchant = _mapping(details.get("merchant"))
    if merchant.get("name"):
        paper.center(_text(merchant["name"]))
    if merchant.get("address"):
        paper.center(_text(merchant["address"]))
    if details.get("location"):
        paper.center(_text(details["location"]))
    if copy:
        paper.lines.append("")
        paper.center(copy)
    paper.rule()
    paper.pair("Date", _time(details.get("completed_at") or details.get("printed_on"), tz))
    paper.pair("Terminal", _text(details.get("terminal_id")))
    paper.pair("Order", _text(order_id))
    paper.pair("Transaction", _text(details.get("transaction_id")))
    currency = details.get("currency")
    items = _mappings(details.get("items"))
    if items:
        paper.rule()
        for item in items:
            qty = item.get("quantity")
            name = _text(item.get("name")) or "item"
            paper.pair(f"{qty} x {name}" if qty else name, _money(item.get("item_price"), None))
    tip = details.get("tip") if isinstance(details.get("tip"), Mapping) else None
    paper.rule()
    if tip is not None:
        paper.pair("Tip", _money(tip.get("amount"), currency))
    paper.pair("TOTAL", _money(details.get("amount"), currency))
    card = _mapping(details.get("card"))
    if any(card.get(k) for k in ("brand", "last4", "authorization_code", "response_code")):
        paper.rule()
        paper.pair(_text(card.get("brand")) or "Card", _text(card.get("masked_number")))
        paper.pair("Entry", _text(card.get("entry_mode")))
        paper.pair("AID", _text(card.get("application_id")))
        paper.pair("Verification", _text(card.get("verification")))
        paper.pair("Auth. code", _text(card.get("authorization_code")))
        paper.pair("Response", _text(card.get("response_code")))
    paper.rule()
    paper.center(f"*** {RESULT_TEXT.get(str(details.get('result')), 'UNKNOWN')} ***")
    refunds = _mappings(details.get("refunds"))
    if refunds:
        paper.rule()
        for refund in refunds:
            when = _time(refund.get("created_at"), tz)
            paper.pair(f"Refund {when}".rstrip(), "-" + _money(refund.get("amount"), currency))
        paper.pair("Refunded", _money(details.get("amount_refunded"), currency))
    if copy.startswith("MERCHANT") and card.get("verification") == "SIGNATURE":
        paper.lines += ["", "Signature:", "", "_" * width]
    paper.rule()
    return paper.lines


def render_copies(
    details: Mapping[str, Any],
    *,
    width: int = DEFAULT_WIDTH,
    tz: tzinfo | None = None,
    order_id: str | None = None,
) -> str:
    """The customer copy, a tear-off line, the merchant copy: what a receipt printer gets."""
    width = max(MIN_WIDTH, min(MAX_WIDTH, width))
    customer = render(details, width=width, copy="CUSTOMER COPY", tz=tz, order_id=order_id)
    merchant = render(details, width=width, copy="MERCHANT COPY", tz=tz, order_id=order_id)
    tear = " 8< ".center(width, "-")
    return "\n".join([*customer, "", tear, "", *merchant]) + "\n"
