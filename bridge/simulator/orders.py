"""Orders and their state (pure, synchronous): validation, transitions, the shapes the API shows."""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.simulator import errors as E
from bridge.simulator.errors import MspError
from bridge.simulator.refunds import refund_amount
from bridge.simulator.scenarios import FINAL_STATUSES, Scenario, Step

ORDER_ID_RE = re.compile(r"^[A-Za-z0-9/_-]{1,50}$")
_ALNUM = string.ascii_letters + string.digits


@dataclass
class OrderEvent:
    id: int  # position in the order's stream, from 1 (the SSE `id:`)
    status: str
    financial_status: str


@dataclass
class Order:
    order_id: str
    api_key: str
    terminal_id: str
    amount: int
    currency: str
    description: str
    scenario: Scenario
    session_id: str
    transaction_id: int
    created: str
    notification_url: str | None = None
    notification_method: str = "POST"
    status: str = "initialized"
    financial_status: str = "initialized"
    modified: str = ""
    completed: str | None = None
    reason: str = ""
    reason_code: str = ""
    response_code: str | None = None
    amount_refunded: int = 0
    refunds: list[dict[str, Any]] = field(default_factory=list)
    events: list[OrderEvent] = field(default_factory=list)
    var: tuple[Any, Any, Any] = (None, None, None)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES or self.status in ("refunded", "partial_refunded")

    @property
    def asks_for_pin(self) -> bool:
        """Soft-declined: the terminal asks the customer for the PIN."""
        return self.status == "declined" and self.reason_code == SOFT_DECLINE[1]

    @property
    def payment_final(self) -> bool:
        """Final for the terminal: it may start another payment."""
        return self.final

    def event_payload(self, ev: OrderEvent, tx_as: str = "string") -> dict[str, Any]:
        tx: Any = str(self.transaction_id) if tx_as == "string" else self.transaction_id
        # Key order as in MultiSafepay's stream example (alphabetical).
        return {
            "financial_status": ev.financial_status,
            "order_id": self.order_id,
            "session_id": self.session_id,
            "status": ev.status,
            "transaction_id": tx,
        }

    def events_after(self, last_id: int) -> list[OrderEvent]:
        return [e for e in self.events if e.id > last_id]

    # -- the card side of the story, deterministic per order so tests can rely on it
    def _card(self) -> tuple[str, str, str]:
        h = hashlib.sha256(self.order_id.encode()).hexdigest()
        card = "VISA" if self.amount % 2 == 0 else "MASTERCARD"
        return card, str(int(h[:8], 16) % 10000).zfill(4), str(int(h[8:16], 16) % 1000000).zfill(6)

    def card(self) -> tuple[str, str, str]:
        """(brand, last four digits, authorization code) the order's card plays, as ``GET
        orders/{id}`` and the receipt show them."""
        return self._card()

    def view(self) -> dict[str, Any]:
        """The order as ``GET orders/{id}`` (and webhooks) show it; shape of the docs vector."""
        card, last4, auth = self._card()
        paid = self.completed is not None
        tried = paid or self.response_code is not None
        details = {
            "account_holder_name": "card holder" if tried else None,
            "account_id": None,
            "application_id": "a0000000031010" if tried else None,
            "authorization_code": auth if paid else None,
            "card_acceptor_id": "1001001",
            "card_acceptor_location": "Amsterdam",
            "card_acceptor_name": "pos-bridge simulator",
            "card_entry_mode": "ICC_CONTACTLESS" if tried else None,
            "card_expiry_date": "3112" if tried else None,
            "external_transaction_id": str(self.transaction_id),
            "issuer_country_code": "NL" if tried else None,
            "last4": last4 if tried else None,
            "recurring_flow": None,
            "recurring_id": None,
            "recurring_model": None,
            "response_code": self.response_code,
            "terminal_id": self.terminal_id.lower(),  # MultiSafepay writes it lower case here
            "type": card if tried else None,
        }
        methods = None
        if tried:
            methods = [
                {
                    "account_holder_name": "card holder",
                    "amount": self.amount,
                    "card_expiry_date": "3112",
                    "currency": self.currency,
                    "description": self.description,
                    "external_transaction_id": str(self.transaction_id),
                    "payment_description": "Visa" if card == "VISA" else "Mastercard",
                    "status": self.financial_status,
                    "type": card,
                }
            ]
        related = None
        if self.refunds:
            related = [dict(r) for r in self.refunds]
        return {
            "amount": self.amount,
            "amount_refunded": self.amount_refunded,
            "completed": self.completed,
            "costs": [],
            "created": self.created,
            "currency": self.currency,
            "custom_info": {"custom_1": None, "custom_2": None, "custom_3": None},
            "customer": {
                k: None
                for k in (
                    "address1",
                    "address2",
                    "city",
                    "country",
                    "country_name",
                    "email",
                    "first_name",
                    "house_number",
                    "last_name",
                )
            }
            | {"locale": "en_US"}
            | {k: None for k in ("phone1", "phone2", "state", "zip_code")},
            "description": self.description,
            "fastcheckout": "NO",
            "financial_status": self.financial_status,
            "items": None,
            "modified": self.modified,
            "order_id": self.order_id,
            "payment_details": details,
            "payment_methods": methods,
            "reason": self.reason,
            "reason_code": self.reason_code,
            "related_transactions": related,
            "status": self.status,
            "transaction_id": self.transaction_id,
            "var1": self.var[0],
            "var2": self.var[1],
            "var3": self.var[2],
        }

    def cancel_view(self) -> dict[str, Any]:
        """The answer of ``POST orders/{id}/cancel``, shaped like the docs vector."""
        return {
            "costs": [],
            "created": self.created,
            "custom_info": {"custom_1": None, "custom_2": None, "custom_3": None},
            "fastcheckout": "NO",
            "financial_status": None,
            "modified": self.modified,
            "payment_details": {},
            "payment_methods": None,
            "status": self.status,
        }


