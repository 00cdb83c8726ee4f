"""The webhook receiver: MultiSafepay's notifications, the second channel.

One path per terminal group (``{path}/{group}``), so the key to verify with is known before the
body is read. The signature is checked over the raw body bytes, in constant time; a forged,
stale, malformed or oversized request is answered 401/400/413 without detail and publishes
nothing. A verified notification is answered ``200 OK`` only once its transition is in Redis:
while Redis is down the answer is 503, and MultiSafepay sends it again.

A group's webhook also reports orders the bridge did not start (typed in on the terminal,
started from an app, refunds from the dashboard): they are published on their terminal's
channel too, so a till sees everything its terminal does.

Hostile senders: a notification verified with one group's key may change only that group's
orders, on the order's own terminal (else 401, nothing published); the same signed
notification received twice changes nothing the second time (its ``Auth`` value is
remembered for ``max_age``); an unsigned ``GET`` notification makes the bridge ask
MultiSafepay only about an order id it knows for that group, percent-encoded, at a bounded
rate (else 404/429, no upstream call); a body that does not arrive within ``body_timeout`` is
answered 408. Header timeouts and the connection cap are the server's (``daemon/asgi.py``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import quote as percent_encode

import anyio
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bridge.core.events import Source
from bridge.core.normalize import MalformedPayload, Observation, from_order
from bridge.core.notifications import KnownOrder, TokenBucket, refuse_for_group, valid_order_id
from bridge.core.state import Verdict, observe, utcnow
from bridge.multisafepay.api import ApiError
from bridge.multisafepay.webhook import WebhookRejected, verify_webhook

if TYPE_CHECKING:
    from bridge.config import Config, TerminalGroup
    from bridge.daemon.payment import SessionContext

log = structlog.get_logger("bridge.webhook")

#: What MultiSafepay needs to see in the first 100 characters of the answer.
ACK = "OK"
#: How long a notification may wait for the ``order.created`` of the bridge's own ``pay``.
_OWN_ORDER_WAIT = 5.0
#: After the pay's registry record says ``created``, its ``order.created`` follows at once.
_CREATED_GRACE = 0.25
#: Unsigned GET notifications that may cost an upstream call, per group: per second, burst.
GET_RATE, GET_BURST = 2.0, 20.0


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
        *,
        redis: Redis,
        group_of: Callable[[str], str | None],
        count: Callable[[str], None] = lambda result: None,
    ) -> None:
        self._config = config
        self._ctx = ctx
        self._redis = redis
        self._group_of = group_of  # a terminal's group name (config and discovery)
        self._get_budget: dict[str, TokenBucket] = {}
        self._on_recorded = on_recorded  # tells a running session its order moved on
        self._count = count  # metrics: one call per request with its result

    def app(self) -> Starlette:
        path = self._config().webhook.path.rstrip("/")
        return Starlette(
            routes=[  # with and without a trailing slash: MultiSafepay follows no redirect
                Route(f"{path}/{{group}}", self.receive, methods=["POST", "GET"]),
                Route(f"{path}/{{group}}/", self.receive, methods=["POST", "GET"]),
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
            with anyio.fail_after(cfg.webhook.body_timeout):
                raw = await _read_body(request, cfg.webhook.max_body)
        except TimeoutError:
            return self._answer("body_timeout", 408, "request timeout", group=group.name)
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
        return await self._record_once(group, obs, request.headers.get("auth") or "")

    async def _record_once(self, group: TerminalGroup, obs: Observation, auth: str) -> Response:
        """Record a signed notification unless this very one (same ``Auth``: same timestamp,
        same body) was recorded before: a replay changes nothing."""
        digest = hashlib.sha256(auth.encode("utf-8", "surrogateescape")).hexdigest()
        seen = self._ctx.store.keys.webhook_seen(digest)
        ttl = int(self._config().webhook.max_age) + 60
        try:
            if not await self._redis.set(seen, "1", nx=True, ex=ttl):
                return self._answer("replay", 200, ACK, order_id=obs.order_id, group=group.name)
        except RedisError as exc:
            return self._answer("redis_unavailable", 503, "try again", error=str(exc))
        response = await self._record(group, obs)
        if response.status_code != 200:  # not handled: its resend must be handled then
            try:
                await self._redis.delete(seen)
            except RedisError as exc:
                log.warning("webhook.unmark_failed", order_id=obs.order_id, error=str(exc))
        return response

    async def _known(self, order_id: str) -> KnownOrder | None:
        """The order's terminal and group, as the bridge holds them (None: never seen)."""
        state = await self._ctx.store.load(order_id)
        if state is not None:
            return KnownOrder(state.terminal_id, None)
        record = await self._ctx.registry.load(order_id)
        return KnownOrder(record.terminal_id, record.group) if record is not None else None

    async def _fetch_and_record(self, group: TerminalGroup, order_id: str | None) -> Response:
        if not valid_order_id(order_id) or order_id is None:
            return self._answer(
                "malformed", 400, "bad request", group=group.name, error="no valid transactionid"
            )
        try:
            known = await self._known(order_id)
        except RedisError as exc:
            return self._answer("redis_unavailable", 503, "try again", error=str(exc))
        if known is None or refuse_for_group(group.name, known, None, self._group_of):
            # an unsigned request may not make the bridge ask about orders it does not hold
            return self._answer("unknown_order", 404, "not found", group=group.name)
        budget = self._get_budget.setdefault(group.name, TokenBucket(GET_RATE, GET_BURST))
        if not budget.take(time.monotonic()):
            return self._answer("rate_limited", 429, "too many requests", group=group.name)
        try:
            data = await self._ctx.api.get_order(
                group.key.get_secret_value(), percent_encode(order_id, safe="")
            )
            obs = from_order(data, Source.WEBHOOK, self._ctx.tz, as_of=utcnow())
        except ApiError as exc:
            status = 404 if exc.http_status == 404 else 503
            return self._answer(
                "fetch_failed", status, "not handled", order_id=order_id, error=exc.message
            )
        except MalformedPayload as exc:
            return self._answer("malformed", 400, "bad request", order_id=order_id, error=str(exc))
        if obs.order_id != order_id:
            return self._answer("malformed", 400, "bad request", order_id=order_id)
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
            known = await self._known(obs.order_id)
            refusal = refuse_for_group(group.name, known, obs.terminal_id, self._group_of)
            if refusal:
                return self._answer(
                    "foreign_order", 401, "unauthorized", group=group.name, reason=refusal
                )
            terminal = known.terminal_id if known is not None else obs.terminal_id
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
