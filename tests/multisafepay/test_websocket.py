"""The message-bus transport over real sockets: the simulator, and small local servers that
misbehave on purpose."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from bridge.core.events import Source
from bridge.core.normalize import from_stream_message
from bridge.multisafepay.bus import BusProtocol
from bridge.multisafepay.sse import StreamError, StreamMessage, StreamRejected
from bridge.multisafepay.websocket import bus_messages, bus_url
from bridge.simulator import SimulatorServer

pytestmark = pytest.mark.anyio

HEX16 = re.compile(r"^[0-9a-f]{16}$")
TOKEN = "secret.events.token"
PAYLOAD = {
    "financial_status": "initialized",
    "order_id": "o-1",
    "session_id": "s-1",
    "status": "initialized",
    "transaction_id": "890001",
}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    # Speed 10: the first event comes 150 ms after the order, time enough to subscribe (the bus,
    # like MultiSafepay's, replays nothing sent before the subscription).
    with SimulatorServer(speed=10) as server:
        yield server


async def create_order(sim: SimulatorServer, terminal: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        r = await client.post(
            sim.base_url + "orders",
            headers={"api_key": "anything"},
            json={
                "type": "redirect",
                "order_id": f"o-{time.monotonic_ns()}",
                "gateway": "",
                "currency": "EUR",
                "amount": 1250,
                "description": "x",
                "gateway_info": {"terminal_id": terminal},
            },
        )
        r.raise_for_status()
        return r.json()["data"]


async def collect(
    stream: AsyncIterator[StreamMessage], into: list[StreamMessage], limit: float = 10.0
) -> None:
    with anyio.fail_after(limit):
        async with aclosing(stream) as messages:  # type: ignore[type-var]
            async for message in messages:
                into.append(message)


def statuses(messages: list[StreamMessage]) -> list[str]:
    return [json.loads(m.data)["status"] for m in messages]


# -- against the simulator -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "terminal,expected",
    [
        ("SIM-APPROVE-01", ["initialized", "completed"]),
        ("SIM-RETRY-01", ["initialized", "declined", "initialized", "completed"]),
    ],
)
async def test_simulator_flow_until_final(
    sim: SimulatorServer, terminal: str, expected: list[str]
) -> None:
    d = await create_order(sim, terminal)
    got: list[StreamMessage] = []
    await collect(
        bus_messages(d["events_url"], d["events_token"], connect_timeout=5, idle_timeout=5), got
    )
    assert statuses(got) == expected  # and the generator ended: the bus closed normally
    for m in got:
        assert m.event == "session.order" and m.id is None
        obs = from_stream_message(m.data, Source.WEBSOCKET)  # what the session will do with it
        assert obs.order_id == d["order_id"] and obs.session_id == d["session_id"]


async def test_simulator_invalid_token_is_rejected(sim: SimulatorServer) -> None:
    d = await create_order(sim, "SIM-APPROVE-02")
    for token in ("bad", d["events_token"][:-3] + "xyz"):
        with pytest.raises(StreamRejected) as info:
            await collect(
                bus_messages(d["events_url"], token, connect_timeout=5, idle_timeout=5), []
            )
        assert "1008" in str(info.value)
        assert token not in str(info.value)


async def test_simulator_drop_is_a_stream_error(sim: SimulatorServer) -> None:
    d = await create_order(sim, "SIM-DROP-01")  # initialized, then the streams drop
    got: list[StreamMessage] = []
    with pytest.raises(StreamError) as info:
        await collect(
            bus_messages(d["events_url"], d["events_token"], connect_timeout=5, idle_timeout=5), got
        )
    assert not isinstance(info.value, StreamRejected)
    # an unclean close, as MultiSafepay's connection breaking: no close frame at all
    assert "no close frame" in str(info.value)
    assert statuses(got) == ["initialized"]


async def test_simulator_admin_drop(sim: SimulatorServer) -> None:
    d = await create_order(sim, "SIM-TIMEOUT-01")
    got: list[StreamMessage] = []

    async def drop_after_first() -> None:
        with anyio.fail_after(5):
            while not got:  # noqa: ASYNC110 - polls what another task records
                await anyio.sleep(0.01)
        async with httpx.AsyncClient() as client:
            await client.post(f"{sim.url}_sim/orders/{d['order_id']}/drop")

    async with anyio.create_task_group() as tg:
        tg.start_soon(drop_after_first)
        with pytest.raises(StreamError, match="no close frame"):
            await collect(
                bus_messages(d["events_url"], d["events_token"], connect_timeout=5, idle_timeout=5),
                got,
            )
    assert statuses(got) == ["initialized"]
    async with httpx.AsyncClient() as client:
        await client.post(
            f"{sim.base_url}orders/{d['order_id']}/cancel", headers={"api_key": "anything"}
        )


async def test_simulator_refuses_unknown_channel(sim: SimulatorServer) -> None:
    d = await create_order(sim, "SIM-TIMEOUT-02")
    with pytest.raises(StreamRejected, match="unknown channel"):
        await collect(
            bus_messages(
                d["events_url"],
                d["events_token"],
                channel="bogus",
                connect_timeout=5,
                idle_timeout=5,
            ),
            [],
        )
    async with httpx.AsyncClient() as client:
        await client.post(
            f"{sim.base_url}orders/{d['order_id']}/cancel", headers={"api_key": "anything"}
        )


async def test_simulator_answers_pings_and_heartbeats(sim: SimulatorServer) -> None:
    # The bridge's liveness check is the bus heartbeat, acked like any request (it sends no
    # WebSocket pings of its own); the simulator (uvicorn) answers both.
    d = await create_order(sim, "SIM-TIMEOUT-03")
    async with websockets.connect(bus_url(d["events_url"], d["events_token"])) as ws:
        with anyio.fail_after(2):
            await (await ws.ping())
            await ws.send(json.dumps({"id": "0123456789abcdef", "type": "heartbeat"}))
            assert json.loads(await ws.recv()) == {"type": "ack", "replyId": "0123456789abcdef"}
    async with httpx.AsyncClient() as client:
        await client.post(
            f"{sim.base_url}orders/{d['order_id']}/cancel", headers={"api_key": "anything"}
        )


# -- local servers -------------------------------------------------------------------------------

Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def local_bus(handler: Handler, **options: Any) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, compression=None, **options) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/events/"


class Recorder:
    """A bus that records the client's frames and acks subscriptions (and heartbeats if told)."""

    def __init__(
        self,
        *,
        ack_heartbeats: bool = True,
        ack_subscribe: bool = True,
        after_ack: list[Any] | None = None,
        then: Callable[..., Awaitable[None]] | None = None,
    ) -> None:
        self.frames: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.connections = 0
        self.close_codes: list[int | None] = []
        self.ack_heartbeats = ack_heartbeats
        self.ack_subscribe = ack_subscribe
        self.after_ack = after_ack or []
        self.then = then

    async def __call__(self, ws: ServerConnection) -> None:
        self.connections += 1
        assert ws.request is not None
        self.paths.append(ws.request.path)
        try:
            async for text in ws:
                msg = json.loads(text)
                self.frames.append(msg)
                if msg["type"] == "subscribe" and self.ack_subscribe:
                    await ws.send(json.dumps({"type": "ack", "replyId": msg["id"]}))
                    for item in self.after_ack:
                        await ws.send(item if isinstance(item, (str, bytes)) else json.dumps(item))
                    if self.then is not None:
                        await self.then(ws)
                elif msg["type"] == "heartbeat" and self.ack_heartbeats:
                    await ws.send(json.dumps({"type": "ack", "replyId": msg["id"]}))
        except websockets.ConnectionClosed:
            pass
        self.close_codes.append(ws.close_code)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind]


