"""One order's WebSocket message bus (``events_url``), read by a small asyncio protocol.

Same contract as :func:`bridge.multisafepay.sse.sse_messages`, so the session treats both
transports alike: an async generator of :class:`StreamMessage` that ends when the server closes
normally and raises :class:`StreamError` (reconnect, then ``GET`` the order) or
:class:`StreamRejected` (the token or the subscription is refused: reconnecting will not help)
for anything else. Reconnecting is the caller's job.

Like the SSE reader, each connection is an :class:`asyncio.Protocol` on the shared event loop
feeding two sans-I/O layers: the WebSocket protocol of the ``websockets`` library
(:class:`websockets.client.ClientProtocol`: the opening handshake, framing and masking, size
limits, answering pings, the closing handshake) and the bus protocol
(:class:`bridge.multisafepay.bus.BusProtocol`: subscriptions, replies, and the timers for the
heartbeat, the acknowledgement and silence). Compared with a ``websockets.asyncio`` connection
per order (its message assembler, keepalive task, futures and locks), a connection holds a few
objects and no task: the generator's reader waits on one future and one loop timer, set to the
bus protocol's next deadline.

Not done here, on purpose: WebSocket pings of our own (the bus heartbeat, which the server
answers, and the silence timer already find a dead connection; the server's pings are answered),
HTTP proxies (as for the SSE streams), redirects, compression (messages are ~200 bytes).
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import cast
from urllib.parse import quote, urlsplit

import anyio
import structlog
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import BINARY, CONT, TEXT, Close, CloseCode, Frame
from websockets.http11 import Response
from websockets.protocol import CONNECTING, OPEN
from websockets.uri import WebSocketURI, parse_uri

from bridge.multisafepay.bus import (
    HEARTBEAT_INTERVAL,
    BusEvent,
    BusProtocol,
    Expired,
    Malformed,
    ParseResult,
    Refused,
    Unmatched,
)
from bridge.multisafepay.sse import (
    MAX_MESSAGE_BYTES,
    USER_AGENT,
    StreamError,
    StreamMessage,
    StreamRejected,
)
from bridge.multisafepay.tls import client_context

log = structlog.get_logger("bridge.bus")

#: Close codes meaning "not allowed": 1008 (policy violation, what MultiSafepay's bus and the
#: simulator send for a bad token) and the common application codes for 401/403.
REJECTING_CLOSE_CODES = frozenset({CloseCode.POLICY_VIOLATION, 4001, 4003, 4401, 4403})

#: Seconds the closing handshake may take when the generator is left.
CLOSE_TIMEOUT = 2.0

#: Messages received but not yet taken before the socket stops being read (flow control).
MAX_QUEUED = 16

#: Bytes we may have written that the server has not read (pongs to its pings, heartbeats)
#: before the connection is given up: a server that never reads cannot grow our buffers.
MAX_UNSENT_BYTES = 64 * 1024


def bus_url(url: str, token: str) -> str:
    """``url`` with ``token=TOKEN`` in its query (``?`` or ``&`` as the URL needs)."""
    sep = "&" if urlsplit(url).query else "?"
    if url.endswith(("?", "&")):
        sep = ""
    return f"{url}{sep}token={quote(token, safe='')}"


def _parse_url(url: str, token: str) -> WebSocketURI:
    # Never quote the URL in an error: with the token appended it is a secret.
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as exc:
        raise StreamRejected("invalid message bus URL") from exc
    if scheme not in ("ws", "wss"):
        raise StreamRejected(f"message bus URL scheme must be ws or wss, not {scheme[:16]!r}")
    try:
        return parse_uri(bus_url(url, token))
    except (InvalidURI, ValueError):  # ValueError: a bad port; UnicodeError: a bad IDNA host
        raise StreamRejected("invalid message bus URL") from None


class _BusConnection(asyncio.Protocol):
    """One bus socket: bytes -> ``websockets``' client protocol -> :attr:`messages`.

    Callbacks only parse and record; :meth:`wake` tells the one reader waiting.
    """

    __slots__ = ("ws", "transport", "messages", "lost", "failure", "_parts", "_waiter", "_paused")

    def __init__(self, uri: WebSocketURI, max_size: int) -> None:
        self.ws = ClientProtocol(uri, max_size=max_size)
        self.transport: asyncio.Transport | None = None
        #: Whole data messages (text or binary), as bytes: the bus protocol decodes them. A
        #: list, not a deque: at most MAX_QUEUED long, and an empty deque costs ~600 bytes.
        self.messages: list[bytes] = []
        self.lost = False
        #: Why we gave the connection up ourselves (not a close frame), if we did.
        self.failure: str | None = None
        self._parts: list[bytes] | None = None  # a fragmented message being assembled
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is one without subclassing asyncio.Transport).
        self.transport = cast(asyncio.Transport, transport)
        request = self.ws.connect()
        request.headers["User-Agent"] = USER_AGENT
        self.ws.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        self._read_events()

    def eof_received(self) -> bool:
        self.ws.receive_eof()
        self._read_events()
        return False  # close our side too: after the server's EOF there is nothing to say

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.receive_eof()  # idempotent; the protocol's state becomes CLOSED
        self.ws.events_received()
        self.ws.data_to_send()  # nowhere to send it any more
        self.lost = True
        self.transport = None
        self.wake()

    # -- parsing ----------------------------------------------------------------------------

    def _read_events(self) -> None:
        for event in self.ws.events_received():
            if isinstance(event, Frame):
                self._on_frame(event)
            elif isinstance(event, Response):
                # Checked already (ws.state and ws.handshake_exc tell how it went); the parser
                # keeps this object for the connection's life: drop its headers (~2 KB).
                event.headers, event.body = Headers(), b""
        self._flush()  # pongs, the echo of a close frame, EOF
        transport = self.transport
        if len(self.messages) >= MAX_QUEUED and transport is not None and not self._paused:
            self._paused = True
            transport.pause_reading()
        self.wake()

    def _on_frame(self, frame: Frame) -> None:
        # Control frames (ping, pong, close) are the library's business; sizes are bounded by
        # its max_size, fragments included (it fails the connection with 1009 beyond).
        if frame.opcode is TEXT or frame.opcode is BINARY:
            if frame.fin:
                self.messages.append(bytes(frame.data))
            else:
                self._parts = [bytes(frame.data)]
        elif frame.opcode is CONT and self._parts is not None:
            self._parts.append(bytes(frame.data))
            if frame.fin:
                self.messages.append(b"".join(self._parts))
                self._parts = None

    def _flush(self) -> None:
        transport = self.transport
        for data in self.ws.data_to_send():
            if transport is None:
                continue
            if data:
                transport.write(data)
            elif not transport.can_write_eof():  # TLS: no half-close
                transport.close()
            else:  # the end of our side
                try:
                    transport.write_eof()
                except (OSError, RuntimeError):  # the socket is gone (uvloop: RuntimeError)
                    transport.close()
        if transport is not None and transport.get_write_buffer_size() > MAX_UNSENT_BYTES:
            self.failure = f"message bus did not read {MAX_UNSENT_BYTES} bytes we sent"
            transport.abort()

    # -- the reader's side ------------------------------------------------------------------

    def send(self, text: str) -> None:
        """Send a text message; nothing once the connection is closing (the reader then finds
        it :attr:`ended` and says why)."""
        if self.ws.state is OPEN and self.transport is not None:
            self.ws.send_text(text.encode())
            self._flush()

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, seconds: float) -> None:
        """Until something happens, or ``seconds`` pass: one future and one timer of the
        loop's own scheduler (no cancel scope per message: less garbage for the collector)."""
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(max(0.0, seconds), self.wake) if seconds < math.inf else None
        try:
            await waiter  # a cancellation (anyio's included) cancels this await
        finally:
            if timer is not None:
                timer.cancel()
            self._waiter = None

    def take(self) -> bytes:
        message = self.messages.pop(0)
        if self._paused and len(self.messages) < MAX_QUEUED // 4 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return message

    @property
    def ended(self) -> bool:
        """Nothing more will come: a close frame was received or sent, or the socket is gone."""
        return self.lost or self.failure is not None or self.ws.state is not OPEN

    async def aclose(self, *, wait: bool = True) -> None:
        """A normal close (1000) if the connection is still open, then wait (bounded by
        :data:`CLOSE_TIMEOUT`, shielded from cancellation) for the server to close the TCP
        connection, as a WebSocket client should; then drop it whatever happened. Not
        ``wait``: a server silent past the idle timeout will not answer a close either, and
        waiting for it would only delay the reconnect (by 2 s in the fault runner's
        ``halfopen-bus``)."""
        try:
            if self.ws.state is OPEN and self.transport is not None:
                self.ws.send_close(CloseCode.NORMAL_CLOSURE)
                self._flush()
            if wait and self.ws.state is not CONNECTING:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + CLOSE_TIMEOUT
                with anyio.CancelScope(shield=True):
                    while not self.lost and (left := deadline - loop.time()) > 0:
                        await self.wait(left)
        finally:
            if self.transport is not None:
                self.transport.abort()


