"""The webhook receiver: MultiSafepay's notifications, the second channel.

One path per terminal group (``{path}/{group}``), so the key to verify with is known before the
body is read. The signature is checked over the raw body bytes, in constant time; a forged,
stale, malformed or oversized request is answered 401/400/413 without detail and publishes
nothing. A verified notification is answered ``200 OK`` only once its transition is in Redis:
while Redis is down the answer is 503, and MultiSafepay sends it again.

A group's webhook also reports orders the bridge did not start (typed in on the terminal,
started from an app, refunds from the dashboard): they are published on their terminal's
channel too, so a till sees everything its terminal does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
import structlog
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bridge.core.events import Source
from bridge.core.normalize import MalformedPayload, Observation, from_order
from bridge.core.state import Verdict, observe, utcnow
from bridge.multisafepay.api import ApiError
from bridge.multisafepay.webhook import WebhookRejected, verify_webhook

if TYPE_CHECKING:
    from bridge.config import Config, TerminalGroup
    from bridge.daemon.session import SessionContext

log = structlog.get_logger("bridge.webhook")

#: What MultiSafepay needs to see in the first 100 characters of the answer.
ACK = "OK"
#: How long a notification may wait for the ``order.created`` of the bridge's own ``pay``.
_OWN_ORDER_WAIT = 5.0
#: After the pay's registry record says ``created``, its ``order.created`` follows at once.
_CREATED_GRACE = 0.25


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _TooLarge
    return bytes(body)


class WebhookReceiver:
    def __init__(
        self,
        config: Callable[[], Config],
        ctx: SessionContext,
        on_recorded: Callable[[str], None],
        count: Callable[[str], None] = lambda result: None,
    ) -> None:
        self._config = config
        self._ctx = ctx
        self._on_recorded = on_recorded  # tells a running session its order moved on
        self._count = count  # metrics: one call per request with its result

    def app(self) -> Starlette:
        path = self._config().webhook.path.rstrip("/")
        return Starlette(
            routes=[
                Route(f"{path}/{{group}}", self.receive, methods=["POST", "GET"]),
            ]
        )

    def _group(self, name: str) -> TerminalGroup | None:
        return next(
            (g for g in self._config().multisafepay.terminal_groups if g.name == name), None
        )

    def _answer(self, result: str, http_status: int, text: str, **fields: object) -> Response:
        self._count(result)
        level = "info" if http_status == 200 else "warning"
        getattr(log, level)("webhook." + result, http_status=http_status, **fields)
        return PlainTextResponse(text, status_code=http_status)

    async def receive(self, request: Request) -> Response:
        group = self._group(request.path_params["group"])
        if group is None:
            return self._answer("unknown_group", 404, "not found")
        cfg = self._config()
        order_id = request.query_params.get("transactionid")
        if request.method == "GET":
            # notification_method GET: no body to trust; ask the API about the order.
            return await self._fetch_and_record(group, order_id)
        try:
            raw = await _read_body(request, cfg.webhook.max_body)
        except _TooLarge:
            return self._answer("too_large", 413, "too large", group=group.name)
        except ClientDisconnect:
            return self._answer("disconnected", 400, "bad request", group=group.name)
        try:
            verify_webhook(
                raw,
                request.headers.get("auth"),
                group.key.get_secret_value(),
                now=time.time(),
                max_age=cfg.webhook.max_age,
            )
        except WebhookRejected as exc:
            return self._answer(
                "rejected", 401, "unauthorized", group=group.name, reason=exc.reason
            )
        try:
            obs = from_order(raw, Source.WEBHOOK, cfg.multisafepay.tzinfo)
        except MalformedPayload as exc:
            return self._answer("malformed", 400, "bad request", group=group.name, error=str(exc))
        if order_id and order_id != obs.order_id:
            return self._answer(
                "malformed",
                400,
                "bad request",
                group=group.name,
                error="transactionid does not match the body's order_id",
            )
        return await self._record(group, obs)

    async def _fetch_and_record(self, group: TerminalGroup, order_id: str | None) -> Response:
        if not order_id:
            return self._answer(
                "malformed", 400, "bad request", group=group.name, error="no transactionid"
            )
        try:
            data = await self._ctx.api.get_order(group.key.get_secret_value(), order_id)
            obs = from_order(data, Source.WEBHOOK, self._ctx.tz, as_of=utcnow())
        except ApiError as exc:
            status = 404 if exc.http_status == 404 else 503
            return self._answer(
                "fetch_failed", status, "not handled", order_id=order_id, error=exc.message
            )
        except MalformedPayload as exc:
            return self._answer("malformed", 400, "bad request", order_id=order_id, error=str(exc))
        return await self._record(group, obs)

    async def _own_order_pending(self, order_id: str) -> bool:
        """True while the order is a ``pay`` of ours whose ``order.created`` is not recorded yet
        (MultiSafepay may notify before the create call has answered). Recording the webhook
        first would publish the payment without its ``order.created`` and ``command_id``, so
        this waits for it, a bounded time. A followed order (``watch``) has no such event to
        wait for: its record says ``created`` from the start, and only a short grace applies."""
        store, registry = self._ctx.store, self._ctx.registry
        deadline = time.monotonic() + min(self._ctx.upstream.request_timeout, _OWN_ORDER_WAIT)
        created_since: float | None = None
        while True:
            if await store.load(order_id) is not None:
                return False
            record = await registry.load(order_id)
            if record is None:
                return False  # not ours (or no longer in flight): nothing to wait for
            now = time.monotonic()
            if record.created:
                created_since = created_since if created_since is not None else now
                if now - created_since >= _CREATED_GRACE:
                    return False
            if now >= deadline:
                return True
            await anyio.sleep(0.02)

    async def _record(self, group: TerminalGroup, obs: Observation) -> Response:
        store = self._ctx.store
        try:
            if await self._own_order_pending(obs.order_id):
                # not handled yet: MultiSafepay sends it again; the session follows the order
                return self._answer("create_pending", 503, "try again", order_id=obs.order_id)
            terminal = obs.terminal_id
            if terminal is None:
                # the body did not say; the order's published state or session does
                state = await store.load(obs.order_id)
                record = None if state else await self._ctx.registry.load(obs.order_id)
                terminal = state.terminal_id if state else (record.terminal_id if record else None)
            if (
                terminal is not None
                and group.terminals
                and terminal.upper() not in group.terminal_ids
            ):
                log.warning(
                    "webhook.foreign_terminal",
                    group=group.name,
                    terminal_id=terminal,
                    order_id=obs.order_id,
                    note="published on its terminal's channel anyway",
                )
            now = utcnow()
            recorded = await store.record(
                obs.order_id, lambda st: observe(st, obs, now, terminal_id=terminal)
            )
        except RedisError as exc:
            # not safely handled: MultiSafepay resends (3 times, 15 minutes apart)
            return self._answer(
                "redis_unavailable", 503, "try again", order_id=obs.order_id, error=str(exc)
            )
        verdict = recorded.decision.verdict
        if verdict is Verdict.UNROUTABLE:
            return self._answer(
                "unroutable",
                200,
                ACK,
                order_id=obs.order_id,
                note="no terminal known for this order; nothing published",
            )
        if recorded.stream_ids:
            self._on_recorded(obs.order_id)
        return self._answer(
            "accepted",
            200,
            ACK,
            order_id=obs.order_id,
            order_status=obs.status,
            verdict=verdict.value,
            terminal_id=terminal,
        )
