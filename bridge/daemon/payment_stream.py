"""Following one payment's upstream stream (SSE or the message bus), for
:class:`~bridge.daemon.payment.PaymentSession`.

An SSE stream held open costs no task: its connection (an asyncio protocol) queues the messages
and tells the session, whose job worker observes them; its idle deadline is a timer of the
daemon's scheduler. A task exists only while there is something to await: connecting (then the
first ``GET``), a loss (``GET`` again, then a backoff timer to connect again), or the message bus
(a WebSocket, read by a task for as long as it is connected). A task per held stream was about
30 of the ~51 objects the collector walks per payment (the census in docs/performance.md).

It reconnects with backoff, asks ``GET`` after the first open and after every loss (never relying
on ``Last-Event-ID``), and stops once the stream cannot be used any more (refused, the events
token expired: the session's polls carry on) or the order is final.
"""

from __future__ import annotations

import time
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Protocol

from bridge import metrics
from bridge.core.backoff import Backoff
from bridge.core.events import Source
from bridge.core.normalize import MalformedPayload, Observation, from_stream_message
from bridge.daemon.context import SessionContext
from bridge.multisafepay.bus import BusProtocol, heartbeat_interval_for
from bridge.multisafepay.sse import StreamConnection, StreamError, StreamRejected, open_stream
from bridge.multisafepay.tokens import token_expiry
from bridge.multisafepay.websocket import bus_messages
from bridge.redis.registry import SessionRecord

if TYPE_CHECKING:
    from bridge.core.timers import Timer
    from bridge.daemon.scheduler import Scheduler

#: Events of the stream the bridge acts on; others (e.g. ``session.qr``) are logged and skipped.
ORDER_EVENT = "session.order"


class _Message(Protocol):
    @property
    def event(self) -> str: ...
    @property
    def data(self) -> str: ...
    @property
    def id(self) -> str | None: ...