async def _open(
    uri: WebSocketURI, connect_timeout: float, max_size: int, tls: ssl.SSLContext | None
) -> _BusConnection:
    """TCP (TLS for wss: ``tls``, else the default context) and the opening handshake, within
    ``connect_timeout`` together."""
    loop = asyncio.get_running_loop()
    conn = _BusConnection(uri, max_size)
    try:
        with anyio.fail_after(connect_timeout):
            await loop.create_connection(
                lambda: conn,
                uri.host,
                uri.port,
                ssl=(tls or client_context()) if uri.secure else None,
                server_hostname=uri.host if uri.secure else None,
            )
            # Until the handshake's answer (a refusal leaves the state CONNECTING).
            ws = conn.ws
            while ws.state is CONNECTING and ws.handshake_exc is None and not conn.lost:
                await conn.wait(math.inf)
    except TimeoutError:
        await conn.aclose()
        raise StreamError(f"message bus did not open within {connect_timeout:g} s") from None
    except OSError as exc:
        raise StreamError(
            f"message bus unreachable: {str(exc)[:200] or type(exc).__name__}"
        ) from None
    except BaseException:
        await conn.aclose()
        raise
    if conn.ws.handshake_exc is None and conn.ws.state is not CONNECTING:
        return conn  # open (or already closing: the reader will say why)
    await conn.aclose()
    raise _handshake_error(conn.ws.handshake_exc)


