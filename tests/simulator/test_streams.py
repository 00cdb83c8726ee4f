"""The order event streams: SSE and the WebSocket bus, over real sockets."""

from __future__ import annotations

import json
import time

import anyio
import httpx
import pytest
import websockets

from bridge.simulator import SimulatorServer
from tests.simulator.conftest import KEY, create, read_sse, statuses

FLOWS = [
    ("SIM-APPROVE-11", 1250, ["initialized", "completed"]),
    ("SIM-DECLINE-11", 1250, ["initialized", "declined", "cancelled"]),
    ("SIM-SOFTDECLINE-APPROVE-11", 1250, ["initialized", "declined", "completed"]),
    ("SIM-SOFTDECLINE-CANCEL-11", 1250, ["initialized", "declined", "cancelled"]),
    ("SIM-CUSTOMER-CANCEL-11", 1250, ["initialized", "cancelled"]),
    ("SIM-TIMEOUT-11", 1250, ["initialized", "cancelled"]),
    ("SIM-RETRY-11", 1250, ["initialized", "declined", "initialized", "completed"]),
    ("SIM-SLOW-11", 1250, ["initialized", "completed"]),
    ("0000AB01", 1201, ["initialized", "declined", "cancelled"]),
    ("0000AB02", 1202, ["initialized", "declined", "completed"]),
    ("0000AB03", 1203, ["initialized", "declined", "cancelled"]),
    ("0000AB04", 1204, ["initialized", "cancelled"]),
    ("0000AB05", 1205, ["initialized", "cancelled"]),
    ("0000AB07", 1207, ["initialized", "declined", "initialized", "completed"]),
    ("0000AB08", 1208, ["initialized", "completed"]),
    ("0000AB11", 1211, ["initialized", "completed"]),
]


@pytest.mark.parametrize("terminal,amount,expected", FLOWS)
def test_scenario_stream(sim: SimulatorServer, terminal: str, amount: int, expected: list) -> None:
    d = create(sim, terminal, amount).json()["data"]
    # Last-Event-ID 0 replays from the start, so a fast speed cannot make us miss the first event.
    msgs = read_sse(d["events_stream_url"], d["events_token"], last_event_id="0")
    assert statuses(msgs) == expected
    events = [m for m in msgs if m.get("event")]
    assert [int(m["id"]) for m in events] == list(range(1, len(expected) + 1))
    first = events[0]["data"]
    assert list(first) == ["financial_status", "order_id", "session_id", "status", "transaction_id"]
    assert first["order_id"] == d["order_id"] and first["session_id"] == d["session_id"]
    assert isinstance(first["transaction_id"], str)


def test_token_bare_and_bearer_and_bad(sim: SimulatorServer) -> None:
    d = create(sim, "SIM-APPROVE-12").json()["data"]
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


def test_no_replay_without_last_event_id(sim: SimulatorServer) -> None:
    d = create(sim, "SIM-DECLINE-14").json()["data"]
    time.sleep(0.1)  # initialized (15 ms) and declined (30 ms) are past; cancelled at 0.6 s
    msgs = read_sse(d["events_stream_url"], d["events_token"])
    assert statuses(msgs) == ["cancelled"]


def test_resume_with_last_event_id(sim: SimulatorServer) -> None:
    d = create(sim, "SIM-RETRY-15").json()["data"]
    msgs = read_sse(d["events_stream_url"], d["events_token"], last_event_id="2")
    assert statuses(msgs) == ["initialized", "completed"]
    assert [m["id"] for m in msgs if m.get("event")] == ["3", "4"]
    # after the end, a resume still gets what came after its id, then the stream closes
    msgs = read_sse(d["events_stream_url"], d["events_token"], last_event_id="3")
    assert statuses(msgs) == ["completed"]
    assert statuses(read_sse(d["events_stream_url"], d["events_token"])) == []


def test_keepalives(reset_variants: None, sim: SimulatorServer) -> None:
    d = create(sim, "SIM-TIMEOUT-16").json()["data"]
    msgs = read_sse(d["events_stream_url"], d["events_token"], "0")
    assert sum(1 for m in msgs if m.get("comment") == ": ping") >= 2  # 15 s / 100 during 0.6 s
    httpx.put(sim.url + "_sim/variants", json={"keepalive": "data", "sse_ids": "off"})
    d = create(sim, "SIM-TIMEOUT-16").json()["data"]
    msgs = read_sse(d["events_stream_url"], d["events_token"], "0")
    assert any(m.get("data") == "ping" for m in msgs)
    assert not any("comment" in m for m in msgs)
    # ids off: no `id:` lines and Last-Event-ID is not honoured (no replay)
    assert all("id" not in m for m in msgs)
    assert statuses(msgs) == ["cancelled"]


def test_variants_spelling_and_number(reset_variants: None, sim: SimulatorServer) -> None:
    httpx.put(
        sim.url + "_sim/variants", json={"field_spelling": "event", "transaction_id": "number"}
    )
    d = create(sim, "SIM-APPROVE-17").json()["data"]
    assert "event_token" in d and "event_url" in d and "events_token" not in d
    msgs = read_sse(d["event_stream_url"], d["event_token"], "0")
    assert all(isinstance(m["data"]["transaction_id"], int) for m in msgs if m.get("event"))