# why -> (reason, reason_code, response_code); ISO 8583 style response codes, like MultiSafepay's.
# A soft decline is "declined with error code 65, 71" (MultiSafepay/docs:
# content/point-of-sale/pos-card-payment-flow.md); the other texts and codes are assumed.
SOFT_DECLINE = ("Soft decline: PIN required", "1009", "65")
_REASONS = {
    "hard": ("Declined: insufficient funds", "1005", "51"),
    "soft": SOFT_DECLINE,
    "customer": ("Cancelled by customer", "", None),
    "expired": ("Expired: no activity", "", None),
    "api": ("Cancelled via API", "", None),
}


def validate_create(body: Any) -> dict[str, Any]:
    """Check a create-order body; MspError (400) says what is wrong.

    Required fields and limits: MultiSafepay/docs: openapi/components/schemas/CloudMode.yaml
    (``description`` required, at most 200: error 1008 "The ``description`` was missing or
    invalid", api/general/error-reference.md) and CloudModePaymentOptions.yaml
    (``notification_method`` ``POST`` or ``GET``).
    """
    if not isinstance(body, dict):
        raise MspError(400, E.MISSING_DATA, "Request body must be a JSON object")
    return {**_payment_fields(body), **_terminal_fields(body)}


def _payment_fields(body: dict[str, Any]) -> dict[str, Any]:
    """``order_id``, ``amount``, ``currency``, ``description`` and ``var1..3``, checked."""
    order_id = body.get("order_id")
    if not isinstance(order_id, str) or not ORDER_ID_RE.match(order_id):
        raise MspError(
            400, E.INVALID_ORDER_ID, "Invalid order_id: 1-50 characters of a-z A-Z 0-9 / - _"
        )
    amount = body.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise MspError(400, E.INVALID_AMOUNT, "Invalid amount: an integer number of cents > 0")
    currency = body.get("currency")
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Za-z]{3}", currency):
        raise MspError(400, E.INVALID_CURRENCY, "Invalid currency")
    description = body.get("description")
    if not isinstance(description, str) or not description.strip() or len(description) > 200:
        raise MspError(
            400, E.INVALID_DESCRIPTION, "Invalid description: required, at most 200 characters"
        )
    return {
        "order_id": order_id,
        "amount": amount,
        "currency": currency.upper(),
        "description": description,
        "var": tuple(body.get(f"var{i}") for i in (1, 2, 3)),
    }


def _terminal_fields(body: dict[str, Any]) -> dict[str, Any]:
    """``gateway_info.terminal_id`` (required) and where notifications go, checked."""
    gi = body.get("gateway_info")
    terminal_id = gi.get("terminal_id") if isinstance(gi, dict) else None
    if not isinstance(terminal_id, str) or not terminal_id.strip():
        raise MspError(400, E.MISSING_DATA, "Missing data: gateway_info.terminal_id")
    po = body.get("payment_options")
    po = po if isinstance(po, dict) else {}
    url, method = po.get("notification_url"), po.get("notification_method")
    # Absent or unknown: POST, what MultiSafepay recommends (assumed: the docs name no default).
    method = "GET" if isinstance(method, str) and method.upper() == "GET" else "POST"
    return {
        "terminal_id": terminal_id.strip(),
        "notification_url": url if isinstance(url, str) and url else None,
        "notification_method": method,
    }