class StreamFollower:
    """The stream half of a payment session (a mixin: the session holds the state and runs
    the tasks and jobs named here)."""

    __slots__ = (
        "ctx",
        "record",
        "reconnects",
        "_bus",
        "_opened",
        "live",
        "_conn",
        "_backoff",
        "_stream_timer",
    )

    ctx: SessionContext
    record: SessionRecord
    timers: Scheduler
    reconnects: int
    _bus: BusProtocol | None
    _opened: bool
    #: The stream is connected now (accepted, not lost since): quiet polls wait longer.
    live: bool
    #: The SSE connection held open (None while connecting, lost, or on the bus).
    _conn: StreamConnection | None
    _backoff: Backoff | None
    #: The connection's idle deadline, or the backoff before connecting again.
    _stream_timer: Timer | None
    _ended: bool

    @property
    def final(self) -> bool:
        raise NotImplementedError

    def _log(self, level: str, event: str, **fields: Any) -> None:
        raise NotImplementedError

    async def observe(self, obs: Observation) -> None:
        raise NotImplementedError

    async def reconcile(self) -> None:
        raise NotImplementedError

    def _stream_news(self) -> None:
        """The connection has messages, ended or failed: the session's worker reads it."""
        raise NotImplementedError

    def _spawn_stream_task(self) -> None:
        """Run :meth:`_stream_task` as one of the session's tasks."""
        raise NotImplementedError

    def _stream_down(self) -> None:
        """The stream is no longer connected (lost, refused, over)."""
        self.live = False

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

    # -- connecting -----------------------------------------------------------------------------

    def _connect_stream(self) -> None:
        """Connect (at the start, and when a loss's backoff is over), while the token lasts."""
        self._stream_timer = None
        if self._ended:
            return
        if not self._stream_usable():
            if self._backoff is None:
                self._log("info", "stream.unavailable", reason="no stream URL or token; polling")
            else:
                self._log("info", "stream.token_expired", note="polling until final")
            return
        if self._backoff is None:
            self._backoff = self.ctx.backoff()
        self._spawn_stream_task()

    async def _stream_task(self) -> None:
        """Open the SSE stream and leave it to its connection; or read the bus until it ends.
        A failure here is a loss like any other."""
        try:
            if self._transport() is Source.WEBSOCKET:
                await self._follow_bus()
                reason = "stream ended without a final status"
            else:
                await self._open_sse()
                return
        except StreamRejected as exc:
            self._log("warning", "stream.rejected", error=str(exc))
            metrics.UPSTREAM_ERRORS.labels("stream_rejected").inc()
            if self.live:
                self._stream_down()
            return  # the poller carries on
        except StreamError as exc:
            reason = str(exc)
        await self._stream_lost(reason)

    async def _open_sse(self) -> None:
        r = self.record
        upstream = self.ctx.upstream
        assert r.events_stream_url and r.events_token
        conn = await open_stream(
            r.events_stream_url,
            r.events_token,
            auth=upstream.events_auth,
            last_event_id=r.last_event_id,
            connect_timeout=upstream.connect_timeout,
            idle_timeout=upstream.stream_idle_timeout,
            tls=self.ctx.tls,
        )
        try:
            await self._first_open()
        except BaseException:  # cancelled, or the lease lost: the connection goes too
            conn.close()
            raise
        if self.final or self._ended:  # over meanwhile: nothing to hold
            conn.close()
            return
        self._conn = conn
        conn.on_change = self._stream_news
        self._arm_idle(conn)
        if conn.messages or conn.error is not None or conn.ended:
            self._stream_news()  # came while the first GET was asked

    def _arm_idle(self, conn: StreamConnection) -> None:
        deadline = conn.check_idle(self.ctx.upstream.stream_idle_timeout)
        if deadline is None:
            self._stream_news()  # past it already: the worker finds the error
        else:
            self._stream_timer = self.timers.call_later(deadline - time.monotonic(), self._idle)

    def _idle(self) -> None:
        """The idle deadline: bytes came meanwhile (a keep-alive), or the stream is dead."""
        self._stream_timer = None
        conn = self._conn
        if conn is not None and not self._ended:
            self._arm_idle(conn)

    # -- reading --------------------------------------------------------------------------------

    async def _read_connection(self) -> None:
        """The worker's job for the SSE connection: its messages, then its end if it ended."""
        conn = self._conn
        if conn is None:
            return
        while conn.messages and not self._ended:
            await self._on_message(conn.take(), Source.STREAM)
            if self.final:
                return
        if self._ended or (conn.error is None and not conn.ended):
            return
        self._conn = None
        self.timers.cancel(self._stream_timer)
        self._stream_timer = None
        conn.close()
        await self._stream_lost(str(conn.error or "stream ended without a final status"))

    async def _follow_bus(self) -> None:
        r = self.record
        upstream = self.ctx.upstream
        assert r.events_url and r.events_token
        messages = bus_messages(
            r.events_url,
            r.events_token,
            connect_timeout=upstream.connect_timeout,
            idle_timeout=upstream.stream_idle_timeout,
            heartbeat_interval=heartbeat_interval_for(upstream.stream_idle_timeout),
            protocol=self._bus_protocol(),
            on_open=self._first_open,
            tls=self.ctx.tls,
        )
        async with aclosing(messages) as stream:
            async for message in stream:
                await self._on_message(message, Source.WEBSOCKET)
                if self.final:
                    return

    async def _on_message(self, message: _Message, source: Source) -> None:
        if self._backoff is not None:
            self._backoff.reset()
        if message.id:
            self.record = self.record.with_changes(last_event_id=message.id)
        if message.event != ORDER_EVENT:
            self._log("info", "stream.skipped_event", event_name=message.event[:64])
            return
        try:
            obs = from_stream_message(message.data, source)
        except MalformedPayload as exc:
            self._log("warning", "upstream.malformed", source="stream", error=str(exc))
            metrics.UPSTREAM_ERRORS.labels("malformed").inc()
            return
        await self.observe(obs)

    async def _stream_lost(self, reason: str) -> None:
        """Count and log the loss, ``GET`` what it may have missed, connect again later."""
        if self.live:
            self._stream_down()
        if self.final or self._ended:
            return
        self.reconnects += 1
        metrics.UPSTREAM_RECONNECTS.labels(str(self._transport() or "none")).inc()
        self._log("info", "stream.lost", reason=reason, reconnects=self.reconnects)
        await self.reconcile()  # never rely on Last-Event-ID
        if self.final or self._ended:
            return
        assert self._backoff is not None
        self._stream_timer = self.timers.call_later(self._backoff.next(), self._connect_stream)

    def _close_stream(self) -> None:
        """The session is over: no connection, no timer (a bus task is cancelled with the
        session's tasks)."""
        self.timers.cancel(self._stream_timer)
        self._stream_timer = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        if self.live:
            self._stream_down()

    def _bus_protocol(self) -> BusProtocol:
        if self._bus is None:
            self._bus = BusProtocol()
        return self._bus

    async def _first_open(self) -> None:
        """A stream tells only what happens after it opens (no replay without Last-Event-ID):
        once the first one is open, ``GET`` says what happened before. Later reconnects do
        the same already, after the loss. Called on every open: the stream is live from here."""
        self.live = True
        if not self._opened:
            self._opened = True
            await self.reconcile()