def ev(payload: dict[str, Any] = PAYLOAD, channel: str = "session.order") -> dict[str, Any]:
    return {"type": "event", "channel": channel, "payload": payload}


def close_with(code: int, reason: str = "") -> Callable[[ServerConnection], Awaitable[None]]:
    async def then(ws: ServerConnection) -> None:
        await ws.close(code, reason)

    return then


async def test_token_in_query_and_subscribe_frame() -> None:
    rec = Recorder(after_ack=[ev()], then=close_with(1000))
    async with local_bus(rec) as url:
        got: list[StreamMessage] = []
        await collect(bus_messages(url + "?x=1", "a b/c", connect_timeout=2, idle_timeout=2), got)
    assert rec.paths == ["/events/?x=1&token=a%20b%2Fc"]
    sub = rec.frames[0]
    assert sub == {"id": sub["id"], "type": "subscribe", "channel": "session.order", "filter": {}}
    assert HEX16.match(sub["id"])
    assert got == [StreamMessage(event="session.order", data=json.dumps(PAYLOAD), id=None)]


def test_bus_url() -> None:
    assert bus_url("wss://h/events/", "T") == "wss://h/events/?token=T"
    assert bus_url("wss://h/events/?a=b", "T") == "wss://h/events/?a=b&token=T"
    assert bus_url("wss://h/events/?", "T") == "wss://h/events/?token=T"
    assert bus_url("wss://h/events/", "a+b=") == "wss://h/events/?token=a%2Bb%3D"


