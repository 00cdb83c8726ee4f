"""What a ``pay`` does: the order's intent in the registry, the create (retried, and found by
``GET`` after an uncertain failure, as :func:`bridge.core.order_commands.plan_create_failure`
decides), ``order.created``, and the session that follows the payment."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from redis.exceptions import RedisError

from bridge import metrics
from bridge.core.commands import AnyCommand, PayCommand, command_fingerprint, derive_order_id
from bridge.core.events import ErrorCode
from bridge.core.order_commands import plan_create_failure, wrong_terminal
from bridge.core.state import Decision, OrderState, Verdict, order_created, utcnow
from bridge.daemon.answers import Answers, pending_cancel
from bridge.daemon.intake import LeaveUnacknowledged
from bridge.daemon.ownership import record_found_order
from bridge.multisafepay.api import ApiError, CreatedOrder
from bridge.redis.client import text
from bridge.redis.publisher import After, Recorded
from bridge.redis.registry import SessionRecord

if TYPE_CHECKING:
    from bridge.config import TerminalGroup

log = structlog.get_logger("bridge.commands")


def _taken(takes: list[After]) -> tuple[str, str] | None:
    """The cancel taken by one of a commit's tries (``After`` of its take), if any."""
    for take in takes:
        pending = pending_cancel(take.replies[-1]) if take.replies else None
        if pending is not None:
            return pending
    return None


