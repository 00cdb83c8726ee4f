"""The simulator's web page and what it calls: ``/`` (the page), ``/_sim/page/stream`` (live
card updates, server-sent events), and admin calls any tool may use too:

- ``POST /_sim/press`` ``{"terminal_id": ..., "action": "tap", "pin": "1234"}``: press a
  customer's button on a terminal (``terminal_face.Action``); 409 when not possible now.
- ``GET``/``PUT /_sim/manual`` ``{"terminal_id": ..., "manual": true}``: terminals that wait for
  a person.
- ``GET``/``PUT /_sim/speed`` ``{"speed": 10}``: the time factor, from the next delay on.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import anyio
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from bridge.simulator import scenarios
from bridge.simulator.changes import Changes
from bridge.simulator.clock import Clock
from bridge.simulator.customers import Customers
from bridge.simulator.orders import OrderStore
from bridge.simulator.page_render import STATIC, TerminalCard, card_html, dom_id, page_html
from bridge.simulator.terminal_face import TITLES, Action, ActionRefused
from bridge.simulator.variants import Variants
from bridge.simulator.webhooks import WebhookSender


class Simulator(Protocol):
    """What the page uses of the simulator (``app.Simulator``), so it need not import it."""

    store: OrderStore
    customers: Customers
    webhooks: WebhookSender | None
    variants: Variants
    clock: Clock
    changes: Changes
    stopping: anyio.Event | None

    def open_streams(self, order_id: str) -> int: ...


KEEPALIVE = 15.0  # real seconds between comments on an idle page stream
MAX_SPEED = 1000.0


def cards(sim: Simulator) -> list[TerminalCard]:
    """Every terminal worth showing: those with a payment first, then the listed ones, then any
    other set to manual. (Only a new page is ordered so; a live page appends new cards.)"""
    names = {t.id.upper(): t.name for t in scenarios.TERMINALS}
    order = list(dict.fromkeys([*sorted(sim.store.active), *names, *sorted(sim.customers.manual)]))
    attempts = sim.webhooks.attempts if sim.webhooks is not None else []
    result = []
    for tid in order:
        current = sim.customers.order_on(tid)
        result.append(
            TerminalCard(
                terminal_id=tid,
                name=names.get(tid, ""),
                manual=tid in sim.customers.manual,
                screen=sim.customers.screen(current),
                order=current,
                webhooks=[a for a in attempts if current and a["order_id"] == current.order_id],
                open_streams=sim.open_streams(current.order_id) if current else 0,
            )
        )
    return result


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"success": False, "error": message}, status_code=status)


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise ValueError("the body must be JSON") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


def _terminal_id(body: dict[str, Any]) -> str:
    tid = body.get("terminal_id")
    if not isinstance(tid, str) or not tid.strip() or len(tid) > 100:
        raise ValueError("terminal_id: a non-empty string of at most 100 characters")
    return tid.strip()


class Page:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def index(self, request: Request) -> Response:
        html = page_html(
            cards(self.sim),
            variants=self.sim.variants.as_dict(),
            speed=self.sim.clock.speed,
            api_url=f"{request.url.scheme}://{request.url.netloc}/v1/json/",
        )
        return HTMLResponse(html, headers={"cache-control": "no-store"})

    async def stream(self, request: Request) -> Response:
        """Every card at once, then each card again whenever it changes."""
        return StreamingResponse(
            self._card_events(),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def _card_events(self) -> AsyncIterator[str]:
        sent: dict[str, str] = {}
        while True:
            version = self.sim.changes.version
            for card in cards(self.sim):
                html = card_html(card)
                if sent.get(card.terminal_id) != html:
                    sent[card.terminal_id] = html
                    data = {
                        "id": dom_id(card.terminal_id),
                        "terminal_id": card.terminal_id,
                        "screen": card.screen.value,
                        "title": TITLES[card.screen],
                        "html": html,
                    }
                    yield f"event: card\ndata: {json.dumps(data)}\n\n"
            if not await self._next_change(version):
                yield ": ping\n\n"
            if self.sim.stopping is None or self.sim.stopping.is_set():
                return

    async def _next_change(self, version: int) -> bool:
        """Wait for a change, the simulator stopping, or the keep-alive interval (False)."""
        changed = False
        async with anyio.create_task_group() as tg:

            async def change() -> None:
                nonlocal changed
                await self.sim.changes.wait_after(version)
                changed = True
                tg.cancel_scope.cancel()

            async def stopping() -> None:
                assert self.sim.stopping is not None
                await self.sim.stopping.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(change)
            tg.start_soon(stopping)
            tg.cancel_scope.deadline = anyio.current_time() + KEEPALIVE
        return changed

    async def press(self, request: Request) -> Response:
        try:
            body = await _json_object(request)
            terminal_id = _terminal_id(body)
            action = Action(str(body.get("action")))
            pin = body.get("pin", "")
            if not isinstance(pin, str):
                raise ValueError("pin: a string of digits")
        except ValueError as exc:
            return _error(400, str(exc))
        try:
            order = self.sim.customers.press(terminal_id, action, pin)
        except ActionRefused as exc:
            return _error(409, str(exc))
        screen = self.sim.customers.screen(order)
        return JSONResponse(
            {"success": True, "data": {"order_id": order.order_id, "screen": screen}}
        )

    async def manual(self, request: Request) -> Response:
        if request.method == "PUT":
            try:
                body = await _json_object(request)
                terminal_id = _terminal_id(body)
                on = body.get("manual")
                if not isinstance(on, bool):
                    raise ValueError("manual: true or false")
            except ValueError as exc:
                return _error(400, str(exc))
            self.sim.customers.set_manual(terminal_id, on)
        return JSONResponse({"success": True, "data": sorted(self.sim.customers.manual)})

    async def speed(self, request: Request) -> Response:
        if request.method == "PUT":
            try:
                body = await _json_object(request)
                speed = body.get("speed")
                if (
                    isinstance(speed, bool)
                    or not isinstance(speed, int | float)
                    or not math.isfinite(speed)
                    or not 0 < speed <= MAX_SPEED
                ):
                    raise ValueError(f"speed: a number > 0 and <= {MAX_SPEED:g}")
            except ValueError as exc:
                return _error(400, str(exc))
            self.sim.clock.speed = float(speed)  # delays already running keep their length
        return JSONResponse({"success": True, "data": {"speed": self.sim.clock.speed}})


def routes(sim: Simulator) -> list[BaseRoute]:
    page = Page(sim)
    return [
        Route("/", page.index, methods=["GET"]),
        Route("/_sim/page/stream", page.stream, methods=["GET"]),
        Route("/_sim/press", page.press, methods=["POST"]),
        Route("/_sim/manual", page.manual, methods=["GET", "PUT"]),
        Route("/_sim/speed", page.speed, methods=["GET", "PUT"]),
        Mount(STATIC, StaticFiles(directory=Path(__file__).parent / "static"), name="static"),
    ]