def _handshake_error(exc: Exception | None) -> StreamError:
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in (401, 403):
            return StreamRejected(f"message bus refused the events token (HTTP {status})")
        return StreamError(f"message bus answered HTTP {status}")
    if isinstance(exc, InvalidHandshake):
        return StreamError(f"message bus handshake failed: {type(exc).__name__}")
    return StreamError("message bus handshake failed: InvalidMessage (connection closed)")


def _end_error(conn: _BusConnection, subscribed: bool) -> StreamError | None:
    """How the bus ended: None for the server's normal close after our subscription, else the
    error to raise, :class:`StreamRejected` for a policy close."""
    doing = "reading" if subscribed else "subscribing"
    if conn.failure is not None:
        return StreamError(conn.failure)
    rcvd, sent = conn.ws.close_rcvd, conn.ws.close_sent
    if rcvd is not None and rcvd.code == CloseCode.NORMAL_CLOSURE and subscribed:
        return None  # the server ended the stream (e.g. after the final status)
    if rcvd is None and sent is not None and sent.code == CloseCode.MESSAGE_TOO_BIG:
        return StreamError(f"message bus sent a frame over {conn.ws.max_message_size} bytes")
    frame: Close | None = rcvd or sent
    if frame is None:
        return StreamError(f"message bus connection lost while {doing} (no close frame)")
    reason = "".join(c for c in frame.reason[:120] if c.isprintable())
    text = f"message bus closed while {doing}: code {frame.code}" + (
        f" ({reason})" if reason else ""
    )
    if rcvd is not None and rcvd.code in REJECTING_CLOSE_CODES:
        return StreamRejected(text)
    return StreamError(text)


