"""What each till command does. Every outcome is an event on the terminal's channel (or, with
no usable terminal, a log line and a ``{p}:commands:dead`` entry): never a silent drop.

Idempotent per command id: the command's fingerprint is stored under ``{p}:cmd:{id}``; the
same id with the same body is a replay and changes nothing, since every step looks at what
Redis already holds (the order's state) before acting upstream.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from redis.asyncio import Redis

from bridge import metrics
from bridge.core.commands import (
    CancelCommand,
    InvalidCommand,
    PayCommand,
    RefundCommand,
    WatchCommand,
    command_fingerprint,
    derive_order_id,
    parse_command,
    readable_part,
)
from bridge.core.events import ErrorCode, Event, EventError, EventType, Source, make_event_id
from bridge.core.normalize import MalformedPayload, canonical_terminal_id, from_order
from bridge.core.state import (
    Decision,
    OrderState,
    Verdict,
    observe,
    order_created,
    order_failed,
    utcnow,
)
from bridge.core.watch import refuse_watch
from bridge.daemon.intake import LeaveUnacknowledged, dead_letter
from bridge.daemon.sessions import record_found_order
from bridge.multisafepay.api import ApiError, CreatedOrder
from bridge.multisafepay.tokens import token_claims
from bridge.redis.client import text
from bridge.redis.sessions import SessionRecord

if TYPE_CHECKING:
    from bridge.config import Config, TerminalGroup
    from bridge.daemon.session import SessionContext
    from bridge.daemon.terminals import TerminalDirectory

log = structlog.get_logger("bridge.commands")

#: A command older than this is not started: a till that gave up must not charge a customer now.
COMMAND_MAX_AGE = 300.0


class PayFailed(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class OutcomeUnknown(LeaveUnacknowledged):
    """MultiSafepay could not say whether an order exists: the command stays unacknowledged."""


# MultiSafepay's code for an invalid or already used order id.
_UPSTREAM_INVALID_ORDER_ID = 1006


def _create_refusal(exc: ApiError) -> ErrorCode:
    """The till's error code for a refused ``POST orders``."""
    if exc.http_status == 409:
        if exc.upstream_code == _UPSTREAM_INVALID_ORDER_ID:
            return ErrorCode.DUPLICATE_ORDER_ID
        return ErrorCode.TERMINAL_BUSY
    if exc.code is ErrorCode.NOT_FOUND:  # the order is new: what was not found is the terminal
        return ErrorCode.UNKNOWN_TERMINAL
    return exc.code


def _refund_refusal(exc: ApiError) -> ErrorCode:
    """The till's error code for a refused or failed refund (or its ``GET``)."""
    if exc.code in (ErrorCode.NOT_FOUND, ErrorCode.UNAUTHORIZED, ErrorCode.UPSTREAM_UNAVAILABLE):
        return exc.code
    return ErrorCode.NOT_REFUNDABLE


StartSession = Callable[[SessionRecord, OrderState | None, str | None], Awaitable[bool]]


