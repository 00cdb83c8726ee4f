"""The peer of ``pos-bridge bench --peer``: a naive bridge on MultiSafepay's official Python SDK.

Runs inside the SDK's own virtualenv (:mod:`bridge.bench.sdkvenv`; the SDK needs pydantic 1),
started by :mod:`bridge.bench.peer` as a script, so it imports nothing of ``bridge``:

    python sdk_peer.py --redis-url URL --prefix P --api-base-url URL --api-key KEY

What a bridge written the obvious way looks like: the main thread reads ``{p}:commands`` with
``XREAD`` (no consumer group); each ``pay`` gets **a thread of its own**, which creates the
order through the SDK (``OrderManager.create``), opens the order's event stream with the SDK's
SSE client (``EventManager.subscribe_order_events``), asks for the order once
(``OrderManager.get``, as the bridge does when its stream opens), and publishes every status
change as JSON on ``{p}:terminal:{TERMINAL}`` with redis-py's ``PUBLISH``, until a final
status. The events carry what the bench's tills read (type, order, status, a unique
``event_id``).

What it does not do, and the bridge does (so the comparison favours it): no durable event
stream or order key, no leases or takeover, no polling of quiet orders, no reconnection, no
webhooks, no idempotence; an error ends the payment's thread with one ``order.failed``.
It sets ``{p}:peer:ready`` once it reads commands. Not imported by the bridge or its tests.

Over TLS (``bench --tls``) it trusts the CA named by ``REQUESTS_CA_BUNDLE``, as a requests
program does; the SDK sends prepared requests with ``Session.send``, which skips requests'
lookup of that variable, so the peer hands the SDK a session that carries it (``verify``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import uuid
from typing import Any

os.environ["MSP_SDK_BUILD_PROFILE"] = "dev"  # the SDK takes a custom base URL only so
os.environ["MSP_SDK_ALLOW_CUSTOM_BASE_URL"] = "1"

import redis  # noqa: E402 - after the SDK's environment is set
from multisafepay import Sdk  # type: ignore[import-not-found]  # noqa: E402 - only in the SDK's venv
from multisafepay.api.paths.orders.request.order_request import (  # type: ignore[import-not-found]  # noqa: E402, E501 - only in the SDK's venv
    OrderRequest,
)
from multisafepay.transport import RequestsTransport  # type: ignore[import-not-found]  # noqa: E402, E501 - only in the SDK's venv
from requests import Session  # type: ignore[import-untyped]  # noqa: E402 - in the SDK's venv

FINAL = {"completed", "cancelled", "void", "expired"}  # the bridge's finals (README)
#: The SDK's socket timeout on the event stream: a quiet payment is held, not given up.
STREAM_TIMEOUT = 3600.0
REDIS_CONNECTIONS = 64


class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.prefix = args.prefix
        # redis-py's default pool refuses a 101st connection at once (MaxConnectionsError);
        # threads publishing together wait for one of a bounded pool instead
        pool = redis.BlockingConnectionPool.from_url(
            args.redis_url, max_connections=REDIS_CONNECTIONS, timeout=None, decode_responses=True
        )
        self.redis = redis.Redis(connection_pool=pool)
        session = Session()
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or True
        self.sdk = Sdk(
            api_key=args.api_key,
            is_production=False,
            base_url=args.api_base_url,
            transport=RequestsTransport(session),
        )
        self.stopping = threading.Event()

    def publish(self, terminal: str, order_id: str, typ: str, status: str | None) -> None:
        event = {
            "schema": 1,
            "event_id": str(uuid.uuid4()),
            "type": typ,
            "terminal_id": terminal,
            "order_id": order_id,
            "status": status,
            "final": status in FINAL,
        }
        self.redis.publish(f"{self.prefix}:terminal:{terminal}", json.dumps(event))

    def follow(self, command: dict[str, Any]) -> None:
        """One payment, in its own thread: create, stream, publish, until a final status."""
        terminal, order_id = str(command["terminal_id"]), str(command["order_id"])
        try:
            request = (
                OrderRequest()
                .add_type("redirect")
                .add_order_id(order_id)
                .add_description(str(command.get("description") or "peer"))
                .add_amount(int(command["amount"]))
                .add_currency(str(command.get("currency") or "EUR"))
                .add_gateway_info({"terminal_id": terminal})
            )
            order = self.sdk.get_order_manager().create(request).get_data()
            self.publish(terminal, order_id, "order.created", None)
            events = self.sdk.get_event_manager()
            with events.subscribe_order_events(order, timeout=STREAM_TIMEOUT) as stream:
                last = self.sdk.get_order_manager().get(order_id).get_data().status
                self.publish(terminal, order_id, "order.status", last)
                for event in stream:
                    status = getattr(event.data, "status", None)
                    if not status or status == last:
                        continue  # a keep-alive, or what the GET said already
                    last = status
                    self.publish(terminal, order_id, "order.status", status)
                    if status in FINAL or self.stopping.is_set():
                        return
        except Exception as exc:  # noqa: BLE001 - any failure ends this payment, said once
            print(f"peer: {order_id}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            self.publish(terminal, order_id, "order.failed", None)

    def run(self) -> None:
        key = f"{self.prefix}:commands"
        last_id = "0-0"
        self.redis.set(f"{self.prefix}:peer:ready", "1")
        while not self.stopping.is_set():
            reply: Any = self.redis.xread({key: last_id}, count=1000, block=500)
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    last_id = entry_id
                    command = json.loads(fields.get("command") or "{}")
                    if command.get("type") == "pay":
                        threading.Thread(target=self.follow, args=(command,), daemon=True).start()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--api-base-url", required=True)
    ap.add_argument("--api-key", required=True)
    peer = Peer(ap.parse_args())
    signal.signal(signal.SIGTERM, lambda *_: peer.stopping.set())
    peer.run()


if __name__ == "__main__":
    main()
