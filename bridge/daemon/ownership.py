"""The payments this daemon follows, and the ones nobody follows any more.

Every payment in flight is in the Redis registry and has at most one owner, the daemon holding
its lease. A session starts only with the lease. Every few seconds each daemon looks for
registered payments whose lease has lapsed (their daemon died, or stopped and handed them over)
and takes them over: that is crash recovery, takeover between daemons, and resumption after a
restart, in one mechanism.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup
from redis.exceptions import RedisError

from bridge.core import formats
from bridge.core.events import ErrorCode, Source
from bridge.core.normalize import MalformedPayload, from_order
from bridge.core.state import Decision, OrderState, Verdict, observe, order_created, utcnow
from bridge.daemon import loops
from bridge.daemon.payment import PaymentSession, SessionContext
from bridge.daemon.scheduler import Scheduler
from bridge.multisafepay.api import ApiError
from bridge.redis.presence import Presence
from bridge.redis.registry import SessionRecord

log = structlog.get_logger("bridge.sessions")

#: After a session crashed (a bug), its payment is left alone this long before it is retried.
CRASH_PAUSE = 60.0


async def record_found_order(
    ctx: SessionContext, record: SessionRecord, data: dict[str, Any]
) -> OrderState | None:
    """An order whose create answer never came, found by ``GET``: publish ``order.created``
    (if not yet), then what ``GET`` says of it. Returns the order's state."""
    amount = data.get("amount") if isinstance(data.get("amount"), int) else None
    currency = data.get("currency") if isinstance(data.get("currency"), str) else None
    session_id = data.get("session_id") if isinstance(data.get("session_id"), str) else None

    def created(state: OrderState | None) -> Decision:
        if state is not None:
            return Decision(Verdict.DUPLICATE, state)
        return order_created(
            order_id=record.order_id,
            terminal_id=record.terminal_id,
            command_id=record.command_id,
            amount=amount or 0,
            currency=currency or "EUR",
            session_id=session_id,
            now=utcnow(),
        )

    recorded = await ctx.redis_waiters.call(
        lambda: ctx.store.record(record.order_id, created), what="an order created upstream"
    )
    state = recorded.decision.state
    try:
        obs = from_order(data, Source.POLL, ctx.tz)
    except MalformedPayload as exc:
        log.warning("upstream.malformed", source="poll", order_id=record.order_id, error=str(exc))
        return state
    recorded = await ctx.redis_waiters.call(
        lambda: ctx.store.record(
            record.order_id, lambda st: observe(st, obs, utcnow(), terminal_id=record.terminal_id)
        ),
        what="an order created upstream",
    )
    return recorded.decision.state or state


