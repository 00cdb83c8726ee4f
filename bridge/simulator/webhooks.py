"""Signed webhook delivery with MultiSafepay's resend rule (3 resends, 15 minutes apart)."""

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

    async def deliver(self, url: str, api_key: str, order_id: str, view: dict[str, Any]) -> bool:
        """Send one notification until acknowledged or out of resends; True if acknowledged."""
        body = encode_body(view)
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
                "result": None,
            }
            self.attempts.append(record)
            self._recorded()
            try:
                resp = await self.client.post(
                    target,
                    content=body,
                    headers={
                        "Content-Type": "application/json",
                        "Auth": auth_header(api_key, ts, body),
                        "User-Agent": "pos-bridge-simulator",
                    },
                )
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
