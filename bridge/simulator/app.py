"""The simulator's Starlette app: REST API, SSE stream, WebSocket bus, admin API.

All tasks (scenario scripts, webhook deliveries) run in one task group owned by the app's
lifespan, so stopping the server stops them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import httpx
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from bridge.simulator import bench, page, receipts, scenarios, streams, tokens
from bridge.simulator import errors as E
from bridge.simulator.changes import Changes
from bridge.simulator.clock import Clock
from bridge.simulator.customers import Customers
from bridge.simulator.errors import MspError
from bridge.simulator.orders import Order, OrderEvent, OrderStore, validate_create
from bridge.simulator.responses import fail, ok
from bridge.simulator.routing import SegmentRouting, path_param
from bridge.simulator.scenarios import Scenario, Step
from bridge.simulator.variants import VariantError, Variants
from bridge.simulator.webhooks import RESEND_INTERVAL, WebhookSender

log = logging.getLogger("bridge.simulator")


Item = tuple[str, Any]  # ("event", OrderEvent) | ("drop", None)


class Simulator:
    """State and behaviour of one simulated MultiSafepay; ``app`` is its ASGI app."""

    def __init__(
        self,
        *,
        speed: float = 1.0,
        clock: Clock | None = None,
        api_keys: list[str] | tuple[str, ...] = (),
        webhook_url: str | None = None,
        variants: Variants | None = None,
        keepalive_interval: float = 15.0,
        final_grace: float = 1.0,
        webhook_resend_interval: float = RESEND_INTERVAL,
    ) -> None:
        self.clock = clock or Clock(speed)
        self.api_keys = frozenset(api_keys)
        self.webhook_url = webhook_url
        self.variants = variants or Variants()
        self.keepalive_interval = keepalive_interval  # simulated seconds between pings
        self.final_grace = final_grace  # simulated seconds a stream stays open after the end
        self.secret = secrets.token_bytes(32)
        self.store = OrderStore(self.clock.local_timestamp, self.clock.simulated_seconds)
        self._feeds: dict[str, set[MemoryObjectSendStream[Item]]] = {}
        self._scripts: dict[str, anyio.CancelScope] = {}
        self._tg: TaskGroup | None = None
        self.stopping: anyio.Event | None = None  # created inside the loop (lifespan)
        self.webhooks: WebhookSender | None = None
        self._webhook_resend_interval = webhook_resend_interval
        self.bench = bench.BenchDriver(  # SIM-BENCH payments, driven by the admin API
            self.store,
            publish=self._publish,
            start=self._start,
            streamed=lambda order_id: bool(self._feeds.get(order_id)),
        )
        self.changes = Changes()  # what the web page waits on
        self.customers = Customers(self)  # manual terminals, the page's customer buttons
        self.receipts = receipts.ReceiptDesk(self)  # GET pos/receipt/{order_id}
        self.app = self._build_app()

    # ---- lifecycle -----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.stopping = anyio.Event()
        async with httpx.AsyncClient(timeout=10.0) as client, anyio.create_task_group() as tg:
            self._tg = tg
            self.webhooks = WebhookSender(
                client, self.clock, self._webhook_resend_interval, on_record=self.changes.touch
            )
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                self._tg = None

    def begin_shutdown(self) -> None:
        """End open streams so the server can stop without waiting for them."""
        if self.stopping is not None:
            self.stopping.set()

    # ---- order flow ----------------------------------------------------------------------
    def _start(self, func: Any, *args: Any) -> None:
        assert self._tg is not None, "simulator not running"
        self._tg.start_soon(func, *args)

    async def _play(self, order: Order) -> None:
        await self.play_steps(order, scenarios.script(order.scenario))

    async def play_steps(self, order: Order, steps: list[Step]) -> None:
        """Play ``steps`` on the order; an API cancel or a ``take_over`` stops them."""
        with anyio.CancelScope() as scope:
            self._scripts[order.order_id] = scope
            try:
                for step in steps:
                    await self.clock.sleep(step.delay)
                    if step.is_drop:
                        self.drop(order)
                        continue
                    ev = self.store.transition(order, step)
                    if ev is not None:
                        self._announce(order, ev)
                    if order.final:
                        break
            finally:
                if self._scripts.get(order.order_id) is scope:
                    del self._scripts[order.order_id]

    def take_over(self, order: Order, func: Any, *args: Any) -> None:
        """Stop what is being played on the order and start ``func(*args)`` instead (a person
        at the terminal chose what happens next)."""
        scope = self._scripts.pop(order.order_id, None)
        if scope is not None:
            scope.cancel()
        self._start(func, *args)

    def _announce(self, order: Order, ev: OrderEvent) -> None:
        log.info("order %s terminal %s -> %s", order.order_id, order.terminal_id, ev.status)
        self._publish(order, ("event", ev))
        self._notify(order)

    def _notify(self, order: Order) -> None:
        url = order.notification_url or self.webhook_url
        if url and self.webhooks is not None:
            self._start(
                self.webhooks.deliver,
                url,
                order.api_key,
                order.order_id,
                order.view(),
                order.notification_method,
            )

    def _publish(self, order: Order, item: Item) -> None:
        self.changes.touch()
        for stream in list(self._feeds.get(order.order_id, ())):
            try:
                stream.send_nowait(item)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._feeds[order.order_id].discard(stream)

    def open_streams(self, order_id: str) -> int:
        """How many SSE/WebSocket streams follow the order now."""
        return len(self._feeds.get(order_id, ()))

    def drop(self, order: Order) -> int:
        """Abruptly end every open stream of the order; returns how many there were."""
        n = len(self._feeds.get(order.order_id, ()))
        log.info("order %s: dropping %d stream(s)", order.order_id, n)
        self._publish(order, ("drop", None))
        return n

    @contextlib.contextmanager
    def subscribe(self, order: Order, transport: str = "sse") -> Any:
        send, receive = anyio.create_memory_object_stream[Item](math.inf)
        self._feeds.setdefault(order.order_id, set()).add(send)
        self.bench.stream_opened(transport)
        self.changes.touch()  # the page shows the streams open
        try:
            yield receive
        finally:
            self.bench.stream_closed(transport)
            self.changes.touch()
            feeds = self._feeds.get(order.order_id, set())
            feeds.discard(send)
            if not feeds:
                self._feeds.pop(order.order_id, None)
            send.close()
            receive.close()

    def record_sending(self, order: Order, ev: OrderEvent) -> None:
        if order.order_id in self.bench.sent_at:
            self.bench.record_send(order, ev)

    def cancel_order(self, order: Order) -> None:
        ev = self.store.cancel(order)
        scope = self._scripts.get(order.order_id)
        if scope is not None:
            scope.cancel()
        if ev is not None:
            self._announce(order, ev)

    def refund_order(self, order: Order, body: Any) -> dict[str, Any]:
        data = self.store.refund(order, body)
        log.info("order %s refunded %d -> %s", order.order_id, order.amount_refunded, order.status)
        self.changes.touch()
        self._notify(order)
        return data

    # ---- REST ----------------------------------------------------------------------------
    def api_key(self, request: Request) -> str:
        key = request.headers.get("api_key") or request.headers.get("api-key")
        if not key:
            key = tokens.token_from_authorization(request.headers.get("authorization"))
        if not key:
            key = request.query_params.get("api_key")
        key = (key or "").strip()
        if not key or (self.api_keys and key not in self.api_keys):
            raise MspError(401, E.INVALID_API_KEY, "Invalid API key")
        return key

    async def _hold_if_slow(self, order: Order) -> None:
        if order.scenario is Scenario.SLOW:
            await self.clock.sleep(scenarios.SLOW_ANSWER)

    async def create_order(self, request: Request) -> Response:
        key = self.api_key(request)
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise MspError(400, E.MISSING_DATA, "Request body is not valid JSON") from None
        fields = validate_create(body)
        scenario = scenarios.choose(fields["terminal_id"], fields["amount"], self.customers.manual)
        if scenario is Scenario.UNKNOWN_TERMINAL:
            raise MspError(404, E.UNKNOWN_TERMINAL, f"Invalid terminal ID: {fields['terminal_id']}")
        if scenario is Scenario.FAIL:
            raise MspError(500, E.UNKNOWN, "Unknown error: the service is unavailable")
        order = self.store.create(fields, key, scenario)
        self.changes.touch()
        log.info(
            "order %s created on terminal %s (scenario %s, amount %d)",
            order.order_id,
            order.terminal_id,
            scenario.value,
            order.amount,
        )
        if bench.is_driven(order.terminal_id):
            self.bench.created(order)  # no script: the admin API drives it
        else:
            self._start(self._play, order)
        await self._hold_if_slow(order)
        if scenario is Scenario.CREATE_TIMEOUT:
            # The order exists; the answer is held until the client gives up.
            with anyio.move_on_after(scenarios.CREATE_HOLD_REAL):
                # Starlette offers no disconnect event to wait on in a request handler.
                while not await request.is_disconnected():  # noqa: ASYNC110
                    await anyio.sleep(0.05)
        return ok(self._create_answer(order, request))

    def _create_answer(self, order: Order, request: Request) -> dict[str, Any]:
        v = self.variants
        host = request.url.netloc  # the host the client used, so the URLs work for it
        secure = request.url.scheme == "https"  # and its scheme: over TLS, TLS URLs
        http, ws = ("https", "wss") if secure else ("http", "ws")
        token = tokens.make_events_token(
            order.session_id, self.secret, self.clock.time(), v.token_ttl
        )
        word = "events" if v.field_spelling == "events" else "event"
        # MultiSafepay/docs: content/point-of-sale/event-notifications.md ("Example response")
        data: dict[str, Any] = {
            "order_id": order.order_id,
            "session_id": order.session_id,
            "payment_url": f"{http}://{host}/connect/{order.session_id}/?lang=nl_NL",
            f"{word}_token": token,
        }
        if v.events_url == "on":
            data[f"{word}_url"] = f"{ws}://{host}/events/"
        data[f"{word}_stream_url"] = f"{http}://{host}/events/stream/"
        return data

    async def get_order(self, request: Request) -> Response:
        order = self.store.get(path_param(request, "order_id"), self.api_key(request))
        await self._hold_if_slow(order)
        return ok(order.view())

    async def cancel(self, request: Request) -> Response:
        order = self.store.get(path_param(request, "order_id"), self.api_key(request))
        await self._hold_if_slow(order)
        self.cancel_order(order)
        return ok(order.cancel_view())

    async def refund(self, request: Request) -> Response:
        order = self.store.get(path_param(request, "order_id"), self.api_key(request))
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            raise MspError(400, E.MISSING_DATA, "Request body is not valid JSON") from None
        await self._hold_if_slow(order)
        return ok(self.refund_order(order, body))

    async def terminals(self, request: Request) -> Response:
        self.api_key(request)
        items = list(scenarios.TERMINALS)
        group = request.path_params.get("group_id")
        if group is not None:
            items = [t for t in items if str(t.group_id) == group]
        try:
            page = max(1, int(request.query_params.get("page", 1)))
            limit = max(1, min(100, int(request.query_params.get("limit", 10))))
        except ValueError:
            raise MspError(400, E.MISSING_DATA, "page and limit must be integers") from None
        chunk = items[(page - 1) * limit : page * limit]
        data = [t.listing(n) for n, t in enumerate(chunk, (page - 1) * limit + 1)]
        # The pager documents total_items only (MultiSafepay/docs:
        # openapi/components/schemas/TerminalPager.yaml): a client pages on its own.
        pager = {"total_items": len(items)}
        return JSONResponse({"success": True, "data": data, "pager": pager})

    # ---- events ------------------------------------------------------------------------------
    def order_for_token(self, token: str | None) -> Order:
        if not token:
            raise MspError(401, E.INVALID_API_KEY, "Missing events token")
        try:
            claims = tokens.decode(token, self.secret, self.clock.time())
        except tokens.TokenError as exc:
            raise MspError(401, E.INVALID_API_KEY, f"Invalid events token: {exc}") from exc
        order = self.store.by_session.get(str(claims.get("pid")))
        if order is None:
            raise MspError(401, E.INVALID_API_KEY, "Invalid events token: unknown session")
        return order

    async def cancel_when_stopping(self, tg: TaskGroup) -> None:
        """Cancel ``tg`` once the server begins to stop (open streams must not hold it up)."""
        assert self.stopping is not None
        await self.stopping.wait()
        tg.cancel_scope.cancel()

    async def sse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await streams.sse_stream(self, scope, receive, send)

    async def websocket(self, ws: WebSocket) -> None:
        await streams.bus_session(self, ws)

    # ---- admin -----------------------------------------------------------------------------
    async def admin_variants(self, request: Request) -> Response:
        if request.method == "PUT":
            try:
                values = json.loads(await request.body())
                if not isinstance(values, dict):
                    raise VariantError("body must be a JSON object of variant: value")
                self.variants.update(values)
            except (ValueError, VariantError) as exc:
                return fail(MspError(400, E.MISSING_DATA, str(exc)))
        return ok(self.variants.as_dict())

    async def admin_orders(self, request: Request) -> Response:
        return ok(
            [
                {
                    "order_id": o.order_id,
                    "terminal_id": o.terminal_id,
                    "amount": o.amount,
                    "scenario": o.scenario.value,
                    "status": o.status,
                    "session_id": o.session_id,
                    "transaction_id": o.transaction_id,
                    "amount_refunded": o.amount_refunded,
                    "events": [e.status for e in o.events],
                    "open_streams": self.open_streams(o.order_id),
                }
                for o in self.store.orders.values()
            ]
        )

    async def admin_drop(self, request: Request) -> Response:
        order = self.store.orders.get(path_param(request, "order_id"))
        if order is None:
            return fail(
                MspError(404, E.INVALID_ORDER_ID, "Invalid transaction ID: order not found")
            )
        return ok({"order_id": order.order_id, "dropped": self.drop(order)})

    async def admin_webhooks(self, request: Request) -> Response:
        return ok(list(self.webhooks.attempts) if self.webhooks else [])

    # ---- wiring --------------------------------------------------------------------------------
    def _build_app(self) -> Starlette:
        def guarded(
            handler: Callable[[Request], Awaitable[Response]],
        ) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                try:
                    return await handler(request)
                except MspError as err:
                    log.info(
                        "%s %s -> %d %d %s",
                        request.method,
                        request.url.path,
                        err.http_status,
                        err.code,
                        err.info,
                    )
                    return fail(err)

            return endpoint

        api = "/v1/json"
        routes = [
            Route(f"{api}/orders", guarded(self.create_order), methods=["POST"]),
            Route(f"{api}/orders/{{order_id}}", guarded(self.get_order), methods=["GET"]),
            Route(f"{api}/orders/{{order_id}}/cancel", guarded(self.cancel), methods=["POST"]),
            Route(f"{api}/orders/{{order_id}}/refunds", guarded(self.refund), methods=["POST"]),
            Route(f"{api}/terminals", guarded(self.terminals), methods=["GET"]),
            Route(
                f"{api}/terminal-groups/{{group_id}}/terminals",
                guarded(self.terminals),
                methods=["GET"],
            ),
            *self.receipts.routes(api, guarded),
            Route("/events/stream/", _AsgiEndpoint(self.sse), methods=["GET"]),
            WebSocketRoute("/events/", self.websocket),
            Route("/_sim/variants", self.admin_variants, methods=["GET", "PUT"]),
            Route("/_sim/orders", self.admin_orders, methods=["GET"]),
            Route("/_sim/orders/{order_id}/drop", self.admin_drop, methods=["POST"]),
            Route("/_sim/webhooks", self.admin_webhooks, methods=["GET"]),
            Route("/_sim/bench/drive", self.bench.drive, methods=["POST"]),
            Route("/_sim/bench/status", self.bench.status, methods=["GET"]),
            Route("/_sim/bench/sent", self.bench.sent_times, methods=["GET"]),
            *page.routes(self),  # the web page at / and its actions
        ]

        async def not_found(request: Request, exc: Exception) -> Response:
            code = getattr(exc, "status_code", 404)
            return fail(MspError(code, E.UNKNOWN, getattr(exc, "detail", "Not found")))

        return Starlette(
            routes=routes,
            lifespan=self.lifespan,
            middleware=[Middleware(SegmentRouting)],
            exception_handlers={404: not_found, 405: not_found},
        )


class _AsgiEndpoint:
    """Wraps a raw ASGI callable so Starlette routes to it without a request/response wrapper
    (the SSE stream needs raw control to be able to break a response on purpose)."""

    def __init__(self, func: Any) -> None:
        self.func = func

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.func(scope, receive, send)