async def test_idle_connection_is_a_stream_error() -> None:
    rec = Recorder(ack_heartbeats=False)  # acks the subscription, then says nothing at all
    async with local_bus(rec) as url:
        with pytest.raises(StreamError, match="silent for 0.3 s") as info:
            await collect(
                bus_messages(
                    url, TOKEN, connect_timeout=2, idle_timeout=0.3, heartbeat_interval=0.2
                ),
                [],
                limit=5,
            )
    assert not isinstance(info.value, StreamRejected)
    # When exactly it beats and gives up is the protocol's (tests/multisafepay/test_bus.py, on
    # a fake clock); here, on a loaded machine, it may have woken after both were due.
    assert len(rec.of_type("heartbeat")) <= 1


async def test_heartbeat_sent_after_silence() -> None:
    async def then(ws: ServerConnection) -> None:
        # silent (but acking heartbeats) until the client beat three times, then one event and
        # a clean end: waits on what happens, not on the clock
        with anyio.fail_after(5):
            while len(rec.of_type("heartbeat")) < 3:  # noqa: ASYNC110 - polls what another task records
                await anyio.sleep(0.01)
        await ws.send(json.dumps(ev()))
        await ws.close()

    rec = Recorder()
    got: list[StreamMessage] = []

    async def handler(ws: ServerConnection) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(rec, ws)
            with anyio.fail_after(3):
                while not rec.of_type("subscribe"):  # noqa: ASYNC110 - polls what another task records
                    await anyio.sleep(0.01)
            await then(ws)

    async with local_bus(handler) as url:
        await collect(
            bus_messages(url, TOKEN, connect_timeout=2, idle_timeout=1, heartbeat_interval=0.1),
            got,
            limit=5,
        )
    beats = rec.of_type("heartbeat")
    assert len(beats) >= 3, beats
    assert all(set(b) == {"id", "type"} and HEX16.match(b["id"]) for b in beats)
    assert len({b["id"] for b in rec.frames}) == len(rec.frames)
    assert statuses(got) == ["initialized"]


async def test_no_heartbeat_while_traffic_flows() -> None:
    async def then(ws: ServerConnection) -> None:
        for _ in range(8):
            await ws.send(json.dumps(ev()))
            await anyio.sleep(0.05)
        await ws.close()

    rec = Recorder(then=then)
    async with local_bus(rec) as url:
        got: list[StreamMessage] = []
        await collect(
            # 50 ms between events, a heartbeat only after 2 s of quiet: only a stall of the
            # whole machine for 2 s could make one due (the exact rule: test_bus.py)
            bus_messages(url, TOKEN, connect_timeout=5, idle_timeout=5, heartbeat_interval=2),
            got,
            limit=10,
        )
    assert len(got) == 8 and rec.of_type("heartbeat") == []


async def test_slow_consumer_is_not_idle() -> None:
    async def then(ws: ServerConnection) -> None:
        await ws.send(json.dumps(ev()))
        await ws.send(json.dumps(ev(dict(PAYLOAD, status="completed"))))
        await anyio.sleep(0.1)
        await ws.close()

    got: list[StreamMessage] = []
    async with local_bus(Recorder(then=then)) as url:
        stream = bus_messages(url, TOKEN, connect_timeout=2, idle_timeout=0.3)
        async for message in stream:
            got.append(message)
            await anyio.sleep(0.5)  # e.g. Redis is slow: the bus is not silent meanwhile
    assert statuses(got) == ["initialized", "completed"]


