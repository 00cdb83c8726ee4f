"""One payment in flight: follow its upstream stream until MultiSafepay gives a final status.

A quiet session holds no task: its SSE connection (reconnecting with backoff, see
:mod:`bridge.daemon.payment_stream`) and timers in the daemon's one
:class:`~bridge.daemon.scheduler.Scheduler`: a poll (``GET orders/{id}``) once the order has been
quiet for ``poll_interval`` (backing off while polls find nothing), the deadline that cancels a
payment left open too long and, after it, the check that gives up on an outcome nobody can tell,
and the stream's idle deadline. What a message, a timer or a nudge (webhook, another daemon)
brings to do runs as one short job at a time, in the task group that owns the payments, and only
while there is work. Tasks exist only while something is awaited (a job, connecting, the message
bus); the session's end is one more, run by :class:`~bridge.daemon.ownership.Sessions`
(:meth:`PaymentSession.close`). Every observation goes through the core's state machine and the
Redis transition; the first final ends the session. A final the stream gave is published at
once, as the stream carried it; with ``enrich_final`` the session then asks ``GET`` once for the
card details, which the core publishes as ``order.details``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog
from redis.exceptions import RedisError

from bridge import metrics
from bridge.core.backoff import next_poll_wait, quiet_poll_wait
from bridge.core.events import ErrorCode, Source
from bridge.core.normalize import MalformedPayload, Observation, from_order
from bridge.core.state import OrderState, Verdict, observe, outcome_unknown, utcnow
from bridge.core.timers import Timer
from bridge.daemon.context import SessionContext
from bridge.daemon.payment_stream import StreamFollower
from bridge.daemon.scheduler import Scheduler
from bridge.multisafepay.api import ApiError
from bridge.multisafepay.bus import BusProtocol
from bridge.redis.publisher import LeaseLost
from bridge.redis.registry import SessionRecord

__all__ = ["PaymentSession", "SessionContext"]  # SessionContext: where its users import it

log = structlog.get_logger("bridge.session")
_TRANSITIONS_LOG = logging.getLogger("bridge.session")

#: A quiet order is polled after ``poll_interval``, then ever less often while polls find
#: nothing: at most every ``POLL_BACKOFF_LIMIT`` intervals (60 s at the default 10 s).
POLL_BACKOFF_LIMIT = 6

#: Where a final comes without card details.
STREAM_SOURCES = frozenset({Source.STREAM, Source.WEBSOCKET})


#: What a session's job may have to do, in the order it does them (bits of ``_pending``):
#: read the stream's connection first (a final there is published at once).
_STREAM, _NUDGE, _POLL, _DEADLINE, _UNKNOWN = 1, 2, 4, 8, 16


class PaymentSession(StreamFollower):
    __slots__ = (  # and StreamFollower's
        "timers",
        "fence",
        "_api_key",
        "state",
        "order_id",
        "_last_news",
        "_commit_lock",
        "_lease_lost",
        "_final_from_stream",
        "_ended",
        "_closing",
        "_on_finish",
        "_pending",
        "_working",
        "_tasks",
        "_scopes",
        "_gone",
        "_crash",
        "_poll_timer",
        "_poll_wait",
        "_poll_seq",
        "_deadline_timer",
    )  # ``live``: StreamFollower's

    def __init__(
        self,
        ctx: SessionContext,
        record: SessionRecord,
        api_key: str,
        state: OrderState | None = None,
        *,
        fence: str,
        timers: Scheduler,
    ) -> None:
        self.ctx = ctx
        self.timers = timers
        #: The token of this daemon's lease on the order; every commit carries it.
        self.fence = fence
        self.record = record
        self._api_key = api_key
        self.state = state
        self.order_id = record.order_id
        self.reconnects = 0
        self._last_news = timers.now()
        # The message bus's protocol, kept across reconnects (it re-subscribes its channels);
        # made on the first bus connection: an SSE stream never needs it.
        self._bus: BusProtocol | None = None
        # asyncio's lock makes its queue of waiters only once someone waits; anyio's makes a
        # deque at once (760 bytes per payment held, measured with tracemalloc at 1,000).
        self._commit_lock = asyncio.Lock()
        self._lease_lost = False
        self._opened = False
        self.live = False
        self._final_from_stream = False
        self._conn = None
        self._backoff = None
        self._stream_timer = None
        #: Set once the session is over (final, lease lost, stopped): no more jobs or timers.
        self._ended = False
        #: Set once its end was handed to ``_on_finish`` (given by :meth:`begin`).
        self._closing = False
        self._on_finish: Callable[[PaymentSession], None] | None = None
        #: Jobs wanted (``_STREAM`` ...); ``_working`` while one task runs them.
        self._pending = 0
        self._working = False
        #: The session's tasks spawned and not yet over, their scopes while they run, and the
        #: event :meth:`_stop_work` waits on until there are none.
        self._tasks = 0
        self._scopes: list[anyio.CancelScope] | None = None
        self._gone: anyio.Event | None = None
        #: What a job raised that is a bug: the session ends and re-raises it.
        self._crash: Exception | None = None
        self._poll_timer: Timer | None = None
        self._poll_wait = 0.0
        self._poll_seq = 0
        self._deadline_timer: Timer | None = None

    @property
    def final(self) -> bool:
        return self.state is not None and self.state.final

    def _log(self, level: str, event: str, **fields: Any) -> None:
        """A log line about this payment (a bound logger per payment costs memory held)."""
        r = self.record
        getattr(log, level)(
            event,
            order_id=r.order_id,
            terminal_id=r.terminal_id.upper(),
            command_id=r.command_id,
            **fields,
        )

    def begin(self, on_finish: Callable[[PaymentSession], None]) -> None:
        """Start following the order: its timers and its stream. Once the session is over
        (final, lease lost, a bug), ``on_finish(self)`` is called, once: the caller then runs
        :meth:`close` in a task of its own."""
        self._on_finish = on_finish
        if self.final or self._ended:
            self._finish()
            return
        self._arm()
        self._connect_stream()

    async def close(self) -> None:
        """End the session :meth:`begin` started, once it is over: its work stopped, the
        card details asked for, then the registry entry and the lease gone in one round trip.

        Ends early, leaving the order to whoever holds its lease, when the lease is lost; when
        cancelled (the daemon stops) it releases the lease so another daemon continues at once,
        and the registry keeps the session for whoever resumes it. Re-raises what a job raised
        that is a bug."""
        ended = False  # over here: the lease goes with the registry entry, in one round trip
        try:
            try:
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await self._stop_work()
                if self._crash is not None:
                    raise self._crash
                if self._details_wanted():
                    with anyio.move_on_after(self.ctx.upstream.connect_timeout):
                        await self.reconcile()  # the details follow the final, never delay it
                ended = not self._lease_lost
            except* LeaseLost:  # a commit was refused: the lease is someone else's now
                self._lease_lost = True
        finally:
            if not ended:  # cancelled (the daemon stops), crashed or lost: the lease alone
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await self._release_quietly()
        if self._lease_lost:
            self._log("warning", "session.lease_lost", note="another daemon follows this payment")
            return
        self.ctx.leases.forget(self.order_id, self.fence)
        await self.ctx.redis_waiters.call(
            lambda: self.ctx.registry.end(self.order_id, self.fence), what="session end"
        )
        self._log("info", "session.ended", status=self.state.status if self.state else None)

    def abandon(self) -> None:
        """The daemon stops and this session had no end of its own: stop everything it holds
        now (no awaiting). Its lease is the caller's to release; the registry keeps it."""
        self._closing = True
        self._halt()

    def _finish(self) -> None:
        """The session is over: hand its end to the owner (once)."""
        self._ended = True
        if not self._closing and self._on_finish is not None:
            self._closing = True
            self._on_finish(self)

    def _halt(self) -> None:
        """No more jobs, timers or stream; the session's tasks are cancelled."""
        self._ended = True
        self._pending = 0
        self.timers.cancel(self._poll_timer)
        self.timers.cancel(self._deadline_timer)
        self._poll_timer = self._deadline_timer = None
        self._close_stream()
        for scope in self._scopes or ():
            scope.cancel()

    async def _stop_work(self) -> None:
        """:meth:`_halt`, then wait until the session's tasks are over."""
        self._halt()
        if self._tasks:
            self._gone = gone = anyio.Event()
            await gone.wait()

    async def _release_quietly(self) -> None:
        try:
            await self.ctx.leases.release(self.order_id, self.fence)
        except RedisError as exc:  # it lapses by itself within its TTL
            self._log("info", "session.lease_not_released", error=str(exc))

    def _details_wanted(self) -> bool:
        """The final came from a stream (no card details) and nobody has published them yet."""
        st = self.state
        return (
            self.ctx.upstream.enrich_final
            and not self._lease_lost
            and st is not None
            and st.final
            and st.status is not None
            and not st.details_published
            and self._final_from_stream
        )

    def lease_lost(self) -> None:
        """The daemon's lease renewal found the lease gone (it lapsed while this daemon was
        stalled or cut off from Redis, and another daemon took the payment): stop."""
        self._lease_lost = True
        self._finish()

    # -- observations ---------------------------------------------------------------------------

    async def observe(self, obs: Observation) -> None:
        """Feed one observation to the state machine and commit it."""
        if obs.order_id != self.order_id:
            self._log(
                "warning", "upstream.wrong_order", got_order_id=obs.order_id, source=obs.source
            )
            return
        self._last_news = self.timers.now()
        now = utcnow()
        async with self._commit_lock:  # one observation at a time, in the order they came
            waits_before = self.ctx.redis_waiters.waiting
            recorded = await self.ctx.redis_waiters.call(
                lambda: self.ctx.store.record(
                    self.order_id,
                    lambda st: observe(
                        st,
                        obs,
                        now,
                        terminal_id=self.record.terminal_id,
                        command_id=self.record.command_id,
                    ),
                    known=self.state,
                    trust_known=self.state is not None,
                    fence=self.fence,
                ),
                what="an upstream transition",
            )
            waited = bool(waits_before or self.ctx.redis_waiters.waiting)
        decision = recorded.decision
        self.state = decision.state or self.state
        if self.final and recorded.stream_ids and obs.source in STREAM_SOURCES:
            self._final_from_stream = any(e.final for e in decision.events)
        if recorded.stream_ids:
            # Per transition: debug only (the metrics count them). At info, one line per event
            # was ~5 % of the daemon's CPU per event; skipped before structlog is even called.
            for event in decision.events if _TRANSITIONS_LOG.isEnabledFor(logging.DEBUG) else ():
                self._log(
                    "debug",
                    "order.transition",
                    type=event.type,
                    status=event.status,
                    final=event.final,
                    source=event.source,
                )
        elif decision.verdict is Verdict.CONFLICT:
            self._log(
                "error",
                "upstream.contradiction",
                status=obs.status,
                published=self.state and self.state.status,
                source=obs.source,
            )
        else:
            level = "warning" if decision.verdict is Verdict.UNKNOWN_STATUS else "debug"
            self._log(
                level,
                "upstream.ignored",
                verdict=decision.verdict,
                status=obs.status,
                source=obs.source,
            )
        if self.final:
            self._finish()
        elif waited and obs.source is not Source.POLL:
            await self.reconcile()  # Redis was away: what else happened meanwhile?

    async def reconcile(self) -> None:
        """Ask ``GET orders/{id}`` what the stream may have missed."""
        as_of = utcnow()
        try:
            data = await self.ctx.api.get_order(self._api_key, self.order_id)
            obs = from_order(data, Source.POLL, self.ctx.tz, as_of=as_of)
        except ApiError as exc:
            self._log("warning", "upstream.poll_failed", error=exc.message, code=exc.code)
            metrics.UPSTREAM_ERRORS.labels("poll_failed").inc()
            return
        except MalformedPayload as exc:
            self._log("warning", "upstream.malformed", source="poll", error=str(exc))
            metrics.UPSTREAM_ERRORS.labels("malformed").inc()
            return
        await self.observe(obs)

    def nudge(self) -> None:
        """Another channel (a webhook, another daemon) moved the order on: re-read its state."""
        self._want(_NUDGE)

    # -- timers and the jobs they start ---------------------------------------------------------

    def _arm(self) -> None:
        """The poll and the deadline, on the daemon's scheduler."""
        timers = self.timers
        self._poll_wait = self.ctx.upstream.poll_interval
        self._poll_seq = self._seq()
        self._poll_timer = timers.call_at(self._last_news + self._poll_wait, self._poll_due)
        if self.record.cancel_when_late:  # a watched order is the till's: the bridge follows
            late_in = max(0.0, self.record.deadline - time.time())
            self._deadline_timer = timers.call_later(late_in, self._deadline_due)

    def _want(self, job: int) -> None:
        if self._ended:
            return
        self._pending |= job
        if not self._working:
            self._working = True
            self._spawn(self._work)

    def _stream_news(self) -> None:
        self._want(_STREAM)

    def _spawn_stream_task(self) -> None:
        self._spawn(self._stream_task)

    def _spawn(self, body: Callable[[], Awaitable[None]]) -> None:
        self._tasks += 1
        self.timers.spawn(self._task, body)

    async def _task(self, body: Callable[[], Awaitable[None]]) -> None:
        """One of the session's tasks (its job worker, connecting its stream, the bus): what
        it raises ends the session, never the task group of every payment."""
        scope = anyio.CancelScope()
        scopes = self._scopes = self._scopes or []
        scopes.append(scope)
        try:
            with scope:
                if not self._ended:
                    await body()
        except* LeaseLost:  # a commit was refused: the lease is someone else's now
            self._lease_lost = True
            self._finish()
        except* Exception as group:  # noqa: BLE001 - a bug: the session ends, close() re-raises
            self._crash = group.exceptions[0] if len(group.exceptions) == 1 else group
            self._finish()
        finally:
            scopes.remove(scope)
            if not scopes:  # none held while the session waits (a list is 56 bytes)
                self._scopes = None
            self._tasks -= 1
            if not self._tasks and self._gone is not None:
                self._gone.set()

    async def _work(self) -> None:
        """Do the jobs wanted, one at a time, until there are none (then the task ends)."""
        try:
            while self._pending and not self._ended:
                job = self._pending & -self._pending  # the first wanted, in _STREAM.. order
                self._pending &= ~job
                await self._do(job)
        finally:
            self._working = False

    async def _do(self, job: int) -> None:
        if job == _STREAM:
            await self._read_connection()
        elif job == _NUDGE:
            await self._follow_nudge()
        elif job == _POLL:
            await self._poll()
        elif job == _DEADLINE:
            await self._cancel_late()
        elif not self.final:  # _UNKNOWN: the polls went on meanwhile and learned nothing
            await self._end_unknown()

    async def _follow_nudge(self) -> None:
        self._last_news = self.timers.now()
        state = await self.ctx.redis_waiters.call(
            lambda: self.ctx.store.load(self.order_id), what="an order's state"
        )
        if state is not None and (self.state is None or state.seq > self.state.seq):
            self.state = state
        if self.final:
            self._log(
                "info", "session.final_elsewhere", status=self.state.status if self.state else None
            )
            self._finish()

    def _poll_due(self) -> None:
        """``GET`` the order once it has been quiet for the current wait (quiet counts from
        the last news, from any channel; while its stream is connected the wait is at least
        ``POLL_BACKOFF_LIMIT`` intervals: see :func:`quiet_poll_wait`)."""
        self._poll_timer = None
        due = self._last_news + self._quiet_wait()
        if due > self.timers.now():  # heard from meanwhile, or the stream is connected
            self._poll_timer = self.timers.call_at(due, self._poll_due)
        else:
            self._want(_POLL)

    def _quiet_wait(self) -> float:
        return quiet_poll_wait(
            self._poll_wait,
            self.ctx.upstream.poll_interval,
            live=self.live,
            late=self._late(),
            limit=POLL_BACKOFF_LIMIT,
        )

    def _late(self) -> bool:
        """Past the payment's deadline (cancelled upstream, outcome awaited)."""
        return self.record.cancel_when_late and time.time() >= self.record.deadline

    def _stream_down(self) -> None:
        """The stream is lost: quiet polls go back to their own wait at once (a poll timer set
        for a connected stream's longer wait is brought forward). Overrides the follower's."""
        self.live = False
        timer = self._poll_timer
        if self._ended or timer is None:
            return
        due = self._last_news + self._poll_wait
        if due < timer.when:
            self.timers.cancel(timer)
            self._poll_timer = self.timers.call_at(due, self._poll_due)

    async def _poll(self) -> None:
        """While polls find nothing new the wait doubles, up to ``POLL_BACKOFF_LIMIT`` times
        the interval; any transition (from any channel) brings it back to the interval, and
        past the payment's deadline it stays there. The next wait counts from the later of
        this poll and the last news (a poll that failed waits too)."""
        polled_at = self.timers.now()
        await self.reconcile()
        seq = self._seq()
        interval = self.ctx.upstream.poll_interval
        self._poll_wait = next_poll_wait(
            self._poll_wait,
            interval,
            found=seq != self._poll_seq,
            late=self._late(),  # past the deadline: no backing off
            limit=POLL_BACKOFF_LIMIT,
        )
        self._poll_seq = seq
        if not self._ended:
            since = max(self._last_news, polled_at)
            self._poll_timer = self.timers.call_at(since + self._quiet_wait(), self._poll_due)

    def _seq(self) -> int:
        return self.state.seq if self.state is not None else 0

    def _deadline_due(self) -> None:
        self._deadline_timer = None
        self._want(_DEADLINE)

    async def _cancel_late(self) -> None:
        self._log(
            "warning", "payment.too_long", note="cancelling upstream; outcome confirmed by GET"
        )
        try:
            await self.ctx.api.cancel_order(self._api_key, self.order_id)
        except ApiError as exc:
            # e.g. it completed meanwhile: GET tells; the poller keeps asking until final
            level = "info" if exc.code is ErrorCode.UPSTREAM_REJECTED else "warning"
            self._log(level, "payment.cancel_failed", error=exc.message)
        await self.reconcile()
        if not self._ended:
            upstream = self.ctx.upstream
            wait = max(upstream.request_timeout, 3 * upstream.poll_interval)
            self._deadline_timer = self.timers.call_later(wait, lambda: self._want(_UNKNOWN))

    async def _end_unknown(self) -> None:
        now = utcnow()
        async with self._commit_lock:
            recorded = await self.ctx.redis_waiters.call(
                lambda: self.ctx.store.record(
                    self.order_id,
                    lambda st: outcome_unknown(
                        st,
                        order_id=self.order_id,
                        terminal_id=self.record.terminal_id,
                        command_id=self.record.command_id,
                        now=now,
                    ),
                    fence=self.fence,
                ),
                what="an unknown outcome",
            )
        self.state = recorded.decision.state or self.state
        self._log("error", "order.outcome_unknown", note="order.failed upstream_unavailable")
        if self.final:
            self._finish()
