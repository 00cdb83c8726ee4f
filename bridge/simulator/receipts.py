"""The simulator's receipt endpoint: ``GET /v1/json/pos/receipt/{order_id}``.

As documented (MultiSafepay/docs: ``openapi/paths/receipt@{order_id}.yaml``, schema
``openapi/components/schemas/ReceiptDetails.yaml``, examples
``openapi/components/examples/responses/getReceipt*.json`` and ``gerReceiptDeclined.json``),
with the card details the order's script played (the same brand, last four digits and
authorization code that ``GET orders/{id}`` shows). Which parts are documented and which are
assumed: ``docs/simulator.md`` (Receipts).

The admin API plays what the real endpoint may do to a client: ``PUT /_sim/receipts``
``{"hold": true}`` holds every receipt request until ``{"hold": false}``; ``{"fail": N}`` answers
the next N with HTTP 500. ``GET /_sim/receipts`` shows the knobs and the order id of every
receipt request served (``held``: how many wait for a hold to end).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.simulator import errors as E
from bridge.simulator.clock import Clock
from bridge.simulator.errors import MspError
from bridge.simulator.orders import Order, OrderStore
from bridge.simulator.routing import path_param


class ReceiptSource(Protocol):
    """What the desk uses of the simulator (``bridge.simulator.app.Simulator``)."""

    store: OrderStore
    clock: Clock
    stopping: anyio.Event | None

    def api_key(self, request: Request) -> str: ...

    async def _hold_if_slow(self, order: Order) -> None: ...


MERCHANT = {"address": "Simulatorstraat 1, 1011 AB Amsterdam", "name": "pos-bridge simulator"}
LOCATION = "Amsterdam"
# brand -> (application_id, issuer_bin): the values of MultiSafepay's examples for that brand
_CHIP = {"VISA": ("a0000000031010", "490943"), "MASTERCARD": ("a0000000041010", "516788")}


def receipt_view(order: Order, printed_on: str) -> dict[str, Any]:
    """The ``data`` of a receipt answer for ``order`` (pure)."""
    brand, last4, authorization_code = order.card()
    paid = order.completed is not None
    presented = paid or order.response_code is not None  # a card was read
    application_id, issuer_bin = _CHIP.get(brand, (None, None))

    def card(value: Any) -> Any:
        return value if presented else None

    related = None
    if order.refunds:
        related = [
            {
                "amount": r["amount"],
                "created": r["created"],
                "currency": r["currency"],
                "description": r["description"],
                "items": None,
                "modified": r["created"],
                "order_id": f"{order.order_id}-refund-{n}",
                "reference_transaction_id": order.transaction_id,
                "status": r["status"],
                "transaction_id": r["transaction_id"],
                "type": "refund",
            }
            for n, r in enumerate(order.refunds, 1)
        ]
    return {
        "merchant": dict(MERCHANT),
        "order": {
            "amount": order.amount,
            "amountrefunded": order.amount_refunded,
            "completed": order.completed,
            "currency": order.currency,
            "items": None,
            "tip": None,
            "transaction_id": str(order.transaction_id),
        },
        "payment": {
            "application_id": card(application_id),
            "authorization_code": card(authorization_code),
            "card_acceptor_location": LOCATION,
            "card_entry_mode": card("ICC_CONTACTLESS"),
            "card_expiry_date": card("3112"),
            "cardholder_verification_method": card("PLAINTEXT_PIN_OFFLINE" if paid else "FAILED"),
            "issuer_bin": card(issuer_bin),
            "issuer_country_code": card("NL"),
            "last4": card(last4),
            "payment_method": card(brand),
            "response_code": order.response_code,
            "terminal_id": order.terminal_id,
        },
        "printed_on": printed_on,
        "related_transactions": related,
    }


class ReceiptDesk:
    """Serves receipts for one simulator, with the admin knobs for tests."""

    def __init__(self, sim: ReceiptSource) -> None:
        self.sim = sim
        self.hold = False
        self._released = anyio.Event()  # set when a hold ends; a new one for every hold
        self.fail = 0
        self.served: list[str] = []
        self.held = 0  # requests waiting for a hold to end

    async def get_receipt(self, request: Request) -> Response:
        key = self.sim.api_key(request)
        await self._wait_while_held()
        if self.fail > 0:
            self.fail -= 1
            raise MspError(500, E.UNKNOWN, "Unknown error: the service is unavailable")
        order_id = path_param(request, "order_id")
        order = self.sim.store.orders.get(order_id)
        if order is None or order.api_key != key:
            # MultiSafepay/docs: openapi/components/errors/ReceiptError1006.yaml
            raise MspError(404, E.INVALID_ORDER_ID, "Invalid transaction ID")
        await self.sim._hold_if_slow(order)
        self.served.append(order_id)
        data = receipt_view(order, self.sim.clock.local_timestamp())
        return JSONResponse({"success": True, "data": data})

    async def _wait_while_held(self) -> None:
        stopping = self.sim.stopping
        self.held += 1
        try:
            while self.hold and not (stopping is not None and stopping.is_set()):
                with anyio.move_on_after(0.5):  # looks at ``stopping`` again now and then
                    await self._released.wait()
        finally:
            self.held -= 1

    async def admin(self, request: Request) -> Response:
        if request.method == "PUT":
            try:
                body = json.loads(await request.body())
                if not isinstance(body, dict):
                    raise ValueError("body must be a JSON object")
                hold, fail = body.get("hold", self.hold), body.get("fail", self.fail)
                if (
                    not isinstance(hold, bool)
                    or isinstance(fail, bool)
                    or not isinstance(fail, int)
                ):
                    raise ValueError("hold is true/false, fail a number of requests")
            except ValueError as exc:
                return JSONResponse(MspError(400, E.MISSING_DATA, str(exc)).body(), 400)
            if hold and not self.hold:
                self._released = anyio.Event()
            elif self.hold and not hold:
                self._released.set()
            self.hold, self.fail = hold, max(0, fail)
        return JSONResponse(
            {
                "success": True,
                "data": {
                    "hold": self.hold,
                    "held": self.held,
                    "fail": self.fail,
                    "served": self.served,
                },
            }
        )

    def routes(self, api: str, guarded: Any) -> list[Route]:
        # an order id may hold "/": it arrives as %2F and is read with path_param (routing.py)
        return [
            Route(f"{api}/pos/receipt/{{order_id}}", guarded(self.get_receipt), methods=["GET"]),
            Route("/_sim/receipts", self.admin, methods=["GET", "PUT"]),
        ]
