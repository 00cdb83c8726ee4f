"""Following one payment's upstream stream (SSE or the message bus), for
:class:`~bridge.daemon.payment.PaymentSession`: the one task a payment holds.

It reconnects with backoff, asks ``GET`` after the first open and after every loss (never relying
on ``Last-Event-ID``), and returns once the stream cannot be used any more (refused, the events
token expired: the session's polls carry on) or the order is final.
"""

from __future__ import annotations

import time
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import anyio

from bridge import metrics
from bridge.core.backoff import Backoff
from bridge.core.events import Source
from bridge.core.normalize import MalformedPayload, Observation, from_stream_message
from bridge.daemon.context import SessionContext
from bridge.multisafepay.bus import BusProtocol, heartbeat_interval_for
from bridge.multisafepay.sse import StreamError, StreamRejected, sse_messages
from bridge.multisafepay.tokens import token_expiry
from bridge.multisafepay.websocket import bus_messages
from bridge.redis.registry import SessionRecord

if TYPE_CHECKING:
    from bridge.config import MultiSafepayConfig

#: Events of the stream the bridge acts on; others (e.g. ``session.qr``) are logged and skipped.
ORDER_EVENT = "session.order"


class StreamFollower:
    """The stream half of a payment session (a mixin: the session holds the state)."""

    __slots__ = ("ctx", "record", "reconnects", "_bus", "_opened", "live")

    ctx: SessionContext
    record: SessionRecord
    reconnects: int
    _bus: BusProtocol | None
    _opened: bool
    #: The stream is connected now (accepted, not lost since): quiet polls wait longer.
    live: bool

    @property
    def final(self) -> bool:
        raise NotImplementedError

    def _log(self, level: str, event: str, **fields: Any) -> None:
        raise NotImplementedError

    async def observe(self, obs: Observation) -> None:
        raise NotImplementedError

    async def reconcile(self) -> None:
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

    async def _follow_stream(self) -> None:
        if not self._stream_usable():
            self._log("info", "stream.unavailable", reason="no stream URL or token; polling")
            return
        backoff = self.ctx.backoff()
        upstream = self.ctx.upstream
        while self._stream_usable():
            try:
                await self._read_stream(backoff, upstream)
                reason = "stream ended without a final status"
            except StreamRejected as exc:
                self._log("warning", "stream.rejected", error=str(exc))
                metrics.UPSTREAM_ERRORS.labels("stream_rejected").inc()
                return  # the poller carries on
            except StreamError as exc:
                reason = str(exc)
            finally:
                if self.live:
                    self._stream_down()
            if self.final:
                return
            self.reconnects += 1
            metrics.UPSTREAM_RECONNECTS.labels(str(self._transport() or "none")).inc()
            self._log("info", "stream.lost", reason=reason, reconnects=self.reconnects)
            await self.reconcile()  # never rely on Last-Event-ID
            if self.final:
                return
            await anyio.sleep(backoff.next())
        self._log("info", "stream.token_expired", note="polling until final")

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
                heartbeat_interval=heartbeat_interval_for(upstream.stream_idle_timeout),
                protocol=self._bus_protocol(),
                on_open=self._first_open,
                tls=self.ctx.tls,
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
                tls=self.ctx.tls,
            )
        async with aclosing(messages) as stream:
            async for message in stream:
                backoff.reset()
                if message.id:
                    self.record = r = r.with_changes(last_event_id=message.id)
                if message.event != ORDER_EVENT:
                    self._log("info", "stream.skipped_event", event_name=message.event[:64])
                    continue
                try:
                    obs = from_stream_message(message.data, source)
                except MalformedPayload as exc:
                    self._log("warning", "upstream.malformed", source="stream", error=str(exc))
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
        the same already, after the loss. Called on every open: the stream is live from here."""
        self.live = True
        if not self._opened:
            self._opened = True
            await self.reconcile()