def test_drop_cuts_streams_mid_message() -> None:
    # Slower than the shared simulator, so the stream is surely open when the drop comes.
    with SimulatorServer(speed=10) as sim:
        _drop_flow(sim)


def _drop_flow(sim: SimulatorServer) -> None:
    d = create(sim, "SIM-DROP-18").json()["data"]
    headers = {"Authorization": d["events_token"], "Last-Event-ID": "0"}
    raw = b""
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("GET", d["events_stream_url"], headers=headers, timeout=5) as resp:
            for chunk in resp.iter_raw():
                raw += chunk
    assert b'"status":"initialized"' in raw
    tail = raw.rsplit(b"\n\n", 1)[1]
    assert tail.startswith(b"event: session.order") and not tail.endswith(b"\n")  # cut mid-line
    # a reconnecting client carries on to the end
    msgs = read_sse(d["events_stream_url"], d["events_token"], last_event_id="1")
    assert statuses(msgs) == ["completed"]


def test_admin_drop(sim: SimulatorServer) -> None:
    d = create(sim, "SIM-TIMEOUT-19").json()["data"]
    result: dict = {}

    def reader() -> None:
        try:
            read_sse(d["events_stream_url"], d["events_token"])
        except httpx.RemoteProtocolError:
            result["dropped"] = True

    import threading

    t = threading.Thread(target=reader)
    t.start()
    for _ in range(100):
        orders = httpx.get(sim.url + "_sim/orders").json()["data"]
        if any(o["order_id"] == d["order_id"] and o["open_streams"] for o in orders):
            break
        time.sleep(0.01)
    r = httpx.post(f"{sim.url}_sim/orders/{d['order_id']}/drop").json()["data"]
    assert r["dropped"] == 1
    t.join(5)
    assert result.get("dropped")
    httpx.post(f"{sim.base_url}orders/{d['order_id']}/cancel", headers={"api_key": KEY})


def test_cancel_reaches_the_stream(sim: SimulatorServer) -> None:
    d = create(sim, "SIM-TIMEOUT-20").json()["data"]

    def cancel_soon() -> None:
        time.sleep(0.1)
        httpx.post(f"{sim.base_url}orders/{d['order_id']}/cancel", headers={"api_key": KEY})

    import threading

    threading.Thread(target=cancel_soon).start()
    msgs = read_sse(d["events_stream_url"], d["events_token"], "0")
    assert statuses(msgs) == ["initialized", "cancelled"]


async def _ws_flow(sim: SimulatorServer, terminal: str) -> tuple[list, list]:
    async with httpx.AsyncClient() as client:
        d = (
            await client.post(
                sim.base_url + "orders",
                headers={"api_key": KEY},
                json={
                    "type": "redirect",
                    "order_id": f"ws-{terminal}-{time.monotonic_ns()}",
                    "currency": "EUR",
                    "amount": 1250,
                    "description": "ws",
                    "gateway_info": {"terminal_id": terminal},
                },
            )
        ).json()["data"]
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
            except websockets.ConnectionClosed:
                pass
    return replies, events


def test_websocket_bus(sim: SimulatorServer) -> None:
    # SIM-SLOW: initialized comes 1.5 s/100 after the (held) create answer... use TIMEOUT-like
    # spacing instead: the soft-decline flow leaves time to subscribe before `declined`.
    replies, events = anyio.run(_ws_flow, sim, "SIM-SOFTDECLINE-APPROVE-21")
    assert replies[0] == {"type": "ack", "replyId": "0123456789abcdef"}
    assert replies[1]["type"] == "error" and replies[1]["replyId"] == "0123456789abcde0"
    assert replies[1]["payload"]["message"]
    assert replies[2] == {"type": "ack", "replyId": "0123456789abcde1"}
    got = [e["payload"]["status"] for e in events]
    assert got[-2:] == ["declined", "completed"]
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


def test_websocket_drop_is_unclean(sim: SimulatorServer) -> None:
    async def go() -> int:
        async with httpx.AsyncClient() as client:
            d = (
                await client.post(
                    sim.base_url + "orders",
                    headers={"api_key": KEY},
                    json={
                        "type": "redirect",
                        "order_id": f"wsd-{time.monotonic_ns()}",
                        "currency": "EUR",
                        "amount": 1250,
                        "description": "ws",
                        "gateway_info": {"terminal_id": "SIM-TIMEOUT-22"},
                    },
                )
            ).json()["data"]
            async with websockets.connect(d["events_url"] + "?token=" + d["events_token"]) as ws:
                await client.post(f"{sim.url}_sim/orders/{d['order_id']}/drop")
                try:
                    with anyio.fail_after(5):
                        while True:
                            await ws.recv()
                except websockets.ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd else -1
            await client.post(
                f"{sim.base_url}orders/{d['order_id']}/cancel", headers={"api_key": KEY}
            )
            return code

    assert anyio.run(go) == 1011
