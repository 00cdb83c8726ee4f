"""What a ``cancel``, ``refund`` or ``watch`` does. Every decision is taken by the pure planners
of :mod:`bridge.core.order_commands`; this module performs it (Redis, MultiSafepay) and
answers on the sender's terminal."""

from __future__ import annotations

import json
import time
from typing import Any

import structlog

from bridge.core.commands import (
    CancelCommand,
    RefundCommand,
    WatchCommand,
    derive_order_id,
)
from bridge.core.events import ErrorCode
from bridge.core.order_commands import (
    ConfirmOnly,
    Refusal,
    never_arrived,
    plan_cancel,
    plan_refund,
    read_refundable,
    refund_precheck,
)
from bridge.core.state import refund_abandoned, refund_requested
from bridge.core.watch import refuse_watch
from bridge.daemon.answers import Answers
from bridge.multisafepay.api import ApiError
from bridge.multisafepay.tokens import token_claims
from bridge.redis.registry import SessionRecord

log = structlog.get_logger("bridge.commands")

#: A command older than this is not started: a till that gave up must not charge a customer now.
COMMAND_MAX_AGE = 300.0
#: How long a cancel for an order nobody has asked to pay waits for its pay (a till may
#: write the cancel first; commands are handled concurrently).
CANCEL_GRACE = 10.0
#: How many commands a cancel for an unknown order looks through for its pay.
_PAY_SEARCH_LIMIT = 5000


