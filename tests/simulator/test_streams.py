"""The order event streams: SSE and the WebSocket bus, over real sockets."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio
import httpx
import pytest
import websockets

from bridge.simulator import SimulatorServer
from tests.simulator.conftest import (
    KEY,
    SteppedClock,
    create,
    in_background,
    order_body,
    read_sse,
    statuses,
    wait_admin,
)

Stepped = tuple[SimulatorServer, SteppedClock]


async def create_async(
    client: httpx.AsyncClient, sim: SimulatorServer, terminal: str
) -> dict[str, Any]:
    """``create`` from async code: the new order's data."""
    answer = await client.post(
        sim.base_url + "orders", headers={"api_key": KEY}, json=order_body(terminal)
    )
    data: dict[str, Any] = answer.json()["data"]
    return data


def streaming(sim: SimulatorServer, order_id: str) -> None:
    """Wait until a stream of the order is open (the simulator's admin API says so)."""
    wait_admin(sim, order_id, lambda o: o["open_streams"] >= 1)


FLOWS = [
    ("SIM-APPROVE-11", 1250, ["initialized", "completed"]),
    ("SIM-DECLINE-11", 1250, ["initialized", "declined", "cancelled"]),
    ("SIM-SOFTDECLINE-APPROVE-11", 1250, ["initialized", "declined", "initialized", "completed"]),
    ("SIM-SOFTDECLINE-CANCEL-11", 1250, ["initialized", "declined", "initialized", "cancelled"]),
    ("SIM-CUSTOMER-CANCEL-11", 1250, ["initialized", "cancelled"]),
    ("SIM-TIMEOUT-11", 1250, ["initialized", "cancelled"]),
    ("SIM-RETRY-11", 1250, ["initialized", "declined", "initialized", "completed"]),
    ("SIM-SLOW-11", 1250, ["initialized", "completed"]),
    ("0000AB01", 1201, ["initialized", "declined", "cancelled"]),
    ("0000AB02", 1202, ["initialized", "declined", "initialized", "completed"]),
    ("0000AB03", 1203, ["initialized", "declined", "initialized", "cancelled"]),
    ("0000AB04", 1204, ["initialized", "cancelled"]),
    ("0000AB05", 1205, ["initialized", "cancelled"]),
    ("0000AB07", 1207, ["initialized", "declined", "initialized", "completed"]),
    ("0000AB08", 1208, ["initialized", "completed"]),
    ("0000AB11", 1211, ["initialized", "completed"]),
]


@pytest.mark.parametrize("terminal,amount,expected", FLOWS)
def test_scenario_stream(
    sim_ids: SimulatorServer, terminal: str, amount: int, expected: list
) -> None:
    d = create(sim_ids, terminal, amount).json()["data"]
    # Last-Event-ID 0 replays from the start, so a fast speed cannot make us miss the first event.
    msgs = read_sse(d["events_stream_url"], d["events_token"], last_event_id="0")
    assert statuses(msgs) == expected
    events = [m for m in msgs if m.get("event")]
    assert [int(m["id"]) for m in events] == list(range(1, len(expected) + 1))
    first = events[0]["data"]
    assert list(first) == ["financial_status", "order_id", "session_id", "status", "transaction_id"]
    assert first["order_id"] == d["order_id"] and first["session_id"] == d["session_id"]
    assert isinstance(first["transaction_id"], str)


def test_token_bare_and_bearer_and_bad(sim_ids: SimulatorServer) -> None:
    d = create(sim_ids, "SIM-APPROVE-12").json()["data"]
    assert statuses(read_sse(d["events_stream_url"], f"Bearer {d['events_token']}", "0")) == [
        "initialized",
        "completed",
    ]
    assert statuses(read_sse(d["events_stream_url"], d["events_token"], "0")) == [
        "initialized",
        "completed",
    ]
    url = d["events_stream_url"]
    for auth in (None, "Bearer nonsense", d["events_token"][:-2] + "xx"):
        headers = {"Accept": "text/event-stream"} | ({"Authorization": auth} if auth else {})
        r = httpx.get(url, headers=headers)
        assert r.status_code == 401
        assert r.json()["success"] is False and r.json()["error_code"] == 1032


def test_expired_token(reset_variants: None, sim: SimulatorServer) -> None:
    httpx.put(sim.url + "_sim/variants", json={"token_ttl": 1})
    d = create(sim, "SIM-APPROVE-13").json()["data"]
    time.sleep(2.05)
    r = httpx.get(d["events_stream_url"], headers={"Authorization": d["events_token"]})
    assert r.status_code == 401 and "expired" in r.json()["error_info"]


def test_no_replay_without_last_event_id(stepped: Stepped) -> None:
    sim, clock = stepped
    d = create(sim, "SIM-DECLINE-14").json()["data"]
    clock.step(2)  # initialized, declined
    wait_admin(sim, d["order_id"], lambda o: o["events"] == ["initialized", "declined"])
    reading = in_background(lambda: read_sse(d["events_stream_url"], d["events_token"]))
    streaming(sim, d["order_id"])
    clock.step()  # cancelled, while the stream is open
    assert statuses(reading()) == ["cancelled"]


