"""Signed webhooks: delivered on every status change, resent until acknowledged."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import anyio
import httpx

from bridge.simulator import SimulatorServer
from bridge.simulator.clock import Clock
from bridge.simulator.webhooks import RESEND_INTERVAL, RESENDS, WebhookSender
from tests.simulator.conftest import KEY, Receiver, order_body


def verify(req: dict[str, Any], key: str) -> bool:
    ts, sig = base64.b64decode(req["headers"]["Auth"]).decode().split(":", 1)
    expected = hmac.new(key.encode(), ts.encode() + b":" + req["raw"], hashlib.sha512).hexdigest()
    return ts == req["query"]["timestamp"][0] and hmac.compare_digest(sig, expected)


def test_webhooks_on_every_change_signed(receiver: Receiver) -> None:
    with SimulatorServer(speed=200, webhook_url=receiver.url) as sim:
        body = order_body("SIM-RETRY-01")
        assert (
            httpx.post(sim.base_url + "orders", headers={"api_key": KEY}, json=body).status_code
            == 200
        )
        receiver.wait(lambda: [r["status"] for r in receiver.requests][-1:] == ["completed"])
        assert [r["status"] for r in receiver.requests] == [
            "initialized",
            "declined",
            "initialized",
            "completed",
        ]
        for req in receiver.requests:
            assert req["path"] == "/hook"
            assert req["query"]["transactionid"] == [body["order_id"]]
            assert req["headers"]["Content-Type"] == "application/json"
            assert verify(req, KEY)
        got = json.loads(receiver.requests[-1]["raw"])
        view = httpx.get(
            f"{sim.base_url}orders/{body['order_id']}", headers={"api_key": KEY}
        ).json()["data"]
        assert got == view  # the body is the order as GET shows it
        # a refund is a change too
        httpx.post(
            f"{sim.base_url}orders/{body['order_id']}/refunds",
            headers={"api_key": KEY},
            json={"currency": "EUR", "amount": 100},
        )
        receiver.wait(lambda: receiver.requests[-1]["status"] == "partial_refunded")


def test_order_notification_url_wins(receiver: Receiver) -> None:
    with SimulatorServer(speed=200, webhook_url="http://127.0.0.1:9/never") as sim:
        body = order_body(
            "SIM-APPROVE-01",
            payment_options={
                "notification_url": receiver.url + "?x=1",
                "notification_method": "POST",
            },
        )
        httpx.post(sim.base_url + "orders", headers={"api_key": "order-key"}, json=body)
        receiver.wait(lambda: len(receiver.requests) == 2)
        assert receiver.requests[0]["query"]["x"] == ["1"]
        assert all(verify(r, "order-key") for r in receiver.requests)


def test_unacknowledged_webhook_is_resent_three_times(receiver: Receiver) -> None:
    receiver.refuse = {"completed"}
    # 15 minutes / 3000 = 0.3 s between attempts
    with SimulatorServer(speed=3000, webhook_url=receiver.url) as sim:
        body = order_body("SIM-APPROVE-01")
        httpx.post(sim.base_url + "orders", headers={"api_key": KEY}, json=body)
        receiver.wait(lambda: sum(r["status"] == "completed" for r in receiver.requests) == 4)
        done = [r for r in receiver.requests if r["status"] == "completed"]
        gaps = [b["at"] - a["at"] for a, b in zip(done, done[1:], strict=False)]
        assert all(g >= 0.25 for g in gaps), gaps  # the resend interval is waited (at least)
        assert all(verify(r, KEY) for r in done)
        assert (
            sum(r["status"] == "initialized" for r in receiver.requests) == 1
        )  # acknowledged once
        attempts = httpx.get(sim.url + "_sim/webhooks").json()["data"]
        assert [a["attempt"] for a in attempts if a["status"] == "completed"] == [1, 2, 3, 4]


class RecordingClock(Clock):
    """Simulated time that passes at once: each sleep is recorded and moves ``time()`` on."""

    def __init__(self) -> None:
        super().__init__()
        self.slept: list[float] = []
        self.start = time.time()

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    def time(self) -> float:
        return self.start + sum(self.slept)


def test_a_refused_notification_is_sent_four_times_then_given_up(receiver: Receiver) -> None:
    """The first send and 3 resends, 15 simulated minutes apart, each with a new timestamp and
    signature; then no more (the sender returns)."""
    receiver.refuse = {"completed"}
    clock = RecordingClock()
    view = {"order_id": "o-1", "status": "completed", "amount": 1250}

    async def deliver() -> bool:
        async with httpx.AsyncClient() as client:
            sender = WebhookSender(client, clock)
            return await sender.deliver(receiver.url, KEY, "o-1", view)

    assert anyio.run(deliver) is False
    assert clock.slept == [RESEND_INTERVAL] * RESENDS
    assert [r["status"] for r in receiver.requests] == ["completed"] * (RESENDS + 1)
    assert len({r["query"]["timestamp"][0] for r in receiver.requests}) == RESENDS + 1
    assert all(verify(r, KEY) for r in receiver.requests)


def test_notification_method_get_is_honoured(receiver: Receiver) -> None:
    """``notification_method: GET`` (MultiSafepay/docs: content/payment-management/webhook.md,
    "We do support GET"): ``GET {url}?transactionid=..&timestamp=..`` with no body; the receiver
    fetches the order. Unsigned: the docs sign POST notifications only (assumed)."""
    with SimulatorServer(speed=200) as sim:
        body = order_body(
            "SIM-APPROVE-01",
            payment_options={"notification_url": receiver.url, "notification_method": "GET"},
        )
        httpx.post(sim.base_url + "orders", headers={"api_key": KEY}, json=body)
        receiver.wait(lambda: len(receiver.requests) == 2)
        for req in receiver.requests:
            assert req["method"] == "GET" and req["raw"] == b""
            assert req["query"]["transactionid"] == [body["order_id"]]
            assert req["query"]["timestamp"][0].isdigit()
            assert "Auth" not in req["headers"]
        attempts = httpx.get(sim.url + "_sim/webhooks").json()["data"]
        assert {a["method"] for a in attempts} == {"GET"}