class CommandHandlers:
    def __init__(
        self,
        config: Config,
        redis: Redis,
        ctx: SessionContext,
        start_session: StartSession,
        running: Callable[[str], bool],
        directory: TerminalDirectory,
    ) -> None:
        self.config = config
        self.directory = directory
        self.redis = redis
        self.ctx = ctx
        self.keys = ctx.store.keys
        self._start_session = start_session
        self._running = running
        self._ttl = config.redis.order_ttl

    # -- entry point ----------------------------------------------------------------------------

    async def handle(self, entry_id: str, fields: dict[str, str]) -> None:
        raw = fields.get("command")
        if raw is None:
            await self._dead_letter(entry_id, fields, "entry has no 'command' field")
            return
        try:
            command = parse_command(raw)
        except InvalidCommand as exc:
            await self._invalid(entry_id, raw, exc)
            return
        command_id = command.command_id or entry_id
        age = time.time() - int(entry_id.split("-")[0]) / 1000
        if age > COMMAND_MAX_AGE and isinstance(command, PayCommand):
            await self._pay_failed(
                command,
                command_id,
                command.order_id or derive_order_id(command_id),
                ErrorCode.INVALID_COMMAND,
                f"command waited {age:.0f} s in the queue "
                f"(more than {COMMAND_MAX_AGE:.0f} s): not started",
            )
            return
        bound = log.bind(command_id=command_id, terminal_id=command.terminal, type=command.type)
        bound.info(
            "command.received",
            order_id=getattr(command, "order_id", None)
            or (derive_order_id(command_id) if isinstance(command, PayCommand) else None),
        )
        if not await self._claim_command_id(command, command_id):
            return
        if isinstance(command, PayCommand):
            await self.pay(command, command_id)  # replays are told apart by the order's state
            return
        # A cancel, refund or watch is done once: "running" while a daemon handles it (expires,
        # so a daemon that died mid-way does not block the replay), then "done".
        progress = self.keys.command_record(command_id) + ":done"
        running_for = int(2 * self.config.multisafepay.request_timeout + 10)
        if not await self.redis.set(progress, "running", nx=True, ex=running_for):
            if await self.redis.get(progress) == "done":
                bound.info("command.replay", note="already done")
                return
            raise LeaveUnacknowledged(f"command {command_id} is being handled already")
        if isinstance(command, CancelCommand):
            await self.cancel(command, command_id)
        elif isinstance(command, RefundCommand):
            await self.refund(command, command_id)
        else:
            await self.watch(command, command_id)
        await self.redis.set(progress, "done", ex=int(self._ttl))

    async def _claim_command_id(
        self, command: PayCommand | CancelCommand | RefundCommand | WatchCommand, command_id: str
    ) -> bool:
        """Record the command's fingerprint; False if its id was used for another command."""
        fingerprint = command_fingerprint(command)
        previous = await self.redis.set(
            self.keys.command_record(command_id), fingerprint, nx=True, ex=int(self._ttl), get=True
        )
        if previous is None or previous == fingerprint:
            return True
        await self._command_failed(
            command.terminal,
            command_id,
            getattr(command, "order_id", None),
            ErrorCode.INVALID_COMMAND,
            f"command_id {command_id} was already used for a different command",
            once=f"{command_id}:{fingerprint[:16]}",
        )
        return False

    # -- failures -------------------------------------------------------------------------------

    async def _invalid(self, entry_id: str, raw: str, exc: InvalidCommand) -> None:
        command_id = exc.command_id or entry_id
        if exc.terminal_id is None:
            await self._dead_letter(entry_id, {"command": raw}, exc.message)
            return
        if exc.command_type == "pay":
            order_id = exc.order_id or derive_order_id(command_id)
            await self._fail_order(
                exc.terminal_id,
                command_id,
                order_id,
                None,
                None,
                ErrorCode.INVALID_COMMAND,
                exc.message,
            )
        else:
            await self._command_failed(
                exc.terminal_id, command_id, exc.order_id, ErrorCode.INVALID_COMMAND, exc.message
            )

    async def _dead_letter(self, entry_id: str, fields: dict[str, str], reason: str) -> None:
        await dead_letter(self.redis, self.keys, entry_id, fields, reason)

    async def give_up(self, entry_id: str, fields: dict[str, str], reason: str) -> None:
        """A command that will not be handled (a poison command): answered ``command.failed``
        where it names a terminal, and dead-lettered with ``reason``."""
        found = readable_part(fields.get("command") or "", reason)
        if found.terminal_id is not None:
            command_id = found.command_id or entry_id
            await self._command_failed(
                found.terminal_id,
                command_id,
                found.order_id,
                ErrorCode.INVALID_COMMAND,
                reason,
                once=f"{command_id}:dead",
            )
        await self._dead_letter(entry_id, fields, reason)

    async def _command_failed(
        self,
        terminal: str,
        command_id: str,
        order_id: str | None,
        code: ErrorCode,
        message: str,
        *,
        once: str | None = None,
    ) -> None:
        event = Event(
            event_id=make_event_id(command_id, EventType.COMMAND_FAILED, code),
            type=EventType.COMMAND_FAILED,
            terminal_id=canonical_terminal_id(terminal),
            order_id=order_id,
            command_id=command_id,
            source=Source.BRIDGE,
            received_at=utcnow(),
            error=EventError(code=code, message=message),
        )
        marker = self.keys.command_record(once or command_id) + ":failed"
        await self.ctx.store.announce(event, marker)
        log.warning(
            "command.failed",
            command_id=command_id,
            terminal_id=event.terminal_id,
            order_id=order_id,
            code=code,
            message=message,
        )

    async def _fail_order(
        self,
        terminal: str,
        command_id: str,
        order_id: str,
        amount: int | None,
        currency: str | None,
        code: ErrorCode,
        message: str,
    ) -> None:
        """``order.failed`` for a pay that never became a payment, unless the order id belongs
        to another command's order: that one must not be touched (``command.failed``)."""

        def decide(state: OrderState | None) -> Decision:
            if state is not None and state.command_id != command_id:
                return Decision(Verdict.CONFLICT, state)
            return order_failed(
                state,
                order_id=order_id,
                terminal_id=terminal,
                command_id=command_id,
                amount=amount,
                currency=currency,
                code=code,
                message=message,
                now=utcnow(),
            )

        recorded = await self.ctx.store.record(order_id, decide)
        if recorded.decision.verdict is Verdict.CONFLICT:
            await self._command_failed(
                terminal,
                command_id,
                order_id,
                ErrorCode.DUPLICATE_ORDER_ID,
                f"order id {order_id} belongs to another payment",
            )
            return
        log.warning(
            "order.failed",
            command_id=command_id,
            terminal_id=canonical_terminal_id(terminal),
            order_id=order_id,
            code=code,
            message=message,
        )

    async def _pay_failed(
        self, command: PayCommand, command_id: str, order_id: str, code: ErrorCode, message: str
    ) -> None:
        await self._fail_order(
            command.terminal_id,
            command_id,
            order_id,
            command.amount,
            command.currency,
            code,
            message,
        )

    # -- pay ------------------------------------------------------------------------------------

    def _route(self, terminal_id: str) -> tuple[TerminalGroup, str] | None:
        """The terminal's group, and its ID as MultiSafepay knows it."""
        return self.directory.route(terminal_id)

    async def _route_or_fail(
        self, terminal_id: str, answer_to: str, command_id: str, order_id: str
    ) -> tuple[TerminalGroup, str] | None:
        """``_route``, or a ``command.failed`` (``unknown_terminal``) to ``answer_to``."""
        route = self._route(terminal_id)
        if route is None:
            await self._command_failed(
                answer_to,
                command_id,
                order_id,
                ErrorCode.UNKNOWN_TERMINAL,
                f"terminal {canonical_terminal_id(terminal_id)} is in no configured terminal group",
            )
        return route

    async def pay(self, command: PayCommand, command_id: str) -> None:
        order_id = command.order_id or derive_order_id(command_id)
        state = await self.ctx.store.load(order_id)
        if state is not None:
            if state.command_id == command_id:  # a replay: already handled
                if not state.final and not self._running(order_id):
                    record = await self.ctx.registry.load(order_id)
                    if record is not None:
                        await self._start_session(record, state, None)
                return
            await self._command_failed(
                command.terminal,
                command_id,
                order_id,
                ErrorCode.DUPLICATE_ORDER_ID,
                f"order id {order_id} is already used by another payment",
            )
            return
        route = self._route(command.terminal_id)
        if route is None:
            await self._pay_failed(
                command,
                command_id,
                order_id,
                ErrorCode.UNKNOWN_TERMINAL,
                f"terminal {command.terminal} is in no configured terminal group",
            )
            return
        group, upstream_terminal = route
        busy_with = await self._busy_with(command.terminal, order_id)
        if busy_with:
            await self._pay_failed(
                command,
                command_id,
                order_id,
                ErrorCode.TERMINAL_BUSY,
                f"terminal {command.terminal} is busy with order {busy_with}",
            )
            return
        fence = await self.ctx.leases.acquire(order_id)
        if fence is None:  # another daemon holds this very order (the same command, replayed)
            raise LeaveUnacknowledged(f"order {order_id} is being handled by another daemon")
        now = time.time()
        record = SessionRecord(
            order_id=order_id,
            terminal_id=upstream_terminal,
            group=group.name,
            command_id=command_id,
            created_at=now,
            deadline=now + self.config.multisafepay.max_payment_age,
        )
        await self.ctx.registry.save(record)  # the intent, before anything happens upstream
        try:
            outcome = await self._create_or_find(command, order_id, upstream_terminal, group)
        except PayFailed as exc:
            await self.ctx.registry.remove(order_id)
            await self._pay_failed(command, command_id, order_id, exc.code, exc.message)
            await self.ctx.leases.release(order_id, fence)
            return
        except OutcomeUnknown as exc:
            log.error(
                "order.unknown",
                order_id=order_id,
                command_id=command_id,
                error=str(exc),
                note="left unacknowledged; retried later",
            )
            await self.ctx.leases.release(order_id, fence)  # whoever adopts it asks GET again
            raise
        # The payment exists upstream: from here nothing may be lost to a Redis outage.
        waiters = self.ctx.redis_waiters
        if isinstance(outcome, CreatedOrder):
            record = record.with_changes(
                created=True,
                session_id=outcome.session_id,
                events_token=outcome.events_token,
                events_stream_url=outcome.events_stream_url,
                events_url=outcome.events_url,
            )
        else:  # found by GET after an uncertain create: no token, so the session polls
            record = record.with_changes(created=True, session_id=outcome.get("session_id"))
        await waiters.call(lambda: self.ctx.registry.save(record), what="a created order")
        created = await waiters.call(
            lambda: self.ctx.store.record(
                order_id,
                lambda st: (
                    order_created(
                        order_id=order_id,
                        terminal_id=command.terminal_id,
                        command_id=command_id,
                        amount=command.amount,
                        currency=command.currency,
                        session_id=record.session_id,
                        now=utcnow(),
                    )
                    if st is None
                    else Decision(Verdict.DUPLICATE, st)
                ),
                fence=fence,
            ),
            what="a created order",
        )
        state = created.decision.state
        log.info(
            "order.created",
            order_id=order_id,
            command_id=command_id,
            terminal_id=command.terminal,
            amount=command.amount,
            group=group.name,
        )
        if not isinstance(outcome, CreatedOrder):
            state = await record_found_order(self.ctx, record, outcome) or state
        await self._start_session(record, state, fence)
        pending = text(await self.redis.getdel(self.keys.pending_cancel(order_id)))
        if pending:
            log.info("cancel.applied_late", order_id=order_id, command_id=pending)
            await self._cancel_upstream(command.terminal, pending, order_id, group)

    async def _busy_with(self, terminal: str, order_id: str) -> str | None:
        active = text(await self.redis.get(self.keys.terminal_active(terminal)))
        if not active or active == order_id:
            return None
        state = await self.ctx.store.load(active)
        return active if state is not None and not state.final else None

    async def _create_or_find(
        self, command: PayCommand, order_id: str, terminal: str, group: TerminalGroup
    ) -> CreatedOrder | dict[str, Any]:
        """Create the order; after an uncertain failure, find out with GET whether it exists."""
        api, key = self.ctx.api, group.key.get_secret_value()
        backoff = self.ctx.backoff()
        attempts = self.config.multisafepay.create_retries + 1
        uncertain = False
        for attempt in range(attempts):
            if uncertain:
                found = await self._find(order_id, key)
                if found is not None:
                    return found
            try:
                return await api.create_order(
                    key,
                    order_id=order_id,
                    terminal_id=terminal,
                    amount=command.amount,
                    currency=command.currency,
                    description=command.description,
                    notification_url=self.config.webhook.notification_url(group.name),
                )
            except ApiError as exc:
                if exc.http_status == 409 or (
                    uncertain and exc.http_status is not None and exc.http_status < 500
                ):
                    # refused as busy or duplicate: if our earlier attempt made it, GET finds it
                    found = await self._find(order_id, key)
                    if found is not None:
                        return found
                if (
                    exc.maybe_done
                    or exc.http_status == 429
                    or exc.code is ErrorCode.UPSTREAM_UNAVAILABLE
                ):
                    uncertain = uncertain or exc.maybe_done
                    log.warning(
                        "order.create_retry",
                        order_id=order_id,
                        attempt=attempt + 1,
                        error=exc.message,
                        uncertain=uncertain,
                    )
                    metrics.UPSTREAM_ERRORS.labels("create_retry").inc()
                    if attempt + 1 < attempts:
                        await anyio.sleep(backoff.next())
                        continue
                    if uncertain:
                        found = await self._find(order_id, key)
                        if found is not None:
                            return found
                    raise PayFailed(
                        ErrorCode.UPSTREAM_UNAVAILABLE,
                        f"MultiSafepay did not create the order: {exc.message}",
                    ) from exc
                raise PayFailed(_create_refusal(exc), exc.message) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _find(self, order_id: str, key: str) -> dict[str, Any] | None:
        """GET the order: its data, None if it certainly does not exist; raises when unknown."""
        backoff = self.ctx.backoff()
        for _ in range(self.config.multisafepay.create_retries + 3):
            try:
                return await self.ctx.api.get_order(key, order_id)
            except ApiError as exc:
                if exc.code is ErrorCode.NOT_FOUND:
                    return None
                log.warning("order.lookup_failed", order_id=order_id, error=exc.message)
                metrics.UPSTREAM_ERRORS.labels("lookup_failed").inc()
                await anyio.sleep(backoff.next())
        raise OutcomeUnknown(f"could not learn from MultiSafepay whether order {order_id} exists")

    # -- cancel, refund, watch ------------------------------------------------------------------

    async def cancel(self, command: CancelCommand, command_id: str) -> None:
        order_id = command.order_id
        state = await self.ctx.store.load(order_id)
        if state is None:
            # The pay may still be on its way (commands are handled concurrently): remember.
            await self.redis.set(
                self.keys.pending_cancel(order_id),
                command_id,
                ex=int(self.config.multisafepay.max_payment_age),
            )
            log.info("cancel.remembered", order_id=order_id, command_id=command_id)
            return
        if state.final:
            await self._command_failed(
                command.terminal,
                command_id,
                order_id,
                ErrorCode.NOT_CANCELLABLE,
                f"order {order_id} is already {state.status or 'failed'}",
            )
            return
        route = await self._route_or_fail(state.terminal_id, command.terminal, command_id, order_id)
        if route is None:
            return
        await self._cancel_upstream(command.terminal, command_id, order_id, route[0])

    async def _cancel_upstream(
        self, terminal: str, command_id: str, order_id: str, group: TerminalGroup
    ) -> None:
        key = group.key.get_secret_value()
        try:
            await self.ctx.api.cancel_order(key, order_id)
        except ApiError as exc:
            code = (
                exc.code
                if exc.code
                in (ErrorCode.NOT_FOUND, ErrorCode.UNAUTHORIZED, ErrorCode.UPSTREAM_UNAVAILABLE)
                else ErrorCode.NOT_CANCELLABLE
            )
            await self._command_failed(terminal, command_id, order_id, code, exc.message)
            return
        log.info("order.cancel_requested", order_id=order_id, command_id=command_id)
        await self._confirm(order_id, key, terminal)

    async def _confirm(self, order_id: str, key: str, terminal: str) -> None:
        """Publish what ``GET`` says now (the outcome of a cancel or refund, confirmed)."""
        as_of = utcnow()
        try:
            obs = from_order(
                await self.ctx.api.get_order(key, order_id), Source.POLL, self.ctx.tz, as_of=as_of
            )
        except (ApiError, MalformedPayload) as exc:
            log.warning("order.confirm_failed", order_id=order_id, error=str(exc))
            return
        await self.ctx.store.record(
            order_id, lambda st: observe(st, obs, utcnow(), terminal_id=terminal)
        )

    async def refund(self, command: RefundCommand, command_id: str) -> None:
        """Refund (part of) a completed order. Upstream's own numbers (``GET``) decide what
        remains, and a replayed command (at-least-once delivery) never refunds twice: before
        the ``POST`` the amount already refunded is stored under the command's id; a replay
        that finds upstream's amount grew since only confirms what happened."""
        order_id = command.order_id
        state = await self.ctx.store.load(order_id)
        terminal_id = state.terminal_id if state else command.terminal_id
        route = await self._route_or_fail(terminal_id, command.terminal, command_id, order_id)
        if route is None:
            return
        if state is not None and state.status != "completed":
            await self._command_failed(
                command.terminal,
                command_id,
                order_id,
                ErrorCode.NOT_REFUNDABLE,
                f"order {order_id} is {state.status or 'failed'}, not completed",
            )
            return
        key = route[0].key.get_secret_value()
        terminal = state.terminal_id if state else command.terminal_id
        try:
            order = await self.ctx.api.get_order(key, order_id)
        except ApiError as exc:
            await self._command_failed(
                command.terminal, command_id, order_id, _refund_refusal(exc), exc.message
            )
            return
        charged, refunded = order.get("amount"), order.get("amount_refunded") or 0
        upstream_status = str(order.get("status") or "").lower()
        if (
            upstream_status not in ("completed", "partial_refunded", "refunded")
            or not isinstance(charged, int)
            or not isinstance(refunded, int)
        ):
            await self._command_failed(
                command.terminal,
                command_id,
                order_id,
                ErrorCode.NOT_REFUNDABLE,
                f"order {order_id} is {upstream_status or 'unknown'}, not completed",
            )
            return
        marker = self.keys.command_record(command_id) + ":refund"
        before = await self.redis.set(marker, refunded, nx=True, ex=int(self._ttl), get=True)
        if before is not None and refunded > int(before):
            log.info(
                "refund.replay",
                order_id=order_id,
                command_id=command_id,
                note="already refunded; confirming only",
            )
            await self._confirm(order_id, key, terminal)
            return
        remaining = charged - refunded
        amount = command.amount if command.amount is not None else remaining
        if remaining <= 0 or amount > remaining:
            await self._command_failed(
                command.terminal,
                command_id,
                order_id,
                ErrorCode.NOT_REFUNDABLE,
                f"order {order_id}: {remaining} cents remain to refund, not {amount}"
                if remaining > 0
                else f"order {order_id} is already fully refunded",
            )
            return
        currency = str(order.get("currency") or (state.currency if state else None) or "EUR")
        try:
            await self.ctx.api.refund_order(
                key, order_id, amount=amount, currency=currency, description=command.description
            )
        except ApiError as exc:
            if exc.maybe_done:  # it may have happened: GET tells, and publishes it if so
                await self._confirm(order_id, key, terminal)
                after = await self.ctx.store.load(order_id)
                if after is not None and after.amount_refunded > refunded:
                    return
            await self._command_failed(
                command.terminal, command_id, order_id, _refund_refusal(exc), exc.message
            )
            return
        log.info("order.refund_requested", order_id=order_id, command_id=command_id, amount=amount)
        await self._confirm(order_id, key, terminal)

    async def watch(self, command: WatchCommand, command_id: str) -> None:
        order_id = command.order_id
        upstream = self.config.multisafepay
        token = command.events_token.get_secret_value()
        refusal = refuse_watch(
            token,
            token_claims(token),
            (command.events_stream_url, command.events_url),
            upstream.api_base_url,
            upstream.events_hosts,
        )
        if refusal:  # before any connection, and before the session registry hears of it
            await self._command_failed(
                command.terminal, command_id, order_id, ErrorCode.INVALID_COMMAND, refusal
            )
            return
        route = await self._route_or_fail(
            command.terminal_id, command.terminal, command_id, order_id
        )
        if route is None:
            return
        state = await self.ctx.store.load(order_id)
        if self._running(order_id) or (state is not None and state.final):
            return  # already followed, or already over
        now = time.time()
        record = SessionRecord(
            order_id=order_id,
            terminal_id=route[1],
            group=route[0].name,
            command_id=command_id,
            created_at=now,
            deadline=now + upstream.max_payment_age,
            created=True,
            cancel_when_late=False,
            events_token=command.events_token.get_secret_value(),
            events_stream_url=command.events_stream_url,
            events_url=command.events_url,
        )
        await self.ctx.registry.save(record)
        log.info(
            "order.watch", order_id=order_id, command_id=command_id, terminal_id=command.terminal
        )
        await self._start_session(record, state, None)
