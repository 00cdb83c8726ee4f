"""Load driving for ``pos-bridge bench``: payments that stay open and change status on demand.

A payment on a terminal whose ID starts with ``SIM-BENCH`` (``SIM-BENCH-00042``) runs no script:
it stays open, its streams stay open, and its status changes only when the admin API says so.

- ``POST /_sim/bench/drive`` ``{"rate": M, "duration": D}``: from now on, ``M`` status changes
  per second, round robin over the open bench orders that have a stream, for ``D`` seconds.
  Each change differs from the order's last status (``initialized``, ``declined``,
  ``initialized``, ...), as a faithful stream never repeats one. ``{"rate": M, "finish": true}``
  instead gives every open bench order its final ``completed``, ``M`` per second.
- ``GET /_sim/bench/status``: whether it is driving, how many changes were made and sent, the
  streams open now (by transport) and at most, and how many were ever opened, the latest at
  ``last_open_at`` (``time.monotonic()``, as below).
- ``GET /_sim/bench/sent``: ``{order_id: [[status, t], ...]}``, each status change of the order
  with the ``time.monotonic()`` at which it was written to its (first) stream. On Linux that
  clock is system-wide, so another process on the machine can subtract its own readings from it.

Nothing is added to MultiSafepay's payloads: a reader pairs on (order id, status, time; see
:mod:`bridge.bench.pairing`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

if TYPE_CHECKING:
    from bridge.simulator.orders import Order, OrderEvent, OrderStore

#: Terminal ID prefix of driven payments (upper case, then ``-`` and anything).
PREFIX = "SIM-BENCH"


def is_driven(terminal_id: str) -> bool:
    tid = terminal_id.upper()
    return tid == PREFIX or tid.startswith(PREFIX + "-")


def next_status(order: Order) -> str:
    """A status other than the order's current one (as ``GET`` reports it), so every change
    driven is a transition the bridge publishes."""
    return "declined" if order.status == "initialized" else "initialized"


async def pace(rate: float, count: int | None, duration: float | None, step: Any) -> int:
    """Call ``step(i)`` ``rate`` times per second (for ``count`` calls or ``duration`` seconds),
    on schedule: a late loop catches up at once rather than drifting. Returns the calls made.
    ``step`` returns False when there is nothing left to do."""
    start = time.monotonic()
    done = 0
    while True:
        elapsed = time.monotonic() - start
        if duration is not None and elapsed >= duration:
            break
        due = int(elapsed * rate) + 1
        if count is not None:
            due = min(due, count)
        while done < due:
            if step(done) is False:
                return done
            done += 1
        if count is not None and done >= count:
            break
        await anyio.sleep(max(0.0, done / rate - (time.monotonic() - start)))
    return done


class BenchDriver:
    """Drives the bench orders of one simulator, through what it is given (not the simulator
    itself: ``app`` builds this driver, so the driver does not import ``app``)."""

    def __init__(
        self,
        store: OrderStore,
        *,
        publish: Callable[[Order, tuple[str, OrderEvent]], None],
        start: Callable[..., None],
        streamed: Callable[[str], bool],
    ) -> None:
        """``publish(order, ("event", ev))`` writes to the order's open streams; ``start(func,
        *args)`` runs a task in the simulator's task group; ``streamed(order_id)``: a stream
        of the order is open."""
        self.store = store
        self._publish = publish
        self._start = start
        self._streamed_now = streamed
        self.orders: dict[str, Order] = {}  # open driven orders
        self.sent_at: dict[str, list[tuple[str, float]]] = {}
        self.changes = 0
        self.sent = 0
        self.driving = False
        self.streams = {"sse": 0, "websocket": 0}
        self.peak_streams = 0
        #: Streams opened so far, and the ``time.monotonic()`` of the latest (``None``: none).
        self.streams_opened = 0
        self.last_open_at: float | None = None

    # -- hooks called by the simulator -----------------------------------------------------
    def created(self, order: Order) -> None:
        self.orders[order.order_id] = order
        self.sent_at[order.order_id] = []

    def stream_opened(self, transport: str) -> None:
        self.streams[transport] += 1
        self.streams_opened += 1
        self.last_open_at = time.monotonic()
        self.peak_streams = max(self.peak_streams, sum(self.streams.values()))

    def stream_closed(self, transport: str) -> None:
        self.streams[transport] -= 1

    def record_send(self, order: Order, ev: OrderEvent) -> None:
        """The event ``ev`` is about to be written to one of the order's streams."""
        times = self.sent_at.get(order.order_id)
        if times is not None and len(times) == ev.id - 1:  # first stream to send it
            times.append((ev.status, time.monotonic()))
            self.sent += 1

    # -- driving ----------------------------------------------------------------------------
    def _streamed(self) -> list[Order]:
        return [o for o in self.orders.values() if not o.final and self._streamed_now(o.order_id)]

    def _change(self, order: Order, status: str) -> None:
        ev = self.store.transition(order, status)
        if ev is not None:
            self.changes += 1
            self._publish(order, ("event", ev))
        if order.final:
            self.orders.pop(order.order_id, None)

    async def _drive(self, rate: float, duration: float) -> None:
        orders = self._streamed()
        try:
            if orders:
                await pace(
                    rate,
                    None,
                    duration,
                    lambda i: self._change(
                        orders[i % len(orders)], next_status(orders[i % len(orders)])
                    ),
                )
        finally:
            self.driving = False

    async def _finish(self, rate: float) -> None:
        orders = [o for o in self.orders.values() if not o.final]
        try:
            await pace(rate, len(orders), None, lambda i: self._change(orders[i], "completed"))
        finally:
            self.driving = False

    # -- admin API ------------------------------------------------------------------------
    async def drive(self, request: Request) -> Response:
        try:
            body = await request.json()
            rate = float(body["rate"])
            finish = bool(body.get("finish", False))
            duration = float(body.get("duration", 0.0))
            if rate <= 0 or (not finish and duration <= 0):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return JSONResponse(
                {
                    "success": False,
                    "error": "body: {rate > 0, duration > 0} or {rate > 0, finish: true}",
                },
                status_code=400,
            )
        if self.driving:
            return JSONResponse({"success": False, "error": "already driving"}, status_code=409)
        self.driving = True
        orders = len(self._streamed())
        if finish:
            self._start(self._finish, rate)
        else:
            self._start(self._drive, rate, duration)
        return JSONResponse({"success": True, "data": {"orders": orders}})

    async def status(self, request: Request) -> Response:
        return JSONResponse(
            {
                "success": True,
                "data": {
                    "driving": self.driving,
                    "changes": self.changes,
                    "sent": self.sent,
                    "open_orders": len(self.orders),
                    "streams": dict(self.streams),
                    "peak_streams": self.peak_streams,
                    "streams_opened": self.streams_opened,
                    "last_open_at": self.last_open_at,
                },
            }
        )

    async def sent_times(self, request: Request) -> Response:
        return JSONResponse({"success": True, "data": self.sent_at})
