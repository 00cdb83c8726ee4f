"""MultiSafepay-shaped API errors: ``{"success": false, "data": {}, "error_code": N,
"error_info": "..."}`` (MultiSafepay/docs: openapi/components/errors/404Error.yaml).

Every code is one of MultiSafepay's documented codes (MultiSafepay/docs:
api/general/error-reference.md). Which HTTP status goes with which code is documented only for
a few (404 with 1006 for an unknown order, openapi/components/errors/Error1006.yaml); the rest,
and the codes marked "assumed" where the docs name none for the case, are the simulator's
reading. A client should key on the HTTP status first. The full table, with sources, is in
docs/simulator.md.

| HTTP | code | when |
| --- | --- | --- |
| 400 | 1001 | amount missing, not an integer or <= 0; refund amount < 0 |
| 400 | 1002 | currency missing / not 3 letters; refund currency missing or not the order's |
| 400 | 1006 | order_id missing, > 50 chars or outside ``a-zA-Z0-9/-_`` |
| 400 | 1008 | description missing, empty or > 200 chars |
| 400 | 1016 | body not JSON, or ``gateway_info.terminal_id`` missing |
| 400 | 1034 | refund refused: not completed, already refunded, more than remains, or the same |
|     |      | amount again within 5 minutes |
| 401 | 1032 | API key missing, empty or not allowed (``--api-key``); events token invalid |
| 404 | 1006 | order unknown, or created with another API key (orders are per key, like accounts) |
| 404 | 1000 | unknown path; terminal does not exist (``SIM-UNKNOWN-...``): code assumed |
| 409 | 1006 | duplicate order_id (the HTTP status is assumed) |
| 409 | 1022 | terminal busy: its order is not final ("Cannot initiate transaction"; assumed) |
| 409 | 1000 | order not cancellable (already final): code assumed |
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
CANNOT_INITIATE = 1022
INVALID_API_KEY = 1032
CANNOT_REFUND = 1034
# No code is documented for these cases: the generic one (assumed).
UNKNOWN_TERMINAL = UNKNOWN
NOT_CANCELLABLE = UNKNOWN
TERMINAL_BUSY = CANNOT_INITIATE


class MspError(Exception):
    """An API failure with MultiSafepay's error shape; raised by pure code, rendered by the app."""

    def __init__(self, http_status: int, code: int, info: str) -> None:
        super().__init__(f"{http_status} {code} {info}")
        self.http_status = http_status
        self.code = code
        self.info = info

    def body(self) -> dict[str, Any]:
        return {"success": False, "data": {}, "error_code": self.code, "error_info": self.info}
