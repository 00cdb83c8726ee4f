"""Runs inside a separate virtualenv with MultiSafepay's official SDK (pydantic 1): reads an
order's receipt from the simulator with the SDK's ``PosManager.get_receipt``, then asks for
the receipt of an order that does not exist.

Usage: python sdk_receipt.py BASE_URL API_KEY ORDER_ID  (prints one JSON line)
"""

import json
import os
import sys

os.environ["MSP_SDK_BUILD_PROFILE"] = "dev"  # the SDK allows a custom base URL only so
os.environ["MSP_SDK_ALLOW_CUSTOM_BASE_URL"] = "1"

from multisafepay import Sdk

base_url, api_key, order_id = sys.argv[1:4]
pos = Sdk(api_key=api_key, is_production=False, base_url=base_url).get_pos_manager()

response = pos.get_receipt(order_id)
receipt = response.get_data()
result = {
    "has_receipt": receipt is not None,
    "warnings": [str(w) for w in (getattr(response, "warnings", None) or [])],
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
    pos.get_receipt(order_id + "-unknown")
    result["unknown"] = "no error"
except Exception as exc:  # noqa: BLE001 - reported by name: what the SDK raises for 404/1006
    result["unknown"] = type(exc).__name__
    result["unknown_status"] = getattr(getattr(exc, "response", None), "status_code", None)
print(json.dumps(result))
