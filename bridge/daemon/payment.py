"""One payment in flight: follow its upstream stream until MultiSafepay gives a final status.

A session owns one task group: the stream follower (reconnecting with backoff), a poller that
asks ``GET orders/{id}`` whenever the order has been quiet for ``poll_interval`` (backing off
while polls find nothing), and the
deadline that cancels a payment left open too long. Every observation goes through the core's
state machine and the Redis transition; the first final ends the session. A final the stream
gave is published at once, as the stream carried it; with ``enrich_final`` the session then asks
``GET`` once for the card details, which the core publishes as ``order.details``.
"""

from __future__ import annotations

import logging
import time
from contextlib import aclosing
from dataclasses import dataclass
from datetime import tzinfo
from typing import TYPE_CHECKING

import anyio
import structlog
from redis.exceptions import RedisError

from bridge import metrics
from bridge.core.backoff import Backoff, next_poll_wait
from bridge.core.events import ErrorCode, Source
from bridge.core.normalize import MalformedPayload, Observation, from_order, from_stream_message
from bridge.core.state import OrderState, Verdict, observe, outcome_unknown, utcnow
from bridge.multisafepay.api import ApiError, MultiSafepayApi
from bridge.multisafepay.bus import BusProtocol
from bridge.multisafepay.sse import StreamError, StreamRejected, sse_messages
from bridge.multisafepay.tokens import token_expiry
from bridge.multisafepay.websocket import bus_messages
from bridge.redis.leases import Leases
from bridge.redis.outage import RedisWaiters
from bridge.redis.publisher import EventStore, LeaseLost
from bridge.redis.registry import SessionRecord, SessionRegistry

if TYPE_CHECKING:
    from bridge.config import MultiSafepayConfig

log = structlog.get_logger("bridge.session")
_TRANSITIONS_LOG = logging.getLogger("bridge.session")

#: A quiet order is polled after ``poll_interval``, then ever less often while polls find
#: nothing: at most every ``POLL_BACKOFF_LIMIT`` intervals (60 s at the default 10 s).
POLL_BACKOFF_LIMIT = 6

#: Where a final comes without card details.
STREAM_SOURCES = frozenset({Source.STREAM, Source.WEBSOCKET})

#: Events of the stream the bridge acts on; others (e.g. ``session.qr``) are logged and skipped.
ORDER_EVENT = "session.order"


@dataclass(frozen=True, slots=True)
class SessionContext:
    """What every session shares: clients, stores and the upstream settings."""

    api: MultiSafepayApi
    store: EventStore
    registry: SessionRegistry
    upstream: MultiSafepayConfig
    leases: Leases
    redis_waiters: RedisWaiters

    @property
    def tz(self) -> tzinfo:
        return self.upstream.tzinfo

    def backoff(self) -> Backoff:
        u = self.upstream
        return Backoff(u.reconnect_initial, u.reconnect_factor, u.reconnect_cap, u.reconnect_jitter)


