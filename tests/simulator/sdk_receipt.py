"""Runs inside a separate virtualenv with MultiSafepay's official SDK (pydantic 1): creates a
cloud POS order on the simulator, waits for its final status and reads its receipt with the
SDK's ``PosManager.get_receipt``; then asks for the receipt of an order that does not exist.

Usage: python sdk_receipt.py BASE_URL API_KEY TERMINAL_ID ORDER_ID  (prints one JSON line)
"""

import json
import os
import sys
import time

os.environ["MSP_SDK_BUILD_PROFILE"] = "dev"  # the SDK allows a custom base URL only so
os.environ["MSP_SDK_ALLOW_CUSTOM_BASE_URL"] = "1"

from multisafepay import Sdk
from multisafepay.api.paths.orders.request.order_request import OrderRequest

base_url, api_key, terminal_id, order_id = sys.argv[1:5]
sdk = Sdk(api_key=api_key, is_production=False, base_url=base_url)

order_request = (
    OrderRequest()
    .add_type("redirect")
    .add_order_id(order_id)
    .add_description("SDK receipt test")
    .add_amount(1250)
    .add_currency("EUR")
    .add_gateway_info({"terminal_id": terminal_id})
)
sdk.get_order_manager().create(order_request)
deadline = time.monotonic() + 60
while True:
    order = sdk.get_order_manager().get(order_id).get_data()
    if order.status in ("completed", "cancelled", "void", "expired") or time.monotonic() > deadline:
        break
    time.sleep(0.05)

response = sdk.get_pos_manager().get_receipt(order_id)
receipt = response.get_data()
warnings = getattr(response, "warnings", None)
result = {
    "order_status": order.status,
    "order_last4": order.payment_details.last4 if order.payment_details else None,
    "has_receipt": receipt is not None,
    "warnings": [str(w) for w in (warnings or [])],
}
if receipt is not None:
    result.update(
        {
            "merchant": receipt.merchant.name if receipt.merchant else None,
            "amount": receipt.order.amount if receipt.order else None,
            "completed": receipt.order.completed if receipt.order else None,
            "last4": receipt.payment.last4 if receipt.payment else None,
            "payment_method": receipt.payment.payment_method if receipt.payment else None,
            "response_code": receipt.payment.response_code if receipt.payment else None,
            "printed_on": receipt.printed_on,
        }
    )
try:
    sdk.get_pos_manager().get_receipt(order_id + "-unknown")
    result["unknown"] = "no error"
except Exception as exc:  # noqa: BLE001 - reported by name: what the SDK raises for 404/1006
    response = getattr(exc, "response", None)
    result["unknown"] = type(exc).__name__
    result["unknown_status"] = getattr(response, "status_code", None)
print(json.dumps(result))
