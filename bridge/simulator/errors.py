"""MultiSafepay-shaped API errors: ``{"success": false, "error_code": N, "error_info": "..."}``.

Codes 1000-1032 are MultiSafepay's documented codes (docs.multisafepay.com "Error reference"):
1000 unknown error, 1001 invalid amount, 1002 invalid currency, 1006 invalid transaction/order
ID (also what MultiSafepay answers for an order it does not know), 1008 invalid description,
1016 missing data, 1032 invalid API key. The rest are the simulator's own choices, where the real
code is not documented; a client should key on the HTTP status plus these codes:

| HTTP | code | when |
| --- | --- | --- |
| 400 | 1001 | amount missing, not an integer or <= 0; refund amount <= 0 |
| 400 | 1002 | currency missing / not 3 letters |
| 400 | 1006 | order_id missing, > 50 chars or outside ``a-zA-Z0-9/-_`` |
| 400 | 1008 | description > 200 chars |
| 400 | 1016 | body not JSON, or ``gateway_info.terminal_id`` missing |
| 401 | 1032 | API key missing, empty or not allowed (``--api-key``) |
| 401 | 1032 | events token missing, invalid or expired (SSE stream) |
| 404 | 1006 | order unknown, *or made with another API key* (orders are per key, like accounts) |
| 404 | 1000 | unknown path |
| 404 | 1040 | terminal does not exist (``SIM-UNKNOWN-...``) (sim choice) |
| 409 | 1006 | duplicate order_id (sim: 409 so a client can tell it from a malformed id) |
| 409 | 1041 | terminal busy: its current order is not final (sim choice) |
| 409 | 1042 | order not cancellable (already final) (sim choice) |
| 409 | 1043 | order not refundable (not completed / fully refunded) (sim choice) |
| 400 | 1044 | refund amount exceeds what remains (sim choice) |
| 500 | 1000 | scenario ``SIM-FAIL`` / amount ending 09: the API fails, no order is made |
"""

from __future__ import annotations

from typing import Any

UNKNOWN = 1000
INVALID_AMOUNT = 1001
INVALID_CURRENCY = 1002
INVALID_ORDER_ID = 1006
INVALID_DESCRIPTION = 1008
MISSING_DATA = 1016
INVALID_API_KEY = 1032
UNKNOWN_TERMINAL = 1040
TERMINAL_BUSY = 1041
NOT_CANCELLABLE = 1042
NOT_REFUNDABLE = 1043
REFUND_TOO_HIGH = 1044


class MspError(Exception):
    """An API failure with MultiSafepay's error shape; raised by pure code, rendered by the app."""

    def __init__(self, http_status: int, code: int, info: str) -> None:
        super().__init__(f"{http_status} {code} {info}")
        self.http_status = http_status
        self.code = code
        self.info = info

    def body(self) -> dict[str, Any]:
        return {"success": False, "data": {}, "error_code": self.code, "error_info": self.info}
