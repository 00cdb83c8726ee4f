"""Orders the bridge did not start: followed by a ``watch`` command (the till created the
order and hands over its events token), or learned from the group's webhook alone (typed in
on the terminal, started from an app). Either way they reach the terminal's channel."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any, Self

import httpx
import pytest
from helpers.harness import (
    API_KEY,
    Till,
    bridge_config,
    details_of,
    running_bridge,
    sim_orders,
    statuses,
)
from redis.asyncio import Redis

from bridge import logs
from bridge.redis.server import free_port
from bridge.simulator.server import SimulatorServer

pytestmark = pytest.mark.anyio


async def create_upstream(
    sim: SimulatorServer,
    order_id: str,
    terminal: str,
    amount: int = 1250,
    notification_url: str | None = None,
) -> dict[str, Any]:
    """What a till (or an app) does without the bridge: ``POST orders`` with the group's key."""
    body: dict[str, Any] = {
        "type": "redirect",
        "order_id": order_id,
        "gateway": "",
        "currency": "EUR",
        "amount": amount,
        "description": f"made outside the bridge: {order_id}",
        "gateway_info": {"terminal_id": terminal},
    }
    if notification_url:
        body["payment_options"] = {
            "notification_url": notification_url,
            "notification_method": "POST",
        }
    async with httpx.AsyncClient() as client:
        answer = await client.post(sim.base_url + "orders", headers={"api_key": API_KEY}, json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def final_seen(order_id: str):
    return lambda events: any(e["order_id"] == order_id and e["final"] for e in events)


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Every log line of the daemon (and of the libraries under it), as JSON, at debug."""
    buf = io.StringIO()
    logs.configure_logging("debug", "json", buf, environ={})
    try:
        yield buf
    finally:
        logs.reset_logging()


class ConnectionRecorder:
    """A listening socket that counts who connects to it (and answers nothing)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


async def test_order_started_elsewhere_reaches_its_terminal_by_webhook(
    redis_server, redis_client: Redis
) -> None:
    port = free_port()
    till = Till(redis_client)
    terminal = "SIM-SOFTDECLINE-APPROVE-01"
    with SimulatorServer(speed=10) as sim:
        config = bridge_config(
            redis_server.url,
            sim.base_url,
            webhook={
                "enabled": True,
                "listen": f"127.0.0.1:{port}",
                "public_url": f"http://127.0.0.1:{port}",
            },
        )
        hook = config.webhook.notification_url("shop")
        assert hook == f"http://127.0.0.1:{port}/webhooks/multisafepay/shop"
        async with redis_client.pubsub() as pubsub:
            await pubsub.subscribe(till.keys.terminal_channel(terminal))
            assert (await pubsub.get_message(timeout=2))["type"] == "subscribe"
            async with running_bridge(config):
                await create_upstream(sim, "typed-in-1", terminal.lower(), notification_url=hook)
                await till.wait_for(terminal, final_seen("typed-in-1"))
                await till.finished("typed-in-1")
                events = await till.events(terminal)
            live = []
            while (m := await pubsub.get_message(timeout=0.2)) is not None:
                live.append(json.loads(m["data"]))
    # a soft decline: declined, then the step-up transaction
    assert statuses(events) == ["initialized", "declined", "initialized", "completed"]
    assert {e["source"] for e in events} == {"webhook"}
    assert all(e["order_id"] == "typed-in-1" and e["terminal_id"] == terminal for e in events)
    assert all(e["command_id"] is None for e in events)  # no till command started it
    assert [e["final"] for e in events] == [False, False, False, True]
    assert events[-1]["amount"] == 1250 and events[-1]["details"].get("last4")
    assert [e["event_id"] for e in live] == [e["event_id"] for e in events]  # live on pub/sub too
    # the bridge did not start a session for it, nor think the terminal busy with it
    assert await redis_client.get(till.keys.terminal_active(terminal)) is None


async def test_watch_follows_an_order_the_till_created(
    redis_server, redis_client: Redis, captured_logs: io.StringIO
) -> None:
    till = Till(redis_client)
    terminal = "SIM-RETRY-01"
    # slow enough that the bridge is on the stream before the payment ends; polls rare
    with SimulatorServer(speed=4) as sim:
        config = bridge_config(redis_server.url, sim.base_url, multisafepay={"poll_interval": 10.0})
        async with redis_client.pubsub() as pubsub:
            await pubsub.subscribe(till.keys.terminal_channel(terminal))
            assert (await pubsub.get_message(timeout=2))["type"] == "subscribe"
            async with running_bridge(config):
                created = await create_upstream(sim, "till-made-1", terminal)
                token = created["events_token"]
                await till.send(
                    {
                        "type": "watch",
                        "terminal_id": terminal,
                        "order_id": "till-made-1",
                        "command_id": "w-1",
                        "events_token": token,
                        "events_stream_url": created["events_stream_url"],
                        "events_url": created["events_url"],
                    }
                )
                await till.wait_for(terminal, final_seen("till-made-1"), timeout=15)
                await till.finished("till-made-1")  # its card details follow the final
                everything = await till.events(terminal)
            live = []
            while (m := await pubsub.get_message(timeout=0.2)) is not None:
                live.append(m["data"])
        upstream = await sim_orders(sim)

    # the bridge was on the stream before the first step (0.375 s in): it saw every one, the
    # first possibly through the GET it makes once the stream is open
    events = [e for e in everything if e["type"] != "order.details"]
    assert statuses(events) == ["initialized", "declined", "initialized", "completed"]
    assert [e["source"] for e in events][1:] == ["stream"] * 3
    assert events[0]["source"] in ("stream", "poll")
    assert events[-1]["final"] is True and not events[-1]["details"].get("card")
    (details,) = details_of(everything)
    assert details["status"] == "completed" and details["details"].get("card")  # from GET
    assert sum(e["final"] for e in events) == 1
    assert all(e["order_id"] == "till-made-1" and e["terminal_id"] == terminal for e in events)
    assert "order.created" not in statuses(events)  # the bridge created nothing
    assert len(upstream) == 1  # following did not create or touch another order
    assert [json.loads(m)["event_id"] for m in live] == [e["event_id"] for e in everything]
    # the token never leaves the daemon: not in what tills read, not in a log line
    published = (
        json.dumps(events)
        + "".join(live)
        + (await redis_client.get(till.keys.order("till-made-1")))
    )
    assert token not in published
    assert "order.watch" in captured_logs.getvalue()  # the capture did see the daemon's lines
    assert token not in captured_logs.getvalue()


async def test_watch_on_a_host_not_in_events_hosts_connects_nowhere(
    redis_server, redis_client: Redis, simulator, captured_logs: io.StringIO
) -> None:
    till = Till(redis_client)
    terminal = "TILL-A"
    token = "opaque-watch-token-7f3e9a1c"  # not JWT-shaped: only the bridge's care hides it
    with ConnectionRecorder() as elsewhere:
        async with running_bridge(bridge_config(redis_server.url, simulator.base_url)):
            # localhost is not the API's host (127.0.0.1) and not in events_hosts
            await till.send(
                {
                    "type": "watch",
                    "terminal_id": terminal,
                    "order_id": "evil-1",
                    "command_id": "w-sse",
                    "events_token": token,
                    "events_stream_url": f"http://localhost:{elsewhere.port}/events/stream/",
                }
            )
            await till.send(
                {
                    "type": "watch",
                    "terminal_id": terminal,
                    "order_id": "evil-2",
                    "command_id": "w-ws",
                    "events_token": token,
                    "events_url": f"ws://localhost:{elsewhere.port}/events/",
                }
            )
            # an allowed stream URL does not smuggle in a forbidden bus URL
            await till.send(
                {
                    "type": "watch",
                    "terminal_id": terminal,
                    "order_id": "evil-3",
                    "command_id": "w-both",
                    "events_token": token,
                    "events_stream_url": simulator.url + "events/stream/",
                    "events_url": f"wss://attacker.example:{elsewhere.port}/",
                }
            )
            await till.wait_for(terminal, lambda ev: len(ev) >= 3)
            await till.settled()  # each watch refused before any connection, then acknowledged
            events = await till.events(terminal)
            sessions = await redis_client.smembers(till.keys.sessions_index)
        assert elsewhere.connections == 0
    assert sorted((e["command_id"], e["type"], e["error"]["code"]) for e in events) == [
        ("w-both", "command.failed", "invalid_command"),
        ("w-sse", "command.failed", "invalid_command"),
        ("w-ws", "command.failed", "invalid_command"),
    ]
    assert all("events_hosts" in e["error"]["message"] and not e["final"] for e in events)
    assert not sessions  # nothing is being followed
    assert token not in json.dumps(events)
    assert "w-sse" in captured_logs.getvalue()
    assert token not in captured_logs.getvalue()


def _jwt(claims: str) -> str:
    payload = base64.urlsafe_b64encode(claims.encode()).decode().rstrip("=")
    return f"eyJhbGciOiJIUzI1NiJ9.{payload}.c2lnbmF0dXJl"


async def test_watches_the_bridge_must_not_follow_are_answered_and_connect_nowhere(
    redis_server, redis_client: Redis, simulator
) -> None:
    """The API's host on another port (a Redis, say), userinfo, a refused port, no URL at all,
    a token no header can carry, an ``exp`` that is no time: each is answered
    ``invalid_command``, leaves no session, and nothing is connected to."""
    till = Till(redis_client)
    terminal = "TILL-A"
    with ConnectionRecorder() as elsewhere:
        other_port = f"http://127.0.0.1:{elsewhere.port}/events/stream/"
        good_url = simulator.url + "events/stream/"
        cases: dict[str, dict[str, Any]] = {
            "api-host-other-port": {"events_stream_url": other_port},
            "userinfo": {
                "events_stream_url": f"http://evil.example.net@127.0.0.1:{elsewhere.port}/"
            },
            "userinfo-api-port": {"events_url": simulator.url.replace("http://", "ws://evil@")},
            "refused-port": {"events_url": "ws://127.0.0.1:1/"},
            "null-url": {"events_stream_url": None},
            "garbage-url": {"events_stream_url": "http://[::1"},
            "non-ascii-token": {"events_stream_url": good_url, "events_token": "tökén-ä"},
            "absurd-exp": {
                "events_stream_url": good_url,
                "events_token": _jwt('{"exp": 1' + "0" * 400 + "}"),
            },
        }
        async with running_bridge(bridge_config(redis_server.url, simulator.base_url)):
            for name, fields in cases.items():
                await till.send(
                    {
                        "type": "watch",
                        "terminal_id": terminal,
                        "order_id": f"w-{name}",
                        "command_id": name,
                        "events_token": "opaque-token-1",
                        **fields,
                    }
                )
            await till.wait_for(terminal, lambda ev: len(ev) >= len(cases))
            await till.settled()  # each watch refused before any connection, then acknowledged
            events = await till.events(terminal)
            sessions = await redis_client.smembers(till.keys.sessions_index)
            pending = await redis_client.xpending(till.keys.commands, "pos-bridge")
        assert elsewhere.connections == 0
    assert sorted((e["command_id"], e["type"], e["error"]["code"]) for e in events) == sorted(
        (name, "command.failed", "invalid_command") for name in cases
    )
    assert not sessions and pending["pending"] == 0
    by_command = {e["command_id"]: e["error"]["message"] for e in events}
    assert f"port {elsewhere.port}" in by_command["api-host-other-port"]
    assert "user information" in by_command["userinfo"]
    assert "plausible" in by_command["absurd-exp"]
    assert "printable ASCII" in by_command["non-ascii-token"]