async def bus_messages(
    url: str,
    token: str,
    *,
    channel: str = "session.order",
    connect_timeout: float = 10.0,
    idle_timeout: float = 45.0,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    clock: Callable[[], float] | None = None,
    protocol: BusProtocol | None = None,
    on_open: Callable[[], Awaitable[None]] | None = None,
    max_size: int = MAX_MESSAGE_BYTES,
    tls: ssl.SSLContext | None = None,
) -> AsyncGenerator[StreamMessage, None]:
    """Subscribe ``channel`` on the bus at ``url`` and yield its events until the bus closes.

    Each ``event`` frame of ``channel`` is yielded as ``StreamMessage(event=channel,
    data=json.dumps(payload), id=None)``. Frames of other channels, malformed frames and stray
    replies are logged and skipped. A heartbeat is sent after ``heartbeat_interval`` seconds
    without traffic; ``idle_timeout`` seconds without any message from the server is a dead
    connection. ``clock`` is in seconds (the protocol's timers run on it); by default the
    event loop's own (``loop.time``: anyio.current_time is that, through several calls).

    Pass the same ``protocol`` across reconnects to re-subscribe every channel it holds (and to
    keep its request ids unique); by default each call starts afresh. ``on_open`` is awaited
    once the subscription is acknowledged. ``tls``: the context of a ``wss`` bus (as
    :func:`bridge.multisafepay.sse.sse_messages` takes it).

    Raises :class:`StreamRejected` for a refused handshake (HTTP 401/403), a policy close (1008),
    an ``error`` reply to the subscription, or an unusable URL; :class:`StreamError` for anything
    else that ends the bus other than a normal close (1000) after the subscription was
    acknowledged. Use with ``contextlib.aclosing``: leaving it closes the bus normally (1000).
    """
    uri = _parse_url(url, token)
    if idle_timeout <= 0 or heartbeat_interval <= 0 or connect_timeout <= 0:
        raise ValueError("timeouts must be positive")
    proto = protocol if protocol is not None else BusProtocol(heartbeat_interval=heartbeat_interval)
    proto.heartbeat_interval = heartbeat_interval
    clock = clock or asyncio.get_running_loop().time
    conn = await _open(uri, connect_timeout, max_size, tls)
    # A new connection: whatever the protocol held (after a reconnect) is subscribed again. The
    # protocol keeps the timers; this loop only sleeps until its next deadline or a message.
    frames = proto.open_connection(
        channel, now=clock(), ack_timeout=connect_timeout, idle_timeout=idle_timeout
    )
    silent = False  # expired (no ack, or silence): the server will not answer a close either
    try:
        for frame in frames:
            conn.send(frame)
        while True:
            now = clock()
            due = proto.poll_timers(now)
            if isinstance(due, Expired):
                silent = True
                raise StreamError(due.reason)
            if due is not None and not conn.ended:
                conn.send(due)  # a heartbeat
                continue
            if conn.messages:
                was_subscribed = proto.subscribed
                message = _act_on(proto.receive(conn.take(), now=now), channel)
                if message is not None:
                    yield message
                elif proto.subscribed and not was_subscribed:
                    log.debug("bus.subscribed", channel=channel)
                    if on_open is not None:
                        await on_open()
                proto.caught_up(clock())
                continue
            if conn.ended:
                error = _end_error(conn, proto.subscribed)
                if error is None:
                    return
                raise error
            await conn.wait(proto.next_deadline() - now)  # nothing awaited since `now`
    finally:
        # Whichever way the generator is left (the caller's early exit, a cancellation, an
        # error of ours): a normal close, as no server fault (1000).
        proto.connection_lost()
        await conn.aclose(wait=not silent)


def _act_on(result: ParseResult, channel: str) -> StreamMessage | None:
    """What one parsed server frame means here: a message to yield, a refusal of our
    subscription (raised), or something to log and skip."""
    if isinstance(result, BusEvent):
        if result.channel == channel:
            return StreamMessage(event=channel, data=json.dumps(result.payload), id=None)
        log.info("bus.skipped_event", channel=result.channel[:64], subscribed=result.subscribed)
    elif isinstance(result, Refused):
        if result.request.type == "subscribe" and result.request.channel == channel:
            raise StreamRejected(
                f"message bus refused the subscription to {channel}: {result.message}"
            )
        log.warning(
            "bus.refused",
            request=result.request.type,
            channel=result.request.channel,
            error=result.message,
        )
    elif isinstance(result, Unmatched):
        log.warning(
            "bus.unmatched_reply",
            kind=result.kind,
            duplicate=result.duplicate,
            error=result.message,
        )
    elif isinstance(result, Malformed):
        log.warning("bus.malformed_frame", reason=result.reason, excerpt=result.excerpt)
    return None