def test_resume_with_last_event_id(sim_ids: SimulatorServer) -> None:
    d = create(sim_ids, "SIM-RETRY-15").json()["data"]
    msgs = read_sse(d["events_stream_url"], d["events_token"], last_event_id="2")
    assert statuses(msgs) == ["initialized", "completed"]
    assert [m["id"] for m in msgs if m.get("event")] == ["3", "4"]
    # after the end, a resume still gets what came after its id, then the stream closes
    msgs = read_sse(d["events_stream_url"], d["events_token"], last_event_id="3")
    assert statuses(msgs) == ["completed"]
    assert statuses(read_sse(d["events_stream_url"], d["events_token"])) == []


def cancel_after_pings(sim: SimulatorServer, order_id: str, pings: int) -> Any:
    """An ``on_message`` for read_sse: cancels the order once ``pings`` keep-alives came."""
    seen: list[dict[str, Any]] = []

    def on_message(message: dict[str, Any]) -> None:
        if message.get("comment") == ": ping" or message.get("data") == "ping":
            seen.append(message)
            if len(seen) == pings:
                cancel = f"{sim.base_url}orders/{order_id}/cancel"
                assert httpx.post(cancel, headers={"api_key": KEY}).status_code == 200

    return on_message


def test_keepalives(stepped: Stepped) -> None:
    sim, clock = stepped  # the payment waits (keep-alives every 15 s / 100) until cancelled
    # The defaults: `data: ping` messages and no `id:` lines, so Last-Event-ID is not honoured.
    d = create(sim, "SIM-TIMEOUT-16").json()["data"]
    clock.step()  # initialized, before the stream opens
    wait_admin(sim, d["order_id"], lambda o: o["events"] == ["initialized"])
    on_message = cancel_after_pings(sim, d["order_id"], 2)
    msgs = read_sse(d["events_stream_url"], d["events_token"], "0", on_message=on_message)
    assert sum(1 for m in msgs if m.get("data") == "ping") >= 2  # another may come meanwhile
    assert not any("comment" in m for m in msgs)
    assert all("id" not in m for m in msgs)
    assert statuses(msgs) == ["cancelled"]  # no replay of initialized
    # The other readings: `: ping` comments, and `id:` lines.
    httpx.put(sim.url + "_sim/variants", json={"keepalive": "comment", "sse_ids": "on"})
    d = create(sim, "SIM-TIMEOUT-16").json()["data"]
    on_message = cancel_after_pings(sim, d["order_id"], 2)
    msgs = read_sse(d["events_stream_url"], d["events_token"], "0", on_message=on_message)
    assert sum(1 for m in msgs if m.get("comment") == ": ping") >= 2
    assert not any(m.get("data") == "ping" for m in msgs)
    assert [m["id"] for m in msgs if m.get("event")] == ["1"]
    assert statuses(msgs) == ["cancelled"]


def test_variants_spelling_and_number(reset_variants: None, sim: SimulatorServer) -> None:
    httpx.put(
        sim.url + "_sim/variants", json={"field_spelling": "event", "transaction_id": "number"}
    )
    d = create(sim, "SIM-APPROVE-17").json()["data"]
    assert "event_token" in d and "event_url" in d and "events_token" not in d
    msgs = read_sse(d["event_stream_url"], d["event_token"], "0")
    assert all(isinstance(m["data"]["transaction_id"], int) for m in msgs if m.get("event"))


def test_drop_cuts_streams_mid_message(stepped: Stepped) -> None:
    sim, clock = stepped
    d = create(sim, "SIM-DROP-18").json()["data"]
    headers = {"Authorization": d["events_token"], "Last-Event-ID": "0"}

    def then_drop() -> None:  # the stream is surely open when the drop comes
        streaming(sim, d["order_id"])
        clock.step(2)  # initialized, then the drop

    dropping = in_background(then_drop)
    raw = b""
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("GET", d["events_stream_url"], headers=headers, timeout=5) as resp:
            for chunk in resp.iter_raw():
                raw += chunk
    assert b'"status":"initialized"' in raw
    tail = raw.rsplit(b"\n\n", 1)[1]
    assert tail.startswith(b"event: session.order") and not tail.endswith(b"\n")  # cut mid-line
    dropping()
    # a reconnecting client carries on to the end (the stream has no ids by default, so nothing
    # is replayed: it is open again before the payment moves on)
    wait_admin(sim, d["order_id"], lambda o: o["open_streams"] == 0)
    reading = in_background(lambda: read_sse(d["events_stream_url"], d["events_token"]))
    streaming(sim, d["order_id"])
    clock.step()  # completed
    assert statuses(reading()) == ["completed"]