class OrderStore:
    """All orders, indexed by order id, session id and terminal (one payment per terminal)."""

    def __init__(
        self, now: Callable[[], str], seconds: Callable[[], float] = time.monotonic
    ) -> None:
        self._now = now  # wall time as MultiSafepay writes it
        self._seconds = seconds  # simulated seconds, for time windows
        self._refunded_at: dict[str, list[tuple[float, int]]] = {}  # order id -> (time, amount)
        self.orders: dict[str, Order] = {}
        self.by_session: dict[str, Order] = {}
        self.active: dict[str, Order] = {}  # canonical (upper) terminal id -> current order
        self._next_tx = 890000001

    def get(self, order_id: str, api_key: str) -> Order:
        order = self.orders.get(order_id)
        # An order made with another key is as invisible as an unknown one (keys are accounts).
        if order is None or order.api_key != api_key:
            raise MspError(404, E.INVALID_ORDER_ID, "Invalid transaction ID: order not found")
        return order

    def create(self, fields: dict[str, Any], api_key: str, scenario: Scenario) -> Order:
        if fields["order_id"] in self.orders:
            raise MspError(409, E.INVALID_ORDER_ID, "Invalid transaction ID: order_id already used")
        terminal = fields["terminal_id"].upper()
        current = self.active.get(terminal)
        if current is not None and not current.payment_final:
            raise MspError(
                409, E.TERMINAL_BUSY, f"Terminal busy: order {current.order_id} is in progress"
            )
        now = self._now()
        tx, self._next_tx = self._next_tx, self._next_tx + 1
        order = Order(
            order_id=fields["order_id"],
            api_key=api_key,
            terminal_id=fields["terminal_id"],
            amount=fields["amount"],
            currency=fields["currency"],
            description=fields["description"],
            scenario=scenario,
            session_id="".join(secrets.choice(_ALNUM) for _ in range(38)),
            transaction_id=tx,
            created=now,
            modified=now,
            notification_url=fields["notification_url"],
            notification_method=fields.get("notification_method", "POST"),
            var=fields["var"],
        )
        self.orders[order.order_id] = order
        self.by_session[order.session_id] = order
        self.active[terminal] = order
        return order

    def transition(self, order: Order, step: Step | str, why: str = "") -> OrderEvent | None:
        """Apply a status change; returns the stream event, or None if nothing changed."""
        status = step if isinstance(step, str) else step.status
        why = why or (step.reason if isinstance(step, Step) else "")
        assert status is not None
        if order.final:
            return None  # nothing follows a final status (a cancel raced the script)
        last = order.events[-1].status if order.events else None
        if status == last:
            return None  # a faithful stream never repeats a status
        order.status = status
        order.financial_status = status
        order.modified = self._now()
        if status == "completed":
            order.completed = order.modified
            order.reason, order.reason_code, order.response_code = "Approved", "1000", "00"
        elif why in _REASONS:
            order.reason, order.reason_code, resp = _REASONS[why]
            if resp is not None:
                order.response_code = resp
        ev = OrderEvent(len(order.events) + 1, status, status)
        order.events.append(ev)
        return ev

    def cancel(self, order: Order) -> OrderEvent | None:
        if order.final:
            raise MspError(
                409, E.NOT_CANCELLABLE, f"Order cannot be cancelled: its status is {order.status}"
            )
        return self.transition(order, "cancelled", "api")

    def refund(self, order: Order, body: Any) -> dict[str, Any]:
        now = self._seconds()
        amount = refund_amount(order, body, now, self._refunded_at.get(order.order_id, []))
        self._refunded_at.setdefault(order.order_id, []).append((now, amount))
        tx, self._next_tx = self._next_tx, self._next_tx + 1
        order.amount_refunded += amount
        order.status = "refunded" if order.amount_refunded == order.amount else "partial_refunded"
        order.financial_status = order.status
        order.modified = self._now()
        order.refunds.append(
            {
                "amount": amount,
                "currency": order.currency,
                "created": order.modified,
                "description": str(body.get("description") or ""),
                "status": "completed",
                "transaction_id": tx,
                "type": "REFUND",
            }
        )
        # MultiSafepay/docs: openapi/components/examples/responses/refundOrder.json
        refund_order_id = body.get("refund_order_id")
        if not isinstance(refund_order_id, str) or not refund_order_id:
            refund_order_id = order.order_id
        return {"order_id": refund_order_id, "transaction_id": tx}