class PayFailed(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class OutcomeUnknown(LeaveUnacknowledged):
    """MultiSafepay could not say whether an order exists: the command stays unacknowledged."""


@dataclass(frozen=True, slots=True)
class _FirstLook:
    """What a ``pay`` reads before it acts, in one round trip with the claim of its id (and
    the lease it was granted in that round trip, if any)."""

    previous: str | None  # the fingerprint its command id had, if any
    state: OrderState | None  # the order's, if it exists
    active: str | None  # the order in flight on the terminal, if any
    lease: str | None  # the token of the order's lease, if any
    fence: str | None = None  # the lease granted with the look (``Leases.open``), if any


class PayHandler(Answers):
    async def _command_id_claimed(
        self, command: AnyCommand, command_id: str, fingerprint: str, previous: str | None
    ) -> bool:
        """Whether the command id is this command's (``previous``: the fingerprint stored
        before, if any); if it was used for another command, that is answered here."""
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

    async def _first_look(
        self, command: PayCommand, command_id: str, order_id: str, fingerprint: str
    ) -> _FirstLook:
        """Claim the command id (``SET NX GET``) and read the order's state, the terminal's
        order in flight and the order's lease: four independent commands, one round trip.
        Nothing here is written but the claim. (For a pay on a terminal in no group: it takes
        no lease.)"""
        keys = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(
                keys.command_record(command_id), fingerprint, nx=True, ex=int(self._ttl), get=True
            )
            pipe.hget(keys.order_state(order_id), "state")
            pipe.get(keys.terminal_active(command.terminal))
            pipe.get(keys.lease(order_id))
            previous, raw_state, active, lease = await pipe.execute()
        return _FirstLook(
            previous=text(previous),
            state=OrderState.from_json(raw_state) if raw_state else None,
            active=text(active),
            lease=text(lease),
        )

    async def _first_look_and_lease(
        self, command: PayCommand, command_id: str, fingerprint: str, record: SessionRecord
    ) -> _FirstLook:
        """The first look and, when it finds the way clear (the command id free or this
        command's, no state, no lease, the terminal free), the order's lease granted with the
        payment's intent saved: one script (``Leases.open``), where it was two round trips."""
        look = await self.ctx.leases.open(
            record.order_id,
            (command_id, fingerprint, int(self._ttl)),
            command.terminal,
            self.ctx.registry.intent(record),
        )
        return _FirstLook(
            previous=look.previous,
            state=OrderState.from_json(look.state) if look.state else None,
            active=look.active,
            lease=look.lease,
            fence=look.token,
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

    async def pay(self, command: PayCommand, command_id: str) -> None:
        order_id = command.order_id or derive_order_id(command_id)
        fingerprint = command_fingerprint(command)
        route = self._route(command.terminal_id)
        record = None if route is None else self._record(command_id, order_id, route)
        if record is None:
            look = await self._first_look(command, command_id, order_id, fingerprint)
        else:  # the usual case: the first look takes the lease too, when the way is clear
            look = await self._first_look_and_lease(command, command_id, fingerprint, record)
        if not await self._command_id_claimed(command, command_id, fingerprint, look.previous):
            return
        state = look.state
        if state is not None:
            if state.command_id == command_id:  # a replay: already handled
                if not state.final and not self._running(order_id):
                    stored = await self.ctx.registry.load(order_id)
                    if stored is not None:
                        await self._start_session(stored, state, None)
                return
            await self._command_failed(
                command.terminal,
                command_id,
                order_id,
                ErrorCode.DUPLICATE_ORDER_ID,
                f"order id {order_id} is already used by another payment",
            )
            return
        if route is None or record is None:
            await self._pay_failed(
                command,
                command_id,
                order_id,
                ErrorCode.UNKNOWN_TERMINAL,
                f"terminal {command.terminal} is in no configured terminal group",
            )
            return
        group = route[0]
        fence = look.fence
        if fence is None:
            busy_with = await self._busy_with(command.terminal, order_id, look.active)
            if busy_with:
                await self._pay_failed(
                    command,
                    command_id,
                    order_id,
                    ErrorCode.TERMINAL_BUSY,
                    f"terminal {command.terminal} is busy with order {busy_with} "
                    "(that payment goes on)",
                )
                return
            # No lease at all: take it at once, without asking again who holds it, and save
            # the payment's intent with it (one script).
            if not look.lease:
                fence = await self.ctx.leases.acquire(order_id, self.ctx.registry.intent(record))
        saved = fence is not None
        fence = fence or await self._claim_lease(order_id)
        if fence is None:  # another daemon holds this very order (the same command, replayed)
            raise LeaveUnacknowledged(f"order {order_id} is being handled by another daemon")
        # The lease is renewed from here on with every other lease this daemon holds
        # (ownership: one round trip per tick), however long the create takes.
        await self._open(command, command_id, record, group, fence, saved=saved)

    def _record(
        self, command_id: str, order_id: str, route: tuple[TerminalGroup, str]
    ) -> SessionRecord:
        """The payment's intent, as the registry keeps it while the payment runs."""
        group, upstream_terminal = route
        now = time.time()
        return SessionRecord(
            order_id=order_id,
            terminal_id=upstream_terminal,
            group=group.name,
            command_id=command_id,
            created_at=now,
            deadline=now + self.config.multisafepay.max_payment_age,
        )

    async def _open(
        self,
        command: PayCommand,
        command_id: str,
        record: SessionRecord,
        group: Any,
        fence: str,
        *,
        saved: bool,
    ) -> None:
        """The payment's intent in the registry (unless ``saved`` with the lease), the create,
        ``order.created``, its session."""
        order_id, upstream_terminal = record.order_id, record.terminal_id
        if not saved:
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
        await self._created(command, command_id, order_id, record, outcome, fence)

    async def _created(
        self,
        command: PayCommand,
        command_id: str,
        order_id: str,
        record: SessionRecord,
        outcome: CreatedOrder | dict[str, Any],
        fence: str,
    ) -> None:
        """The payment exists upstream: from here nothing may be lost to a Redis outage."""
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
        # The record with its events token goes in the order.created commit's round trip,
        # just before it: a daemon that dies between the two still finds the token.
        saving = self.ctx.registry.save_commands(record)

        def created(st: OrderState | None) -> Decision:
            if st is not None:
                return Decision(Verdict.DUPLICATE, st)
            return order_created(
                order_id=order_id,
                terminal_id=command.terminal_id,
                command_id=command_id,
                amount=command.amount,
                currency=command.currency,
                session_id=record.session_id,
                now=utcnow(),
            )

        # The order had no state when the pay looked, and the lease is ours since: commit
        # without reading it again (a wrong guess costs the compare-and-set one more try).
        # A cancel remembered for it meanwhile is taken just after the commit, in its round
        # trip: the cancel's handler remembers, then looks for the order; this commits, then
        # looks for a cancel, so one of the two always sees the other.
        takes: list[After] = []

        def commit() -> Awaitable[Recorded]:
            takes.append(After(self.take_pending_cancel_commands(order_id)))
            return self.ctx.store.record(
                order_id,
                created,
                known=None,
                trust_known=True,
                fence=fence,
                also=saving,
                after=takes[-1],
            )

        try:
            recorded = await waiters.call(commit, what="a created order")
        except BaseException:
            await self._remember_again(order_id, takes)
            raise
        state = recorded.decision.state
        log.info(
            "order.created",
            order_id=order_id,
            command_id=command_id,
            terminal_id=command.terminal,
            amount=command.amount,
            group=record.group,
        )
        if not isinstance(outcome, CreatedOrder):
            state = await record_found_order(self.ctx, record, outcome) or state
        await self._start_session(record, state, fence)
        pending = _taken(takes)
        if pending is None and not any(t.replies for t in takes):
            pending = await self.take_pending_cancel(order_id)  # not read with the commit
        await self._apply_pending_cancel(pending, order_id, state)

    async def _remember_again(self, order_id: str, takes: list[After]) -> None:
        """A cancel taken with a commit that then failed goes back, answered by the sweep
        (as when the pay fails before its commit)."""
        pending = _taken(takes)
        if pending is not None:
            terminal, cancel_id = pending
            with anyio.CancelScope(shield=True):
                try:
                    await self.remember_cancel(order_id, terminal, cancel_id, time.time() + 1)
                except RedisError as exc:  # the failure itself goes on up; this is logged
                    log.error(
                        "cancel.unanswered",
                        order_id=order_id,
                        command_id=cancel_id,
                        error=str(exc),
                    )

    async def _apply_pending_cancel(
        self, pending: tuple[str, str] | None, order_id: str, state: OrderState | None
    ) -> None:
        if pending is None or state is None:
            return
        terminal, cancel_id = pending
        refusal = wrong_terminal(state, terminal)
        if refusal is not None:
            await self._refuse(terminal, cancel_id, order_id, refusal)
            return
        route = self._route(state.terminal_id)
        if route is not None:
            log.info("cancel.applied_late", order_id=order_id, command_id=cancel_id)
            await self._cancel_upstream(terminal, cancel_id, order_id, route[0])

    async def _claim_lease(self, order_id: str) -> str | None:
        """The order's lease, also from a daemon that is gone. This daemon's orphan scan may
        hold it for a moment (it found the pay's intent in the registry): wait for that."""
        leases = self.ctx.leases
        for _ in range(50):
            fence = await leases.claim(order_id)
            if fence is not None or not leases.held_here(await leases.holder(order_id)):
                return fence
            if self._running(order_id):
                return None
            await anyio.sleep(0.1)
        return None

    async def _busy_with(self, terminal: str, order_id: str, active: str | None) -> str | None:
        """The order in flight on ``terminal`` (``active``: its ``:active`` key), if another
        one is. Before refusing, MultiSafepay is asked (``GET``): a payment that ended while
        nobody listened (its daemon was killed, its stream not yet caught up) is published, and
        does not refuse the next customer. One no live daemon follows is taken over here at
        once."""
        if active is None or active == order_id:
            return None
        state = await self.ctx.store.load(active)
        if state is None or state.final:
            return None
        route = self._route(state.terminal_id)
        if route is None:
            return active
        log.info("terminal.busy_check", order_id=active, note="asking MultiSafepay")
        now = await self._confirm(active, route[0].key.get_secret_value(), state.terminal_id)
        if now is not None and now.final:
            return None
        if not self._running(active) and await self.ctx.leases.unowned(active):
            record = await self.ctx.registry.load(active)
            if record is not None:  # still in flight and nobody follows it: from here, now
                await self._adopt(record, now or state)
        return active

    async def _adopt(self, record: SessionRecord, state: OrderState) -> None:
        fence = await self.ctx.leases.claim(record.order_id)
        if fence is not None:
            log.info("session.adopted", order_id=record.order_id, note="terminal was busy")
            await self._start_session(record, state, fence)

    async def _create_or_find(
        self, command: PayCommand, order_id: str, terminal: str, group: Any
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
                plan = plan_create_failure(
                    code=exc.code,
                    http_status=exc.http_status,
                    upstream_code=exc.upstream_code,
                    maybe_done=exc.maybe_done,
                    uncertain=uncertain,
                    attempt=attempt,
                    attempts=attempts,
                )
                uncertain = plan.uncertain
                if plan.look_up and (found := await self._find(order_id, key)) is not None:
                    return found
                if plan.retry:
                    log.warning(
                        "order.create_retry",
                        order_id=order_id,
                        attempt=attempt + 1,
                        error=exc.message,
                        uncertain=uncertain,
                    )
                    metrics.UPSTREAM_ERRORS.labels("create_retry").inc()
                    await anyio.sleep(backoff.next())
                    continue
                message = (
                    f"MultiSafepay did not create the order: {exc.message}"
                    if plan.unavailable
                    else exc.message
                )
                raise PayFailed(plan.code, message) from exc
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