def test_admin_drop(stepped: Stepped) -> None:
    sim, _ = stepped  # the payment does not move: only the drop ends the stream

    def read_until_dropped() -> bool:
        with pytest.raises(httpx.RemoteProtocolError):
            read_sse(d["events_stream_url"], d["events_token"])
        return True

    d = create(sim, "SIM-TIMEOUT-19").json()["data"]
    reading = in_background(read_until_dropped)
    streaming(sim, d["order_id"])
    r = httpx.post(f"{sim.url}_sim/orders/{d['order_id']}/drop").json()["data"]
    assert r["dropped"] == 1
    assert reading() is True


def test_cancel_reaches_the_stream(stepped: Stepped) -> None:
    sim, clock = stepped
    d = create(sim, "SIM-TIMEOUT-20").json()["data"]
    clock.step()  # initialized
    wait_admin(sim, d["order_id"], lambda o: o["events"] == ["initialized"])
    reading = in_background(lambda: read_sse(d["events_stream_url"], d["events_token"], "0"))
    streaming(sim, d["order_id"])
    cancel = f"{sim.base_url}orders/{d['order_id']}/cancel"
    assert httpx.post(cancel, headers={"api_key": KEY}).status_code == 200
    # `initialized` came before the stream opened: with no ids (the default) it is not replayed
    assert statuses(reading()) == ["cancelled"]


async def _ws_flow(sim: SimulatorServer, clock: SteppedClock, terminal: str) -> tuple[list, list]:
    async with httpx.AsyncClient() as client:
        d = await create_async(client, sim, terminal)
    replies, events = [], []
    async with websockets.connect(d["events_url"] + "?token=" + d["events_token"]) as ws:
        await ws.send(
            json.dumps(
                {
                    "id": "0123456789abcdef",
                    "type": "subscribe",
                    "channel": "session.order",
                    "filter": {},
                }
            )
        )
        await ws.send(
            json.dumps({"id": "0123456789abcde0", "type": "subscribe", "channel": "bogus"})
        )
        await ws.send(json.dumps({"id": "0123456789abcde1", "type": "heartbeat"}))
        with anyio.fail_after(10):
            try:
                async for frame in ws:
                    msg = json.loads(frame)
                    (events if msg["type"] == "event" else replies).append(msg)
                    if msg["type"] != "event" and len(replies) == 3:
                        clock.step(4)  # subscribed: now the payment may move
            except websockets.ConnectionClosed:
                pass
    return replies, events


def test_websocket_bus(stepped: Stepped) -> None:
    # The bus replays nothing: the payment moves only once the subscription is acknowledged.
    replies, events = anyio.run(_ws_flow, *stepped, "SIM-SOFTDECLINE-APPROVE-21")
    assert replies[0] == {"type": "ack", "replyId": "0123456789abcdef"}
    assert replies[1]["type"] == "error" and replies[1]["replyId"] == "0123456789abcde0"
    assert replies[1]["payload"]["message"]
    assert replies[2] == {"type": "ack", "replyId": "0123456789abcde1"}
    got = [e["payload"]["status"] for e in events]
    assert got == ["initialized", "declined", "initialized", "completed"]
    assert all(e["channel"] == "session.order" for e in events)
    assert list(events[-1]["payload"]) == [
        "financial_status",
        "order_id",
        "session_id",
        "status",
        "transaction_id",
    ]


def test_websocket_bad_token_closes_1008(sim: SimulatorServer) -> None:
    async def go() -> int:
        async with websockets.connect(f"ws://127.0.0.1:{sim.port}/events/?token=bad") as ws:
            try:
                await ws.recv()
            except websockets.ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else -1
        return -2

    assert anyio.run(go) == 1008


def test_websocket_drop_is_unclean(stepped: Stepped) -> None:
    """A drop ends the bus connection with no closing handshake (no close frame either way):
    the official client reconnects only then (MultiSafepay/message-bus: src/index.ts,
    ``!event.wasClean``)."""
    sim, _ = stepped  # the payment does not move: only the drop ends the connection

    async def go() -> tuple[object, object]:
        async with httpx.AsyncClient() as client:
            d = await create_async(client, sim, "SIM-TIMEOUT-22")
            async with websockets.connect(d["events_url"] + "?token=" + d["events_token"]) as ws:
                # accepted is not yet following: wait until the simulator counts the stream
                await anyio.to_thread.run_sync(streaming, sim, d["order_id"])
                await client.post(f"{sim.url}_sim/orders/{d['order_id']}/drop")
                try:
                    with anyio.fail_after(5):
                        while True:
                            await ws.recv()
                except websockets.ConnectionClosed as exc:
                    frames = (exc.rcvd, exc.sent)
            await client.post(
                f"{sim.base_url}orders/{d['order_id']}/cancel", headers={"api_key": KEY}
            )
            return frames

    assert anyio.run(go) == (None, None)
