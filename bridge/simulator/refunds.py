"""Refund rules (pure): what ``POST orders/{id}/refunds`` accepts, and its refusals.

MultiSafepay/docs: openapi/components/requestBody/Refund.yaml: ``currency`` is required and must
be the order's; "A full refund will be processed if the ``amount`` parameter is omitted, left
empty, or set to ``0``". api/general/error-reference.md, 1034 "Cannot refund transaction": the
refunds would exceed the order amount, the order was cancelled or already refunded, or "a
second refund for the same amount is requested within 5 minutes". The HTTP status of a refusal
(400) is assumed; the answer's shape is openapi/components/examples/responses/refundOrder.json.
"""

from __future__ import annotations

from typing import Any, Protocol

from bridge.simulator import errors as E
from bridge.simulator.errors import MspError

#: Simulated seconds within which a second refund of the same amount is refused.
SAME_AMOUNT_WINDOW = 5 * 60.0

REFUNDABLE = ("completed", "partial_refunded")


class Refundable(Protocol):
    order_id: str
    status: str
    amount: int
    amount_refunded: int
    currency: str


def _cannot(detail: str) -> MspError:
    return MspError(400, E.CANNOT_REFUND, f"Cannot refund transaction: {detail}")


def refund_amount(order: Refundable, body: Any, now: float, recent: list[tuple[float, int]]) -> int:
    """The amount (cents) to refund for ``body``, or MspError.

    ``recent`` holds (simulated time, amount) of the order's earlier refunds.
    """
    if not isinstance(body, dict):
        raise MspError(400, E.MISSING_DATA, "Request body must be a JSON object")
    currency = body.get("currency")
    if not isinstance(currency, str) or not currency:
        raise MspError(400, E.INVALID_CURRENCY, "Invalid currency: currency is required")
    if currency.upper() != order.currency:
        raise MspError(400, E.INVALID_CURRENCY, "Invalid currency: must be the order's")
    amount = body.get("amount")
    if amount is None or amount == "" or (amount == 0 and not isinstance(amount, bool)):
        amount = None  # a full refund: what remains
    elif isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise MspError(400, E.INVALID_AMOUNT, "Invalid amount: an integer number of cents >= 0")
    if order.status not in REFUNDABLE:
        raise _cannot(f"the order is {order.status}")
    remaining = order.amount - order.amount_refunded
    if amount is None:
        amount = remaining
    if amount > remaining:
        raise _cannot(f"the refund exceeds the remaining {remaining}")
    if any(a == amount and now - t < SAME_AMOUNT_WINDOW for t, a in recent):
        raise _cannot("a refund of the same amount was made less than 5 minutes ago")
    return amount
