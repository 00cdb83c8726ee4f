"""The webhook channel over real sockets: signature checks, and webhooks as a second (or the
only) way the bridge learns what happened."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from helpers.harness import (
    API_KEY,
    Till,
    bridge_config,
    running_bridge,
    sim_webhooks,
    statuses,
)
from redis.asyncio import Redis

from bridge.redis.server import free_port
from bridge.simulator.server import SimulatorServer
from bridge.simulator.signing import auth_header
from bridge.simulator.variants import Variants

pytestmark = pytest.mark.anyio

BODY = {
    "order_id": "hooked-1",
    "status": "initialized",
    "financial_status": "initialized",
    "amount": 1250,
    "currency": "EUR",
    "transaction_id": "4711",
    "modified": "2026-11-24T10:00:00",
    "payment_details": {"terminal_id": "till-a", "type": "VISA"},
}


def webhook_config(redis_url: str, api_base_url: str, port: int, **upstream: object):
    return bridge_config(
        redis_url,
        api_base_url,
        multisafepay=upstream,
        webhook={
            "enabled": True,
            "listen": f"127.0.0.1:{port}",
            "public_url": f"http://127.0.0.1:{port}",
            "max_body": 4096,
            "max_age": 300,
        },
    )


def post(
    port: int, raw: bytes, auth: str | None, ts: str | None = None, group: str = "shop"
) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Auth"] = auth
    params = {"transactionid": "hooked-1", "timestamp": ts or str(int(time.time()))}
    return httpx.post(
        f"http://127.0.0.1:{port}/webhooks/multisafepay/{group}",
        content=raw,
        headers=headers,
        params=params,
    )


async def test_webhook_requests_are_checked_and_answered(
    redis_server, redis_client: Redis, simulator
) -> None:
    port = free_port()
    till = Till(redis_client)
    now = str(int(time.time()))
    # not compact: spaces after separators, as a sender may write it; signed over these bytes
    raw = json.dumps(BODY, separators=(", ", ": ")).encode()
    compact = json.dumps(BODY, separators=(",", ":")).encode()
    async with running_bridge(webhook_config(redis_server.url, simulator.base_url, port)):
        import anyio

        def send_all() -> list[tuple[str, httpx.Response]]:
            stale = str(int(time.time()) - 3600)
            return [
                ("reserialized", post(port, compact, auth_header(API_KEY, now, raw), now)),
                ("stale", post(port, raw, auth_header(API_KEY, stale, raw), stale)),
                ("wrong key", post(port, raw, auth_header("another-key-123456", now, raw), now)),
                ("missing header", post(port, raw, None, now)),
                ("garbage header", post(port, raw, "!!!not base64", now)),
                (
                    "huge",
                    post(port, b"{" + b" " * 10_000 + b"}", auth_header(API_KEY, now, b"x"), now),
                ),
                ("invalid json", post(port, b"{nope", auth_header(API_KEY, now, b"{nope"), now)),
                (
                    "unknown group",
                    post(port, raw, auth_header(API_KEY, now, raw), now, group="nope"),
                ),
                ("valid", post(port, raw, auth_header(API_KEY, now, raw), now)),
                ("valid again", post(port, raw, auth_header(API_KEY, now, raw), now)),
                # the URL's timestamp is not signed: only the signed one counts
                (
                    "url timestamp differs",
                    post(port, raw, auth_header(API_KEY, now, raw), str(int(now) - 7)),
                ),
            ]

        answers = dict(await anyio.to_thread.run_sync(send_all))
        events = await till.events("TILL-A")
    codes = {name: r.status_code for name, r in answers.items()}
    assert codes == {
        "reserialized": 401,
        "stale": 401,
        "wrong key": 401,
        "missing header": 401,
        "garbage header": 401,
        "huge": 413,
        "invalid json": 400,
        "unknown group": 404,
        "valid": 200,
        "valid again": 200,
        "url timestamp differs": 200,
    }
    assert "OK" in answers["valid"].text[:100]
    for name, response in answers.items():  # no detail leaks to the caller
        assert API_KEY not in response.text and "signature" not in response.text.lower(), name
    # only the valid one published, once; an order the bridge did not start reaches its terminal
    assert [(e["order_id"], e["status"], e["source"]) for e in events] == [
        ("hooked-1", "initialized", "webhook")
    ]


async def test_webhook_only_order_reaches_its_final(redis_server, redis_client: Redis) -> None:
    """The stream is unusable (the token expires at once) and nobody polls: webhooks carry it."""
    port = free_port()
    till = Till(redis_client)
    with SimulatorServer(speed=20, variants=Variants(token_ttl=1)) as sim:
        config = webhook_config(
            redis_server.url, sim.base_url, port, poll_interval=600.0, enrich_final=False
        )
        async with running_bridge(config):
            command_id = await till.pay("SIM-RETRY-01", 1250)
            events = await till.until_final("SIM-RETRY-01", command_id, timeout=20)
    assert statuses(events) == [
        "order.created",
        "initialized",
        "declined",
        "initialized",
        "completed",
    ]
    assert {e["source"] for e in events[1:]} == {"webhook"}


async def test_three_channels_publish_each_transition_once(
    redis_server, redis_client: Redis
) -> None:
    port = free_port()
    till = Till(redis_client)
    with SimulatorServer(speed=10) as sim:
        config = webhook_config(redis_server.url, sim.base_url, port, poll_interval=0.05)
        async with running_bridge(config):
            ids = [
                await till.pay(t, 1250)
                for t in ("SIM-RETRY-01", "SIM-SOFTDECLINE-APPROVE-01", "SIM-DROP-01")
            ]
            results = [
                await till.until_final(t, c, timeout=25)
                for t, c in zip(
                    ("SIM-RETRY-01", "SIM-SOFTDECLINE-APPROVE-01", "SIM-DROP-01"), ids, strict=True
                )
            ]
            deliveries = await sim_webhooks(sim)
    assert statuses(results[0]) == [
        "order.created",
        "initialized",
        "declined",
        "initialized",
        "completed",
    ]
    assert statuses(results[1]) == [
        "order.created",
        "initialized",
        "declined",
        "initialized",
        "completed",
    ]
    assert statuses(results[2]) == ["order.created", "initialized", "completed"]
    assert len(deliveries) >= 9  # the webhooks did arrive (and were de-duplicated)
    for events in results:
        assert len({e["event_id"] for e in events}) == len(events)
        assert sum(e["final"] for e in events) == 1


async def test_webhook_answered_503_while_redis_is_down(
    redis_server, redis_client: Redis, simulator
) -> None:
    """Not safely handled means not acknowledged: MultiSafepay sends it again later."""
    import anyio

    port = free_port()
    till = Till(redis_client)
    now = str(int(time.time()))
    raw = json.dumps(BODY).encode()
    async with running_bridge(webhook_config(redis_server.url, simulator.base_url, port)):
        await anyio.to_thread.run_sync(redis_server.stop)
        try:
            down = await anyio.to_thread.run_sync(
                lambda: post(port, raw, auth_header(API_KEY, now, raw), now)
            )
        finally:
            await anyio.to_thread.run_sync(redis_server.start)
        up = await anyio.to_thread.run_sync(
            lambda: post(port, raw, auth_header(API_KEY, now, raw), now)
        )
        events = await till.events("TILL-A")
    assert (down.status_code, up.status_code) == (503, 200)
    assert [e["status"] for e in events] == ["initialized"]
