"""The answers every command handler gives: ``command.failed``, ``order.failed``, dead
letters, and publishing what ``GET`` says of an order. Shared by the handlers of
:mod:`bridge.daemon.handlers`, :mod:`bridge.daemon.pay_command` and
:mod:`bridge.daemon.order_commands`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from redis.asyncio import Redis

from bridge.core.events import ErrorCode, Event, EventError, EventType, Source, make_event_id
from bridge.core.normalize import MalformedPayload, canonical_terminal_id, from_order
from bridge.core.order_commands import Refusal, upstream_error_code
from bridge.core.state import (
    Decision,
    OrderState,
    Verdict,
    cancel_requested,
    observe,
    order_failed,
    utcnow,
)
from bridge.daemon.intake import dead_letter
from bridge.multisafepay.api import ApiError
from bridge.redis.registry import SessionRecord

if TYPE_CHECKING:
    from bridge.config import Config, TerminalGroup
    from bridge.daemon.payment import SessionContext
    from bridge.daemon.terminals import TerminalDirectory

log = structlog.get_logger("bridge.commands")

StartSession = Callable[[SessionRecord, OrderState | None, str | None], Awaitable[bool]]


def pending_cancel(raw: Any) -> tuple[str, str] | None:
    """(sender's terminal, command id) of a remembered cancel's value, if it is one."""
    if not raw or not isinstance(raw, str):  # nothing remembered, or an error reply
        return None
    terminal, _, command_id = raw.partition(" ")
    return (terminal, command_id) if command_id else None


class Answers:
    """What the handlers share: the daemon's parts, and the ways to answer a command."""

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

    async def _dead_letter(self, entry_id: str, fields: dict[str, str], reason: str) -> None:
        await dead_letter(self.redis, self.keys, entry_id, fields, reason)

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
        """``command.failed`` on ``terminal``'s channel (the sender's), once per ``once``."""
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

    async def _refuse(
        self, terminal: str, command_id: str, order_id: str | None, refusal: Refusal
    ) -> None:
        await self._command_failed(terminal, command_id, order_id, refusal.code, refusal.message)

    async def _upstream_failed(
        self, terminal: str, command_id: str, order_id: str, exc: ApiError, refused: ErrorCode
    ) -> None:
        """``command.failed`` for a cancel or refund MultiSafepay did not do."""
        code = upstream_error_code(exc.code, refused)
        await self._command_failed(terminal, command_id, order_id, code, exc.message)

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
        await self._answer_waiting_cancel(order_id, f"order {order_id} failed: {message}")

    async def _answer_waiting_cancel(self, order_id: str, why: str) -> None:
        """A cancel remembered for a pay that has just failed: answered (nothing to cancel)."""
        pending = await self.take_pending_cancel(order_id)
        if pending is not None:
            terminal, cancel_id = pending
            await self._command_failed(
                terminal, cancel_id, order_id, ErrorCode.NOT_CANCELLABLE, why
            )

    async def remember_cancel(
        self, order_id: str, terminal: str, command_id: str, until: float
    ) -> None:
        """Keep a cancel for ``order_id`` until its pay is handled, or until ``until`` (unix
        time): then :meth:`OrderCommands.sweep_cancels` answers it."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(
                self.keys.pending_cancel(order_id),
                f"{canonical_terminal_id(terminal)} {command_id}",
                ex=int(self._ttl),
            )
            pipe.zadd(self.keys.pending_cancels, {order_id: until})
            await pipe.execute()

    async def take_pending_cancel(self, order_id: str) -> tuple[str, str] | None:
        """(sender's terminal, command id) of a cancel waiting for ``order_id``, taken."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.getdel(self.keys.pending_cancel(order_id))
            pipe.zrem(self.keys.pending_cancels, order_id)
            raw, _ = await pipe.execute()
        return pending_cancel(raw)

    def take_pending_cancel_commands(self, order_id: str) -> list[tuple[str, ...]]:
        """:meth:`take_pending_cancel` as commands to send in another round trip (the reply
        of the last one is the cancel's, for :func:`pending_cancel`). Not in MULTI: the index
        entry goes first, so a cancel remembered between the two is taken whole, and one
        remembered after both keeps its entry."""
        return [
            ("ZREM", self.keys.pending_cancels, order_id),
            ("GETDEL", self.keys.pending_cancel(order_id)),
        ]

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

    async def _confirm(
        self, order_id: str, key: str, terminal: str, refund_command_id: str | None = None
    ) -> OrderState | None:
        """Publish what ``GET`` says now (the outcome of a cancel or refund, confirmed).
        Returns the order's state after it, or None when ``GET`` failed. ``refund_command_id``:
        the refund command a first refund of an order the bridge never saw answers."""
        as_of = utcnow()
        try:
            obs = from_order(
                await self.ctx.api.get_order(key, order_id), Source.POLL, self.ctx.tz, as_of=as_of
            )
        except (ApiError, MalformedPayload) as exc:
            log.warning("order.confirm_failed", order_id=order_id, error=str(exc))
            return None
        recorded = await self.ctx.store.record(
            order_id,
            lambda st: observe(
                st, obs, utcnow(), terminal_id=terminal, refund_command_id=refund_command_id
            ),
        )
        return recorded.decision.state

    async def _cancel_upstream(
        self, terminal: str, command_id: str, order_id: str, group: TerminalGroup
    ) -> None:
        """Ask MultiSafepay to cancel the order, then publish what ``GET`` says of it."""
        key = group.key.get_secret_value()
        # the order's final, from whichever channel, names this cancel
        await self.ctx.store.record(order_id, lambda st: cancel_requested(st, command_id))
        try:
            await self.ctx.api.cancel_order(key, order_id)
        except ApiError as exc:
            await self._upstream_failed(
                terminal, command_id, order_id, exc, ErrorCode.NOT_CANCELLABLE
            )
            return
        log.info("order.cancel_requested", order_id=order_id, command_id=command_id)
        await self._confirm(order_id, key, terminal)
