"""One order's WebSocket message bus (``events_url``), read with ``websockets``.

Same contract as :func:`bridge.multisafepay.sse.sse_messages`, so the session treats both
transports alike: an async generator of :class:`StreamMessage` that ends when the server closes
normally and raises :class:`StreamError` (reconnect, then ``GET`` the order) or
:class:`StreamRejected` (the token or the subscription is refused: reconnecting will not help)
for anything else. Reconnecting is the caller's job.

The protocol bookkeeping and its timers (heartbeat, acknowledgement, silence) are
:class:`bridge.multisafepay.bus.BusProtocol` (pure); this module only moves its frames and sleeps
until the protocol's next deadline by timing out the receive, so no background task outlives the
generator (``websockets.asyncio`` runs on asyncio only).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing, suppress
from urllib.parse import quote, urlsplit

import anyio
import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.frames import CloseCode

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
from bridge.multisafepay.sse import MAX_MESSAGE_BYTES, StreamError, StreamMessage, StreamRejected

log = structlog.get_logger("bridge.bus")

#: Close codes meaning "not allowed": 1008 (policy violation, what MultiSafepay's bus and the
#: simulator send for a bad token) and the common application codes for 401/403.
REJECTING_CLOSE_CODES = frozenset({CloseCode.POLICY_VIOLATION, 4001, 4003, 4401, 4403})

#: Seconds the closing handshake may take when the generator is left.
CLOSE_TIMEOUT = 2.0


def bus_url(url: str, token: str) -> str:
    """``url`` with ``token=TOKEN`` in its query (``?`` or ``&`` as the URL needs)."""
    sep = "&" if urlsplit(url).query else "?"
    if url.endswith(("?", "&")):
        sep = ""
    return f"{url}{sep}token={quote(token, safe='')}"


def _check_url(url: str) -> None:
    # Never quote the URL in an error: with the token appended it is a secret.
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as exc:
        raise StreamRejected("invalid message bus URL") from exc
    if scheme not in ("ws", "wss"):
        raise StreamRejected(f"message bus URL scheme must be ws or wss, not {scheme[:16]!r}")


def _closed_error(exc: ConnectionClosed, doing: str) -> StreamError:
    """Map a close to StreamRejected (policy) or StreamError (anything else)."""
    frame = exc.rcvd or exc.sent
    if frame is None:
        return StreamError(f"message bus connection lost while {doing} (no close frame)")
    reason = "".join(c for c in frame.reason[:120] if c.isprintable())
    text = f"message bus closed while {doing}: code {frame.code}" + (
        f" ({reason})" if reason else ""
    )
    if exc.rcvd is not None and exc.rcvd.code in REJECTING_CLOSE_CODES:
        return StreamRejected(text)
    if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG and exc.rcvd is None:
        return StreamError(f"message bus sent a frame over {MAX_MESSAGE_BYTES} bytes")
    return StreamError(text)


async def bus_messages(
    url: str,
    token: str,
    *,
    channel: str = "session.order",
    connect_timeout: float = 10.0,
    idle_timeout: float = 45.0,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    clock: Callable[[], float] = anyio.current_time,
    protocol: BusProtocol | None = None,
    on_open: Callable[[], Awaitable[None]] | None = None,
    max_size: int = MAX_MESSAGE_BYTES,
) -> AsyncGenerator[StreamMessage, None]:
    """Subscribe ``channel`` on the bus at ``url`` and yield its events until the bus closes.

    Each ``event`` frame of ``channel`` is yielded as ``StreamMessage(event=channel,
    data=json.dumps(payload), id=None)``. Frames of other channels, malformed frames and stray
    replies are logged and skipped. A heartbeat is sent after ``heartbeat_interval`` seconds
    without traffic; ``idle_timeout`` seconds without any frame from the server is a dead
    connection. ``clock`` must be in seconds on the event loop's timescale (it times the waits).

    Pass the same ``protocol`` across reconnects to re-subscribe every channel it holds (and to
    keep its request ids unique); by default each call starts afresh.

    Raises :class:`StreamRejected` for a refused handshake (HTTP 401/403), a policy close (1008),
    an ``error`` reply to the subscription, or an unusable URL; :class:`StreamError` for anything
    else that ends the bus other than a normal close (1000) after the subscription was
    acknowledged. Use with ``contextlib.aclosing``.
    """
    _check_url(url)
    if idle_timeout <= 0 or heartbeat_interval <= 0 or connect_timeout <= 0:
        raise ValueError("timeouts must be positive")
    proto = protocol if protocol is not None else BusProtocol(heartbeat_interval=heartbeat_interval)
    proto.heartbeat_interval = heartbeat_interval
    try:
        ws = await connect(
            bus_url(url, token),
            open_timeout=connect_timeout,
            close_timeout=CLOSE_TIMEOUT,  # then the TCP connection is dropped
            max_size=max_size,
            max_queue=16,
            compression=None,  # ~200-byte messages; saves memory per connection
            # The simulator (uvicorn) and any RFC 6455 server answer pings: keep the library's
            # keepalive as a second watchdog for a half-open TCP connection.
            ping_interval=20.0,
            ping_timeout=min(20.0, idle_timeout),
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise StreamRejected(f"message bus refused the events token (HTTP {status})") from None
        raise StreamError(f"message bus answered HTTP {status}") from None
    except InvalidURI:
        raise StreamRejected("invalid message bus URL") from None
    except InvalidHandshake as exc:
        raise StreamError(f"message bus handshake failed: {type(exc).__name__}") from None
    except TimeoutError:
        raise StreamError(f"message bus did not open within {connect_timeout:g} s") from None
    except OSError as exc:
        raise StreamError(
            f"message bus unreachable: {str(exc)[:200] or type(exc).__name__}"
        ) from None

    try:
        async with aclosing(
            _follow(ws, proto, channel, connect_timeout, idle_timeout, clock, on_open)
        ) as messages:
            async for message in messages:
                yield message
    finally:
        # A normal close (1000) whichever way the generator is left: the caller's early exit,
        # a cancellation or an error of ours is no server fault (``async with ws`` would say
        # 1011). Shielded but bounded, so a cancelled session still closes its socket cleanly.
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT), suppress(OSError):
            await ws.close()


async def _follow(
    ws: ClientConnection,
    proto: BusProtocol,
    channel: str,
    connect_timeout: float,
    idle_timeout: float,
    clock: Callable[[], float],
    on_open: Callable[[], Awaitable[None]] | None = None,
) -> AsyncGenerator[StreamMessage, None]:
    # A new connection: whatever the protocol held (after a reconnect) is subscribed again. The
    # protocol keeps the timers; this loop only sleeps until its next deadline or a frame.
    frames = proto.open_connection(
        channel, now=clock(), ack_timeout=connect_timeout, idle_timeout=idle_timeout
    )
    try:
        for frame in frames:
            await ws.send(frame)
        while True:
            due = proto.poll_timers(clock())
            if isinstance(due, Expired):
                raise StreamError(due.reason)
            if due is not None:
                await ws.send(due)  # a heartbeat
                continue
            data: str | bytes | None = None
            # recv() is cancellation-safe in websockets.asyncio: a timed-out wait loses nothing.
            with anyio.move_on_after(max(0.0, proto.next_deadline() - clock())):
                data = await ws.recv()
            if data is None:
                continue
            was_subscribed = proto.subscribed
            message = _act_on(proto.receive(data, now=clock()), channel)
            if message is not None:
                yield message
            elif proto.subscribed and not was_subscribed:
                log.debug("bus.subscribed", channel=channel)
                if on_open is not None:
                    await on_open()
            proto.caught_up(clock())
    except ConnectionClosedOK as exc:
        subscribed = proto.subscribed
        proto.connection_lost()
        if subscribed and exc.rcvd is not None and exc.rcvd.code == CloseCode.NORMAL_CLOSURE:
            return  # the server ended the stream (e.g. after the final status)
        raise _closed_error(exc, _doing(subscribed)) from None
    except ConnectionClosed as exc:
        subscribed = proto.subscribed
        proto.connection_lost()
        raise _closed_error(exc, _doing(subscribed)) from None
    except OSError as exc:
        proto.connection_lost()
        raise StreamError(
            f"message bus connection failed: {str(exc)[:200] or type(exc).__name__}"
        ) from None
    except BaseException:
        proto.connection_lost()
        raise


def _doing(subscribed: bool) -> str:
    return "reading" if subscribed else "subscribing"


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