class Sessions:
    def __init__(
        self, tg: TaskGroup, ctx: SessionContext, key_for: Callable[[str], str | None]
    ) -> None:
        self._tg = tg
        self._ctx = ctx
        self._key_for = key_for
        self.running: dict[str, PaymentSession] = {}
        self._crashed: dict[str, float] = {}
        self._idle = anyio.Event()
        self._idle.set()
        up = ctx.upstream
        #: The longest a pay may hold a lease before its session runs: its create's attempts.
        self._opening_max = up.connect_timeout + up.request_timeout * (up.create_retries + 2)
        #: Every payment's timers, and the jobs they start, in the payments' task group.
        self.timers = Scheduler(tg)
        # a timer's callback that raises (a bug) must not take every payment with it
        loops.start(tg, "payment_timers", self.timers.run)

    @property
    def presence(self) -> Presence:
        return self._ctx.leases.presence

    def sizes(self) -> dict[str, int]:
        """What is kept per payment (``/memory``)."""
        return {
            "sessions_running": len(self.running),
            "sessions_crashed": len(self._crashed),
            "leases_held": len(self._ctx.leases.held),
            "timers": len(self.timers),
        }

    def __contains__(self, order_id: str) -> bool:
        return order_id in self.running

    async def start(
        self, record: SessionRecord, state: OrderState | None, fence: str | None = None
    ) -> bool:
        """Follow ``record``'s payment; with ``fence`` the lease is already ours, else it is
        taken here. False when another daemon holds it (it follows the payment)."""
        if record.order_id in self.running:
            return True
        key = self._key_for(record.group)
        if key is None:
            log.error(
                "session.no_key",
                order_id=record.order_id,
                group=record.group,
                note="terminal group no longer configured; session left in the registry",
            )
            return False
        if fence is None:
            fence = await self._ctx.leases.claim(record.order_id)
            if fence is None:
                return False
        session = PaymentSession(self._ctx, record, key, state, fence=fence, timers=self.timers)
        self.running[record.order_id] = session
        if self._idle.is_set():
            self._idle = anyio.Event()
        session.begin(self._finished)
        return True

    def _finished(self, session: PaymentSession) -> None:
        """A session is over (final, lease lost, a bug): its end runs in a task of its own."""
        self._tg.start_soon(self._close, session, name=f"session end {session.order_id}")

    async def _close(self, session: PaymentSession) -> None:
        try:
            await session.close()
        except formats.NewerFormat as exc:
            # A newer release wrote this order's records (a rolling upgrade): left as they are,
            # for a daemon that reads them; retried after the pause, like a crash.
            log.error("record.newer_format", order_id=session.order_id, error=str(exc))
            self._crashed[session.order_id] = time.monotonic()
        except Exception:
            # A bug must not take every other payment down: the registry keeps this one, and
            # it is taken over again (here or elsewhere) once its lease lapses.
            log.exception("session.crashed", order_id=session.order_id)
            self._crashed[session.order_id] = time.monotonic()
        finally:
            self.running.pop(session.order_id, None)
            if not self.running:
                self._idle.set()

    async def hand_over(self) -> None:
        """The daemon stops and the payments' task group is over: the sessions still here had
        no task left (a stream held open, timers). Stop them and release their leases, all in
        one round trip, so another daemon (or the next start) continues them at once; the
        registry keeps them. A lease not released lapses by itself within its TTL."""
        left = list(self.running.values())
        self.running.clear()
        self._idle.set()
        for session in left:
            session.abandon()
        if not left:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            try:
                await self._ctx.leases.release_all({s.order_id: s.fence for s in left})
            except RedisError as exc:
                log.info("sessions.leases_not_released", count=len(left), error=str(exc))

    def nudge(self, order_id: str) -> None:
        session = self.running.get(order_id)
        if session is not None:
            session.nudge()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    # -- takeover -------------------------------------------------------------------------------

    async def adopt_orphans(self) -> int:
        """Take over every registered payment that no daemon holds. Returns how many."""
        ctx = self._ctx
        adopted = 0
        now = time.monotonic()
        self._crashed = {k: t for k, t in self._crashed.items() if now - t < CRASH_PAUSE}
        candidates = [
            order_id
            for order_id in await ctx.registry.order_ids()
            if order_id not in self.running and order_id not in self._crashed
        ]
        for order_id, dead_token in (await ctx.leases.orphans(candidates)).items():
            if order_id in self.running:
                # Started here since the candidates were listed (a pay being opened then): a
                # stall past its lease TTL makes it look orphaned, but its renewal revives it.
                continue
            if dead_token:  # its daemon is gone (e.g. killed and restarted here): no waiting
                fence = await ctx.leases.take_over(order_id, dead_token)
            else:
                fence = await ctx.leases.acquire(order_id)
            if fence is None:
                continue
            try:
                taken = await self._adopt(order_id, fence)
            except formats.NewerFormat as exc:
                # Not this release's to follow: left as it is, not looked at for a while.
                log.error("record.newer_format", order_id=order_id, error=str(exc))
                self._crashed[order_id] = time.monotonic()
                taken = False
            if taken:
                adopted += 1
            else:
                await ctx.leases.release(order_id, fence)
        return adopted

    async def _adopt(self, order_id: str, fence: str) -> bool:
        ctx = self._ctx
        record = await ctx.registry.load(order_id)
        if record is None:
            await ctx.registry.forget(order_id)
            return False
        state = await ctx.store.load(order_id)
        if not record.created and state is None:
            # Its daemon died between storing the intent and learning the create's answer.
            found = await self._find(record)
            if found is None:
                return False
            state = await record_found_order(ctx, record, found)
            record = record.with_changes(created=True)
            await ctx.registry.save(record)
        log.info(
            "session.adopted",
            order_id=order_id,
            terminal_id=record.terminal_id.upper(),
            command_id=record.command_id,
        )
        return await self.start(record, state, fence)

    async def _find(self, record: SessionRecord) -> dict[str, Any] | None:
        key = self._key_for(record.group)
        if key is None:
            return None
        try:
            return await self._ctx.api.get_order(key, record.order_id)
        except ApiError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                # Never created: the pay command, unacknowledged, is replayed and creates it.
                log.info(
                    "session.intent_dropped",
                    order_id=record.order_id,
                    note="no order upstream; the pay command is replayed",
                )
                await self._ctx.registry.remove(record.order_id)
            else:
                log.warning("session.adopt_deferred", order_id=record.order_id, error=exc.message)
            return None

    def keep_leases(self, interval: float) -> None:
        """Renew every lease this daemon holds, all at once, every ``interval`` seconds (a
        third of their TTL), for the daemon's life: those of the payments it follows, and
        those of payments being opened (a ``POST orders`` under load can outlast a TTL; a
        lease lapsed there let this daemon's own orphan scan take the payment over mid-open)."""
        loops.start(self._tg, "lease_renewal", self._keep_leases, interval)

    def _leases_to_renew(self) -> dict[str, str]:
        """Order id -> token of the leases to renew now. A lease held for no running session
        (a payment being opened) is renewed for ``_opening_max`` at most, then left to lapse:
        one whose holder failed without releasing it must not stay held while this daemon
        lives (nobody would take the payment over)."""
        leases = self._ctx.leases
        oldest = time.monotonic() - self._opening_max
        renew: dict[str, str] = {}
        for order_id, (token, since) in list(leases.held.items()):
            session = self.running.get(order_id)
            if (session is not None and session.fence == token) or since > oldest:
                renew[order_id] = token
            elif session is None:
                leases.forget(order_id, token)
        return renew

    async def _keep_leases(self, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            loops.fault_point("lease_renewal")
            held = self._leases_to_renew()
            try:  # the presence and every lease in one round trip
                lost, revived = await self._ctx.leases.renew_all(held, announce=True)
            except RedisError:
                continue  # nobody can take a payment over while Redis is away either
            for order_id in lost:
                self._ctx.leases.forget(order_id, held[order_id])
                session = self.running.get(order_id)
                if session is not None and session.fence == held[order_id]:
                    session.lease_lost()
            if revived:
                await self._revived(revived, held)

    async def _revived(self, revived: set[str], held: dict[str, str]) -> None:
        """Leases that had lapsed (this daemon stalled past their TTL) and were set again.
        One released while the renewal was in flight (its payment ended or was handed over)
        is released again: the renewal never holds what nobody here follows."""
        leases = self._ctx.leases
        released = {o for o in revived if leases.held.get(o, ("",))[0] != held[o]}
        if len(released) < len(revived):
            log.warning(
                "leases.revived",
                count=len(revived) - len(released),
                note="renewed later than the lease TTL (a stalled or starved daemon)",
            )
        for order_id in released:
            with contextlib.suppress(RedisError):  # it lapses by itself within its TTL
                await leases.release(order_id, held[order_id])

    def watch_orphans(self, interval: float, *, until: anyio.Event) -> None:
        """Look for payments nobody follows every ``interval`` seconds, until the daemon
        stops (a stopping daemon hands payments over; it does not take more)."""
        loops.start(self._tg, "orphan_watch", self._watch_orphans, interval, until)

    async def _watch_orphans(self, interval: float, until: anyio.Event) -> None:
        with anyio.move_on_after(interval):
            await until.wait()
        while not until.is_set():
            loops.fault_point("orphan_watch")
            try:
                adopted = await self.adopt_orphans()
                if adopted:
                    log.info("sessions.taken_over", count=adopted)
            except RedisError as exc:
                log.debug("sessions.scan_skipped", error=str(exc))
            with anyio.move_on_after(interval):
                await until.wait()
