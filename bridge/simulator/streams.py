"""The simulator's two event transports for one order: the SSE stream and the WebSocket bus.

SSE (MultiSafepay/docs: content/point-of-sale/event-notifications.md): ``GET
{events_stream_url}`` with the events token in ``Authorization``; ``event: session.order`` /
``data: {...}`` messages. The documented example has no ``id:`` lines and shows no keep-alive,
so the defaults are the readings least kind to a client: no ``id:`` (variant ``sse_ids``) and
keep-alives as ``data: ping`` messages a client must skip (variant ``keepalive``; the official
Python SDK's own stream test feeds ``data: ping``: MultiSafepay/python-sdk:
tests/multisafepay/unit/api/path/events/stream/test_unit_event_stream.py).

The bus (MultiSafepay/message-bus: src/index.ts): subscribe/ack/event frames; a dropped bus
connection is an *unclean* close (no closing handshake), the only kind after which the official
client reconnects (``if (event && !event.wasClean ...)``).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from contextlib import AbstractContextManager
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup
from starlette.requests import Request
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from bridge.simulator import bus, sse, tokens
from bridge.simulator.clock import Clock
from bridge.simulator.errors import MspError
from bridge.simulator.orders import Order, OrderEvent
from bridge.simulator.responses import fail
from bridge.simulator.routing import TRANSPORT_KEY
from bridge.simulator.variants import Variants

log = logging.getLogger("bridge.simulator")

# Set while an SSE handler abandons its response on purpose (a simulated drop), so uvicorn's
# "returned without completing response" complaint about it is not logged as an error.
_dropping: contextvars.ContextVar[bool] = contextvars.ContextVar("sim_dropping", default=False)


class Simulator(Protocol):
    """What the streams use of the simulator (``app.Simulator``), so they need not import it."""

    variants: Variants
    clock: Clock
    keepalive_interval: float  # simulated seconds between keep-alives
    final_grace: float  # simulated seconds a stream stays open after the final status

    def order_for_token(self, token: str | None) -> Order: ...

    def subscribe(self, order: Order, transport: str = "sse") -> AbstractContextManager[Any]: ...

    def record_sending(self, order: Order, ev: OrderEvent) -> None: ...

    async def cancel_when_stopping(self, tg: TaskGroup) -> None: ...


class _DropLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_dropping.get() and "without completing response" in str(record.msg))


logging.getLogger("uvicorn.error").addFilter(_DropLogFilter())


async def sse_stream(sim: Simulator, scope: Scope, receive: Receive, send: Send) -> None:
    """One order's SSE stream, until its final status (plus a grace), a drop or a disconnect."""
    request = Request(scope, receive)
    try:
        order = sim.order_for_token(
            tokens.token_from_authorization(request.headers.get("authorization"))
        )
    except MspError as err:
        await fail(err)(scope, receive, send)
        return
    v = sim.variants
    ids = v.sse_ids == "on"
    backlog: list[OrderEvent] = []
    resume_after = 0  # events up to this id are not sent (the client has them)
    last = request.headers.get("last-event-id")
    if ids and last is not None:
        with contextlib.suppress(ValueError):
            resume_after = int(last)
            backlog = order.events_after(resume_after)
    tx_as = v.transaction_id
    ended = order.final  # decided together with the backlog, before any await

    def message(ev: OrderEvent) -> bytes:
        return sse.format_event(order.event_payload(ev, tx_as), ev.id if ids else None)

    with sim.subscribe(order) as feed:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )

        async def body(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        async def watch_disconnect(tg: TaskGroup) -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        dropped = False

        async def pump(tg: TaskGroup) -> None:
            nonlocal dropped
            await body(sse.format_keepalive(v.keepalive))  # opens the stream at once
            for ev in backlog:
                sim.record_sending(order, ev)
                await body(message(ev))
            if ended:
                await sim.clock.sleep(sim.final_grace)
                tg.cancel_scope.cancel()
                return
            while True:
                item: Any = None
                # Only the wait is timed: a ping is due when nothing came for a while.
                with anyio.move_on_after(sim.clock.scaled(sim.keepalive_interval)):
                    item = await feed.receive()
                if item is None:
                    await body(sse.format_keepalive(v.keepalive))
                    continue
                kind, ev = item
                if kind == "event" and ev.id <= resume_after:
                    continue
                if kind == "drop":
                    last_ev = order.events[-1] if order.events else None
                    if last_ev is not None:
                        await body(
                            sse.half_written(
                                order.event_payload(last_ev, tx_as), last_ev.id if ids else None
                            )
                        )
                    dropped = True
                    tg.cancel_scope.cancel()
                    return
                sim.record_sending(order, ev)
                await body(message(ev))
                if order.final and ev.id == order.events[-1].id:
                    # The final status is sent; the stream closes shortly after.
                    await sim.clock.sleep(sim.final_grace)
                    tg.cancel_scope.cancel()
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_disconnect, tg)
            tg.start_soon(sim.cancel_when_stopping, tg)
            tg.start_soon(pump, tg)
    if dropped:
        # Return without finishing the response: uvicorn closes the connection mid-body,
        # which is what a client sees when MultiSafepay's stream breaks.
        _dropping.set(True)
        return
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _abort(ws: WebSocket) -> bool:
    """Close the TCP connection under a WebSocket with no closing handshake; False if unable."""
    transport = ws.scope.get(TRANSPORT_KEY)
    if transport is None or not hasattr(transport, "abort"):
        return False
    transport.abort()
    return True


async def bus_session(sim: Simulator, ws: WebSocket) -> None:
    """One message bus connection: subscribe/unsubscribe/heartbeat, events, drops."""
    await ws.accept()
    try:
        order = sim.order_for_token(ws.query_params.get("token"))
    except MspError as err:
        await ws.close(code=1008, reason=err.info[:120])
        return
    session = bus.BusSession()
    tx_as = sim.variants.transaction_id
    close_code: int | None = 1000  # None: the peer is gone, or the connection was aborted
    with sim.subscribe(order, "websocket") as feed:

        async def reader(tg: TaskGroup) -> None:
            nonlocal close_code
            try:
                while True:
                    text = await ws.receive_text()
                    await ws.send_json(session.handle(text))
            except (WebSocketDisconnect, RuntimeError, KeyError):
                close_code = None
            tg.cancel_scope.cancel()

        async def writer(tg: TaskGroup) -> None:
            nonlocal close_code
            async for kind, ev in feed:
                if kind == "drop":
                    # An unclean close, as when MultiSafepay's connection breaks: no close frame.
                    close_code = None if _abort(ws) else 1011
                    break
                if "session.order" in session.channels:
                    sim.record_sending(order, ev)
                    await ws.send_json(bus.event("session.order", order.event_payload(ev, tx_as)))
                if order.final and ev.id == order.events[-1].id:  # the final itself sent
                    await sim.clock.sleep(sim.final_grace)
                    break
            tg.cancel_scope.cancel()

        async def watch_stopping(tg: TaskGroup) -> None:
            nonlocal close_code
            await sim.cancel_when_stopping(tg)
            close_code = 1001

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader, tg)
            tg.start_soon(writer, tg)
            tg.start_soon(watch_stopping, tg)
    if close_code is not None:
        with contextlib.suppress(Exception):  # the peer may be gone already: nothing to tell
            await ws.close(code=close_code)