def pay_order_id(raw: str) -> str | None:
    """The order id a ``pay`` entry would create (None for anything else). Tolerant: the pay
    itself is parsed (and answered) by its own handler."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("type") != "pay":
        return None
    order_id, command_id = data.get("order_id"), data.get("command_id")
    if isinstance(order_id, str):
        return order_id.strip()
    return derive_order_id(command_id) if isinstance(command_id, str) else None


class OrderCommands(Answers):
    #: How long a cancel for an unknown order waits for a pay that is not in the stream yet.
    cancel_grace: float = CANCEL_GRACE

    # -- cancel ---------------------------------------------------------------------------------

    async def cancel(self, command: CancelCommand, command_id: str) -> None:
        order_id = command.order_id
        state = await self.ctx.store.load(order_id)
        if state is None:
            await self._cancel_unknown(command, command_id)
            return
        refusal = plan_cancel(state, command.terminal)
        if refusal is not None:
            await self._refuse(command.terminal, command_id, order_id, refusal)
            return
        route = await self._route_or_fail(state.terminal_id, command.terminal, command_id, order_id)
        if route is None:
            return
        await self._cancel_upstream(command.terminal, command_id, order_id, route[0])

    async def _cancel_unknown(self, command: CancelCommand, command_id: str) -> None:
        """A cancel for an order the bridge has not seen: its pay may still be on its way
        (commands are handled concurrently, a till may even send the cancel first). It is
        remembered, applied when the pay creates the order, answered when the pay fails, and
        answered ``not_found`` by :meth:`sweep_cancels` once no pay for it can arrive."""
        order_id = command.order_id
        until = time.time() + self.cancel_grace
        waiting = await self._pay_waiting(order_id)
        if waiting is not None:
            until = max(until, waiting + COMMAND_MAX_AGE)
        await self.remember_cancel(order_id, command.terminal, command_id, until)
        log.info("cancel.remembered", order_id=order_id, command_id=command_id)
        if await self.ctx.store.load(order_id) is not None:  # the pay was done meanwhile
            await self._cancel_remembered(order_id)

    async def _cancel_remembered(self, order_id: str) -> None:
        """Carry out (or refuse) the cancel remembered for ``order_id``, if still there."""
        pending = await self.take_pending_cancel(order_id)
        if pending is None:
            return  # the pay's handler took it
        terminal, cancel_id = pending
        if await self.ctx.store.load(order_id) is None:
            if await self.ctx.registry.load(order_id) is not None:  # its pay is creating it
                await self.remember_cancel(order_id, terminal, cancel_id, time.time() + 1)
                return
            await self._refuse(terminal, cancel_id, order_id, never_arrived(order_id))
            return
        cancel = CancelCommand(type="cancel", terminal_id=terminal, order_id=order_id)
        await self.cancel(cancel, cancel_id)

    async def sweep_cancels(self) -> int:
        """Answer the remembered cancels whose time is up. Returns how many."""
        due = await self.redis.zrangebyscore(self.keys.pending_cancels, "-inf", time.time())
        for order_id in due:
            known = await self.ctx.store.load(str(order_id)) is not None
            waiting = None if known else await self._pay_waiting(str(order_id))
            if waiting is not None and waiting + COMMAND_MAX_AGE > time.time():
                await self.redis.zadd(
                    self.keys.pending_cancels, {str(order_id): waiting + COMMAND_MAX_AGE}
                )
                continue
            await self._cancel_remembered(str(order_id))
        return len(due)

    async def _pay_waiting(self, order_id: str) -> float | None:
        """When (unix time) the latest pay for ``order_id`` recent enough to be started was
        written to the commands stream; None if there is none."""
        since_ms = int(time.time() * 1000) - int(COMMAND_MAX_AGE * 1000)
        entries: list[Any] = (
            await self.redis.xrevrange(
                self.keys.commands, max="+", min=str(since_ms), count=_PAY_SEARCH_LIMIT
            )
            or []
        )
        for entry in entries:
            if pay_order_id(str(entry[1].get("command", ""))) == order_id:
                return int(str(entry[0]).split("-")[0]) / 1000
        return None

    # -- refund ---------------------------------------------------------------------------------

    async def refund(self, command: RefundCommand, command_id: str) -> None:
        """Refund (part of) a completed order. Upstream's own numbers (``GET``) decide what
        remains, and a replayed command (at-least-once delivery) never refunds twice: before
        the ``POST`` the amount already refunded is stored under the command's id; a replay
        that finds upstream's amount grew since only confirms what happened. The refund's
        ``order.refund`` carries this command's id, whichever channel brings it first."""
        order_id, sender = command.order_id, command.terminal
        state = await self.ctx.store.load(order_id)
        refusal = refund_precheck(state, sender, order_id)
        if refusal is not None:
            await self._refuse(sender, command_id, order_id, refusal)
            return
        terminal = state.terminal_id if state else command.terminal_id
        route = await self._route_or_fail(terminal, sender, command_id, order_id)
        if route is None:
            return
        key = route[0].key.get_secret_value()
        try:
            order = await self.ctx.api.get_order(key, order_id)
        except ApiError as exc:
            await self._upstream_failed(sender, command_id, order_id, exc, ErrorCode.NOT_REFUNDABLE)
            return
        upstream = read_refundable(order_id, order)
        if isinstance(upstream, Refusal):
            await self._refuse(sender, command_id, order_id, upstream)
            return
        marker = self.keys.command_record(command_id) + ":refund"
        before = await self.redis.set(
            marker, upstream.refunded, nx=True, ex=int(self._ttl), get=True
        )
        plan = plan_refund(
            order_id, upstream, command.amount, None if before is None else int(before)
        )
        if isinstance(plan, Refusal):
            await self._refuse(sender, command_id, order_id, plan)
            return
        if isinstance(plan, ConfirmOnly):
            log.info(
                "refund.replay",
                order_id=order_id,
                command_id=command_id,
                note="already refunded; confirming only",
            )
            await self._confirm(order_id, key, terminal, command_id)
            return
        if state is not None:  # the next order.refund, from any channel, answers this command
            await self.ctx.store.record(order_id, lambda st: refund_requested(st, command_id))
        currency = upstream.currency or (state.currency if state else None) or "EUR"
        try:
            await self.ctx.api.refund_order(
                key,
                order_id,
                amount=plan.amount,
                currency=currency,
                description=command.description,
            )
        except ApiError as exc:
            if exc.maybe_done:  # it may have happened: GET tells, and publishes it if so
                after = await self._confirm(order_id, key, terminal, command_id)
                if after is not None and after.amount_refunded > upstream.refunded:
                    return
            await self.ctx.store.record(order_id, lambda st: refund_abandoned(st, command_id))
            await self._upstream_failed(sender, command_id, order_id, exc, ErrorCode.NOT_REFUNDABLE)
            return
        log.info(
            "order.refund_requested", order_id=order_id, command_id=command_id, amount=plan.amount
        )
        await self._confirm(order_id, key, terminal, command_id)

    # -- watch ----------------------------------------------------------------------------------

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
