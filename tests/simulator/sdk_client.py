"""Runs inside a separate virtualenv with MultiSafepay's official SDK (pydantic 1): creates a
cloud POS order on the simulator and follows its SSE stream with the SDK's own code.

Usage: python sdk_client.py BASE_URL API_KEY TERMINAL_ID ORDER_ID  (prints one JSON line)
"""

import json
import os
import sys

os.environ["MSP_SDK_BUILD_PROFILE"] = "dev"  # the SDK allows a custom base URL only so
os.environ["MSP_SDK_ALLOW_CUSTOM_BASE_URL"] = "1"

from multisafepay import Sdk
from multisafepay.api.paths.orders.request.order_request import OrderRequest
from multisafepay.util.webhook import Webhook

base_url, api_key, terminal_id, order_id = sys.argv[1:5]
sdk = Sdk(api_key=api_key, is_production=False, base_url=base_url)

order_request = (
    OrderRequest()
    .add_type("redirect")
    .add_order_id(order_id)
    .add_description("SDK compatibility test")
    .add_amount(1250)
    .add_currency("EUR")
    .add_gateway_info({"terminal_id": terminal_id})
)
created = sdk.get_order_manager().create(order_request)
order = created.get_data()

events = []
with sdk.get_event_manager().subscribe_order_events(order, last_event_id="0", timeout=30) as stream:
    for event in stream:
        data = event.data
        status = getattr(data, "status", None)
        if event.event != "session.order" or status is None:
            continue
        events.append(
            {
                "event": event.event,
                "id": event.event_id,
                "status": status,
                "order_id": data.order_id,
            }
        )
        if status in ("completed", "cancelled"):
            break

fetched = sdk.get_order_manager().get(order_id).get_data()
result = {
    "order_id": order.order_id,
    "has_token": bool(order.events_token),
    "events": events,
    "get_status": fetched.status,
    "terminal": fetched.payment_details.terminal_id if fetched.payment_details else None,
}

# The SDK's webhook validator accepts the simulator's signature (payload from argv 5 if given).
if len(sys.argv) > 6:
    result["webhook_valid"] = Webhook.validate(sys.argv[5], sys.argv[6], api_key, 3600)
print(json.dumps(result))