class PaymentSession:
    def __init__(
        self,
        ctx: SessionContext,
        record: SessionRecord,
        api_key: str,
        state: OrderState | None = None,
        *,
        fence: str,
    ) -> None:
        self.ctx = ctx
        #: The token of this daemon's lease on the order; every commit carries it.
        self.fence = fence
        self.record = record
        self._api_key = api_key
        self.state = state
        self.order_id = record.order_id
        self.log = log.bind(
            order_id=record.order_id,
            terminal_id=record.terminal_id.upper(),
            command_id=record.command_id,
        )
        self._last_news = time.monotonic()
        self._done = anyio.Event()
        self._nudged = anyio.Event()
        # The message bus's protocol, kept across reconnects (it re-subscribes its channels);
        # made on the first bus connection: an SSE stream never needs it.
        self._bus: BusProtocol | None = None
        self._commit_lock = anyio.Lock()
        self._lease_lost = False
        self._opened = False
        self._final_from_stream = False
        self.reconnects = 0

    @property
    def final(self) -> bool:
        return self.state is not None and self.state.final

    async def run(self) -> None:
        """Follow the order until its final event is published.

        Ends early, leaving the order to whoever holds its lease, when the lease is lost; when
        cancelled (the daemon stops) it releases the lease so another daemon continues at once,
        and the registry keeps the session for whoever resumes it.
        """
        try:
            if not self.final:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._follow_stream)
                    tg.start_soon(self._poll_when_quiet)
                    tg.start_soon(self._enforce_deadline)
                    tg.start_soon(self._follow_nudges)
                    await self._done.wait()
                    tg.cancel_scope.cancel()
            if self._details_wanted():
                with anyio.move_on_after(self.ctx.upstream.connect_timeout):
                    await self.reconcile()  # the details follow the final, never delay it
        except* LeaseLost:  # a commit was refused: the lease is someone else's now
            self._lease_lost = True
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self._release_quietly()
        if self._lease_lost:
            self.log.warning("session.lease_lost", note="another daemon follows this payment")
            return
        await self.ctx.redis_waiters.call(
            lambda: self.ctx.registry.remove(self.order_id), what="session end"
        )
        self.log.info("session.ended", status=self.state.status if self.state else None)

    async def _release_quietly(self) -> None:
        try:
            await self.ctx.leases.release(self.order_id, self.fence)
        except RedisError as exc:  # it lapses by itself within its TTL
            self.log.info("session.lease_not_released", error=str(exc))

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
        self._done.set()

    # -- observations ---------------------------------------------------------------------------

    async def observe(self, obs: Observation) -> None:
        """Feed one observation to the state machine and commit it."""
        if obs.order_id != self.order_id:
            self.log.warning("upstream.wrong_order", got_order_id=obs.order_id, source=obs.source)
            return
        self._last_news = time.monotonic()
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
                self.log.debug(
                    "order.transition",
                    type=event.type,
                    status=event.status,
                    final=event.final,
                    source=event.source,
                )
        elif decision.verdict is Verdict.CONFLICT:
            self.log.error(
                "upstream.contradiction",
                status=obs.status,
                published=self.state and self.state.status,
                source=obs.source,
            )
        else:
            level = "warning" if decision.verdict is Verdict.UNKNOWN_STATUS else "debug"
            getattr(self.log, level)(
                "upstream.ignored", verdict=decision.verdict, status=obs.status, source=obs.source
            )
        if self.final:
            self._done.set()
        elif waited and obs.source is not Source.POLL:
            await self.reconcile()  # Redis was away: what else happened meanwhile?

    async def reconcile(self) -> None:
        """Ask ``GET orders/{id}`` what the stream may have missed."""
        as_of = utcnow()
        try:
            data = await self.ctx.api.get_order(self._api_key, self.order_id)
            obs = from_order(data, Source.POLL, self.ctx.tz, as_of=as_of)
        except ApiError as exc:
            self.log.warning("upstream.poll_failed", error=exc.message, code=exc.code)
            metrics.UPSTREAM_ERRORS.labels("poll_failed").inc()
            return
        except MalformedPayload as exc:
            self.log.warning("upstream.malformed", source="poll", error=str(exc))
            metrics.UPSTREAM_ERRORS.labels("malformed").inc()
            return
        await self.observe(obs)

    def nudge(self) -> None:
        """Another channel (a webhook, another daemon) moved the order on: re-read its state."""
        self._nudged.set()

    # -- the tasks ------------------------------------------------------------------------------

    async def _follow_nudges(self) -> None:
        while True:
            await self._nudged.wait()
            self._nudged = anyio.Event()
            self._last_news = time.monotonic()
            state = await self.ctx.redis_waiters.call(
                lambda: self.ctx.store.load(self.order_id), what="an order's state"
            )
            if state is not None and (self.state is None or state.seq > self.state.seq):
                self.state = state
            if self.final:
                self.log.info(
                    "session.final_elsewhere", status=self.state.status if self.state else None
                )
                self._done.set()

    def _transport(self) -> Source | None:
        """Which stream to follow: config ``transport``; ``auto`` prefers SSE when offered."""
        r = self.record
        sse = Source.STREAM if r.events_stream_url else None
        bus = Source.WEBSOCKET if r.events_url else None
        mode = self.ctx.upstream.transport
        if mode == "sse":
            return sse
        if mode == "websocket":
            return bus
        return sse or bus

    def _stream_usable(self) -> bool:
        r = self.record
        if self._transport() is None or not r.events_token:
            return False
        exp = token_expiry(r.events_token)
        return exp is None or exp > time.time() + 1

    async def _follow_stream(self) -> None:
        if not self._stream_usable():
            self.log.info("stream.unavailable", reason="no stream URL or token; polling")
            return
        backoff = self.ctx.backoff()
        upstream = self.ctx.upstream
        while self._stream_usable():
            try:
                await self._read_stream(backoff, upstream)
                reason = "stream ended without a final status"
            except StreamRejected as exc:
                self.log.warning("stream.rejected", error=str(exc))
                metrics.UPSTREAM_ERRORS.labels("stream_rejected").inc()
                return  # the poller carries on
            except StreamError as exc:
                reason = str(exc)
            if self.final:
                return
            self.reconnects += 1
            metrics.UPSTREAM_RECONNECTS.labels(str(self._transport() or "none")).inc()
            self.log.info("stream.lost", reason=reason, reconnects=self.reconnects)
            await self.reconcile()  # never rely on Last-Event-ID
            if self.final:
                return
            await anyio.sleep(backoff.next())
        self.log.info("stream.token_expired", note="polling until final")

    async def _read_stream(self, backoff: Backoff, upstream: MultiSafepayConfig) -> None:
        r = self.record
        source = self._transport()
        assert source is not None and r.events_token
        if source is Source.WEBSOCKET:
            assert r.events_url
            messages = bus_messages(
                r.events_url,
                r.events_token,
                connect_timeout=upstream.connect_timeout,
                idle_timeout=upstream.stream_idle_timeout,
                protocol=self._bus_protocol(),
                on_open=self._first_open,
            )
        else:
            assert r.events_stream_url
            messages = sse_messages(
                r.events_stream_url,
                r.events_token,
                auth=upstream.events_auth,
                last_event_id=r.last_event_id,
                connect_timeout=upstream.connect_timeout,
                idle_timeout=upstream.stream_idle_timeout,
                on_open=self._first_open,
            )
        async with aclosing(messages) as stream:
            async for message in stream:
                backoff.reset()
                if message.id:
                    self.record = r = r.with_changes(last_event_id=message.id)
                if message.event != ORDER_EVENT:
                    self.log.info("stream.skipped_event", event_name=message.event[:64])
                    continue
                try:
                    obs = from_stream_message(message.data, source)
                except MalformedPayload as exc:
                    self.log.warning("upstream.malformed", source="stream", error=str(exc))
                    metrics.UPSTREAM_ERRORS.labels("malformed").inc()
                    continue
                await self.observe(obs)
                if self.final:
                    return

    def _bus_protocol(self) -> BusProtocol:
        if self._bus is None:
            self._bus = BusProtocol()
        return self._bus

    async def _first_open(self) -> None:
        """A stream tells only what happens after it opens (no replay without Last-Event-ID):
        once the first one is open, ``GET`` says what happened before. Later reconnects do
        the same already, after the loss."""
        if not self._opened:
            self._opened = True
            await self.reconcile()

    async def _poll_when_quiet(self) -> None:
        """``GET`` the order once it has been quiet for ``poll_interval``; while polls find
        nothing new the wait doubles, up to ``POLL_BACKOFF_LIMIT`` times the interval; any
        transition (from any channel) brings it back to the interval, and past the payment's
        deadline it stays there."""
        interval = self.ctx.upstream.poll_interval
        wait = interval
        last_seq = self._seq()
        while True:
            await anyio.sleep(max(0.0, self._last_news + wait - time.monotonic()))
            if time.monotonic() - self._last_news < wait:
                continue  # heard from meanwhile: quiet counts from then
            await self.reconcile()
            seq = self._seq()
            # past the deadline (cancelled upstream, outcome awaited): no backing off
            late = self.record.cancel_when_late and time.time() >= self.record.deadline
            wait = next_poll_wait(
                wait, interval, found=seq != last_seq, late=late, limit=POLL_BACKOFF_LIMIT
            )
            last_seq = seq

    def _seq(self) -> int:
        return self.state.seq if self.state is not None else 0

    async def _enforce_deadline(self) -> None:
        if not self.record.cancel_when_late:
            return  # a watched order is the till's: the bridge only follows it
        await anyio.sleep(max(0.0, self.record.deadline - time.time()))
        self.log.warning("payment.too_long", note="cancelling upstream; outcome confirmed by GET")
        try:
            await self.ctx.api.cancel_order(self._api_key, self.order_id)
        except ApiError as exc:
            # e.g. it completed meanwhile: GET tells; the poller keeps asking until final
            level = "info" if exc.code is ErrorCode.UPSTREAM_REJECTED else "warning"
            getattr(self.log, level)("payment.cancel_failed", error=exc.message)
        await self.reconcile()
        upstream = self.ctx.upstream
        await anyio.sleep(max(upstream.request_timeout, 3 * upstream.poll_interval))
        if not self.final:  # the poller kept asking meanwhile, and learned nothing
            await self._end_unknown()

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
        self.log.error("order.outcome_unknown", note="order.failed upstream_unavailable")
        if self.final:
            self._done.set()
