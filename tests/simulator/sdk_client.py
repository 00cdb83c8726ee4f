"""Runs inside a separate virtualenv with MultiSafepay's official Python SDK (``multisafepay``,
pinned in ``bridge/bench/sdk-requirements.txt``; it needs pydantic 1): drives the simulator
with the SDK's own code and prints one JSON line of what it saw. Not imported by the test
suite.

    python sdk_client.py flow BASE_URL API_KEY RUN_ID
    python sdk_client.py validate-webhook API_KEY  (stdin: {"body": ..., "auth": ...})
"""

import json
import os
import sys

os.environ["MSP_SDK_BUILD_PROFILE"] = "dev"  # the SDK allows a custom base URL only so
os.environ["MSP_SDK_ALLOW_CUSTOM_BASE_URL"] = "1"

import requests
from multisafepay import Sdk
from multisafepay.api.paths.orders.order_id.refund.request.refund_request import (
    RefundOrderRequest,
)
from multisafepay.api.paths.orders.request.order_request import OrderRequest
from multisafepay.util.webhook import Webhook


def create(sdk, order_id, terminal_id, amount):
    order_request = (
        OrderRequest()
        .add_type("redirect")
        .add_order_id(order_id)
        .add_description("SDK compatibility test")
        .add_amount(amount)
        .add_currency("EUR")
        .add_gateway_info({"terminal_id": terminal_id})
    )
    return sdk.get_order_manager().create(order_request).get_data()


def refund(sdk, order_id, amount):
    """A refund's answer, or the refusal's HTTP status and MultiSafepay error code."""
    request = RefundOrderRequest().add_currency("EUR").add_description("SDK refund")
    if amount is not None:
        request = request.add_amount(amount)
    try:
        data = sdk.get_order_manager().refund(order_id, request).get_data()
    except requests.HTTPError as exc:
        body = exc.response.json()
        return {"http": exc.response.status_code, "error_code": body.get("error_code")}
    return {"http": 200, "order_id": data.order_id, "transaction_id": data.transaction_id}


def flow(base_url, api_key, run_id):
    sdk = Sdk(api_key=api_key, is_production=False, base_url=base_url)
    result = {}

    # 1. create on a terminal (an order id with "/": the SDK percent-encodes path segments)
    paid_id = f"sdk/{run_id}/paid"
    order = create(sdk, paid_id, "SIM-SOFTDECLINE-APPROVE-41", 1250)
    result["created"] = {
        "order_id": order.order_id,
        "has_token": bool(order.events_token),
        "has_stream_url": bool(order.events_stream_url),
    }

    # 2. the event stream, read by the SDK's own SSE client, until the final status
    events = []
    pings = 0
    with sdk.get_event_manager().subscribe_order_events(order, timeout=30) as stream:
        for event in stream:
            if event.data == "ping":
                pings += 1
                continue
            status = getattr(event.data, "status", None)
            events.append({"event": event.event, "id": event.event_id, "status": status})
            if status in ("completed", "cancelled"):
                break
    result["events"] = events
    result["pings"] = pings

    # 3. get
    fetched = sdk.get_order_manager().get(paid_id).get_data()
    result["get"] = {
        "order_id": fetched.order_id,
        "status": fetched.status,
        "terminal": fetched.payment_details.terminal_id if fetched.payment_details else None,
    }

    # 4. refunds: partial, the same amount again (refused), then the rest (no amount)
    result["refunds"] = [
        refund(sdk, paid_id, 300),
        refund(sdk, paid_id, 300),
        refund(sdk, paid_id, None),
    ]
    after = sdk.get_order_manager().get(paid_id).get_data()
    result["after_refunds"] = {"status": after.status, "amount_refunded": after.amount_refunded}

    # 5. cancel an order in flight
    cancel_id = f"sdk/{run_id}/cancelled"
    create(sdk, cancel_id, "SIM-TIMEOUT-41", 1250)
    cancelled = sdk.get_order_manager().cancel_transaction(cancel_id).get_data()
    result["cancel"] = {
        "answer_status": cancelled.status,
        "get_status": sdk.get_order_manager().get(cancel_id).get_data().status,
    }

    # 6. terminals
    listing = sdk.get_terminal_manager().get_terminals({"page": 1, "limit": 100}).get_data()
    result["terminals"] = [
        {
            "id": t.id,
            "provider": t.provider,
            "code": t.code,
            "created": t.created,
            "last_updated": t.last_updated,
            "active": t.active,
            "group_id": t.group_id,
        }
        for t in listing.get_data()
    ]
    return result


def validate_webhook(api_key):
    given = json.load(sys.stdin)
    # max_age 0: the SDK checks no age (the docs' example is years old)
    return {"valid": Webhook.validate(given["body"], given["auth"], api_key, given["max_age"])}


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "flow":
        out = flow(*args)
    elif command == "validate-webhook":
        out = validate_webhook(*args)
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(out))
