"""Webhook delivery as MultiSafepay/docs: content/payment-management/webhook.md describes it.

``{notification_url}?transactionid={order_id}&timestamp={ts}``; a ``POST`` carries the order
(as ``GET orders/{id}`` shows it) signed in the ``Auth`` header; ``notification_method`` ``GET``
sends no body (the receiver fetches the order) and, since the docs say only that "every ``POST``
notification request includes an HMAC signature", no ``Auth`` header (assumed). Acknowledged by
HTTP 200 with ``OK`` in the first 100 characters of the body (which ``MULTISAFEPAY_OK`` also
satisfies); otherwise resent 3 times, 15 minutes apart, each with a new timestamp.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from bridge.simulator.clock import Clock
from bridge.simulator.signing import auth_header

log = logging.getLogger("bridge.simulator.webhooks")

RESENDS = 3
RESEND_INTERVAL = 15 * 60.0  # simulated seconds between attempts


def encode_body(order_view: dict[str, Any]) -> bytes:
    return json.dumps(order_view, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def notification_url(base: str, order_id: str, timestamp: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}transactionid={quote(order_id, safe='')}&timestamp={timestamp}"


def acknowledged(status_code: int, text: str) -> bool:
    return status_code == 200 and "OK" in text[:100]


class WebhookSender:
    def __init__(
        self,
        client: httpx.AsyncClient,
        clock: Clock,
        resend_interval: float = RESEND_INTERVAL,
        on_record: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.on_record = on_record  # told when a record is added or its result filled in
        self.clock = clock
        self.resend_interval = resend_interval
        self.attempts: list[dict[str, Any]] = []  # a record for the admin API and tests

    async def deliver(
        self,
        url: str,
        api_key: str,
        order_id: str,
        view: dict[str, Any],
        method: str = "POST",
    ) -> bool:
        """Send one notification until acknowledged or out of resends; True if acknowledged."""
        body = encode_body(view) if method == "POST" else b""
        for attempt in range(RESENDS + 1):
            if attempt:
                await self.clock.sleep(self.resend_interval)
            ts = str(int(self.clock.time()))  # a new timestamp on every attempt
            target = notification_url(url, order_id, ts)
            record = {
                "order_id": order_id,
                "status": view.get("status"),
                "attempt": attempt + 1,
                "url": url,
                "method": method,
                "result": None,
            }
            self.attempts.append(record)
            self._recorded()
            try:
                headers = {"User-Agent": "pos-bridge-simulator"}
                if method == "POST":
                    headers["Content-Type"] = "application/json"
                    headers["Auth"] = auth_header(api_key, ts, body)
                resp = await self.client.request(method, target, content=body, headers=headers)
                ok = acknowledged(resp.status_code, resp.text)
                record["result"] = resp.status_code
            except httpx.HTTPError as exc:
                ok = False
                record["result"] = type(exc).__name__
            self._recorded()
            log.info(
                "webhook %s status=%s attempt=%d result=%s",
                order_id,
                view.get("status"),
                attempt + 1,
                record["result"],
            )
            if ok:
                return True
        return False

    def _recorded(self) -> None:
        if self.on_record is not None:
            self.on_record()