async def test_error_reply_to_subscribe_is_rejected() -> None:
    async def handler(ws: ServerConnection) -> None:
        msg = json.loads(await ws.recv())
        await ws.send(
            json.dumps(
                {
                    "type": "error",
                    "replyId": msg["id"],
                    "payload": {"message": "grant mbus:session.order missing"},
                }
            )
        )
        await ws.wait_closed()

    async with local_bus(handler) as url:
        with pytest.raises(StreamRejected, match="grant mbus:session.order missing"):
            await collect(bus_messages(url, TOKEN, connect_timeout=2, idle_timeout=2), [])


async def test_subscribe_never_acknowledged() -> None:
    rec = Recorder(ack_subscribe=False)
    async with local_bus(rec) as url:
        with pytest.raises(StreamError, match="did not acknowledge") as info:
            await collect(
                bus_messages(url, TOKEN, connect_timeout=0.3, idle_timeout=5), [], limit=3
            )
    assert not isinstance(info.value, StreamRejected)


async def test_events_before_the_ack_are_kept() -> None:
    async def handler(ws: ServerConnection) -> None:
        msg = json.loads(await ws.recv())
        await ws.send(json.dumps(ev()))
        await ws.send(json.dumps({"type": "ack", "replyId": msg["id"]}))
        await ws.send(json.dumps(ev(dict(PAYLOAD, status="completed"))))
        await ws.close()

    async with local_bus(handler) as url:
        got: list[StreamMessage] = []
        await collect(bus_messages(url, TOKEN, connect_timeout=2, idle_timeout=2), got)
    assert statuses(got) == ["initialized", "completed"]


async def test_garbage_and_other_channels_are_skipped() -> None:
    rec = Recorder(
        after_ack=[
            "not json",
            "[]",
            {"type": "party"},
            {"type": "ack", "replyId": "ffffffffffffffff"},
            {"type": "error", "replyId": None, "payload": {"message": "huh"}},
            ev({"qr": "x"}, channel="session.qr"),
            {"type": "event", "channel": "session.order"},
            b"\xff\xfe",
            json.dumps(ev(dict(PAYLOAD, transaction_id=890001))).encode(),
            ev(dict(PAYLOAD, status="completed")),
        ],
        then=close_with(1000),
    )
    async with local_bus(rec) as url:
        got: list[StreamMessage] = []
        await collect(bus_messages(url, TOKEN, connect_timeout=2, idle_timeout=2), got)
    assert statuses(got) == ["initialized", "completed"]
    assert json.loads(got[0].data)["transaction_id"] == 890001


@pytest.mark.parametrize(
    "code,rejected", [(1008, True), (4403, True), (1011, False), (1001, False), (4000, False)]
)
async def test_close_codes(code: int, rejected: bool) -> None:
    rec = Recorder(after_ack=[ev()], then=close_with(code, "bye"))
    async with local_bus(rec) as url:
        got: list[StreamMessage] = []
        with pytest.raises(StreamError, match=f"code {code}") as info:
            await collect(bus_messages(url, TOKEN, connect_timeout=2, idle_timeout=2), got)
    assert isinstance(info.value, StreamRejected) is rejected
    assert len(got) == 1


async def test_normal_close_before_the_ack_is_an_error() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.close(1000)

    async with local_bus(handler) as url:
        with pytest.raises(StreamError, match="while subscribing: code 1000") as info:
            await collect(bus_messages(url, TOKEN, connect_timeout=2, idle_timeout=2), [])
    assert not isinstance(info.value, StreamRejected)


async def test_abrupt_disconnect_is_a_stream_error() -> None:
    async def then(ws: ServerConnection) -> None:
        ws.transport.abort()

    rec = Recorder(after_ack=[ev()], then=then)
    async with local_bus(rec) as url:
        with pytest.raises(StreamError, match="no close frame") as info:
            await collect(bus_messages(url, TOKEN, connect_timeout=2, idle_timeout=2), [])
    assert not isinstance(info.value, StreamRejected)


@pytest.mark.parametrize("status,rejected", [(401, True), (403, True), (404, False), (500, False)])
async def test_refused_handshake(status: int, rejected: bool) -> None:
    def refuse(conn: ServerConnection, request: Request) -> Response:
        return Response(status, "no", Headers([("Content-Length", "0")]), b"")

    async with local_bus(Recorder(), process_request=refuse) as url:
        with pytest.raises(StreamError, match=f"HTTP {status}") as info:
            await collect(bus_messages(url, TOKEN, connect_timeout=2, idle_timeout=2), [])
    assert isinstance(info.value, StreamRejected) is rejected
    assert TOKEN not in str(info.value)


async def test_oversized_message_is_a_stream_error() -> None:
    rec = Recorder(after_ack=[ev({**PAYLOAD, "junk": "x" * 70_000})])
    async with local_bus(rec) as url:
        with pytest.raises(StreamError, match="over 65536 bytes"):
            await collect(bus_messages(url, TOKEN, connect_timeout=2, idle_timeout=2), [])


async def test_unreachable_and_not_answering() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StreamError, match="unreachable") as info:
        await collect(
            bus_messages(
                f"ws://127.0.0.1:{port}/events/", TOKEN, connect_timeout=2, idle_timeout=2
            ),
            [],
        )
    assert not isinstance(info.value, StreamRejected)

    with socket.socket() as listener:  # accepts TCP, never answers the handshake
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        start = anyio.current_time()
        with pytest.raises(StreamError, match="did not open within 0.3 s"):
            await collect(
                bus_messages(
                    f"ws://127.0.0.1:{port}/events/", TOKEN, connect_timeout=0.3, idle_timeout=2
                ),
                [],
            )
        assert anyio.current_time() - start < 2


@pytest.mark.parametrize("url", ["http://h/events/", "ftp://h/", "not a url", "ws://[::1/x"])
async def test_unusable_url_is_rejected(url: str) -> None:
    with pytest.raises(StreamRejected) as info:
        await collect(bus_messages(url, TOKEN, connect_timeout=1, idle_timeout=1), [])
    assert TOKEN not in str(info.value)


async def test_reconnect_resubscribes_with_a_shared_protocol() -> None:
    rec = Recorder(after_ack=[ev()], then=close_with(1011))
    proto = BusProtocol()
    async with local_bus(rec) as url:
        for _ in range(2):
            with pytest.raises(StreamError):
                await collect(
                    bus_messages(url, TOKEN, connect_timeout=2, idle_timeout=2, protocol=proto), []
                )
    subs = rec.of_type("subscribe")
    assert rec.connections == 2 and len(subs) == 2
    assert [s["channel"] for s in subs] == ["session.order", "session.order"]
    assert subs[0]["id"] != subs[1]["id"]
    assert list(proto.subscriptions) == ["session.order"] and proto.pending == {}


async def test_leaving_early_closes_the_connection() -> None:
    rec = Recorder(after_ack=[ev(), ev(), ev()])
    async with local_bus(rec) as url:
        async with aclosing(bus_messages(url, TOKEN, connect_timeout=2, idle_timeout=5)) as s:
            async for _ in s:
                break
        with anyio.fail_after(3):
            while not rec.close_codes:  # noqa: ASYNC110 - polls what another task records
                await anyio.sleep(0.01)
    assert rec.close_codes == [1000]


async def test_cancelled_reader_closes_the_connection() -> None:
    rec = Recorder()
    async with local_bus(rec) as url:
        with anyio.move_on_after(0.3):
            await collect(bus_messages(url, TOKEN, connect_timeout=2, idle_timeout=5), [])
        with anyio.fail_after(3):
            while not rec.close_codes:  # noqa: ASYNC110 - polls what another task records
                await anyio.sleep(0.01)
    assert rec.close_codes == [1000]


async def test_bad_timeouts() -> None:
    with pytest.raises(ValueError):
        await collect(bus_messages("ws://h/", TOKEN, connect_timeout=1, idle_timeout=0), [])
