"""MultiSafepay's WebSocket message bus, the protocol alone (sans-I/O, like h11 or the protocol
layer of ``websockets``): it builds the client's frames, reads the server's, and keeps the
bookkeeping (pending requests, subscriptions, heartbeat timing) and the timers of a connection
(heartbeat, the subscription's acknowledgement, silence). It never touches a socket or a clock:
the caller passes text in, gets text and parse results out, passes ``now`` in, and wakes the
protocol at :meth:`BusProtocol.next_deadline` (``poll_timers``), as h11 and ``websockets``' own
protocol layer leave timing to their caller.

Wire format (docs/simulator.md, "Event stream: WebSocket message bus", from MultiSafepay's
``message-bus`` client: src/index.ts, src/types/index.ts), JSON text frames:

* client -> server: ``{"id": "<16 hex>", "type": "subscribe", "channel": C, "filter": {}}``,
  ``{"id": ..., "type": "unsubscribe", "channel": C}``, ``{"id": ..., "type": "heartbeat"}``;
* server -> client: ``{"type": "ack", "replyId": ID}``,
  ``{"type": "error", "replyId": ID, "payload": {"message": "..."}}``,
  ``{"type": "event", "channel": C, "payload": {...}}``.

:meth:`BusProtocol.receive` never raises: whatever the server sends becomes one of
:class:`Acked`, :class:`Refused`, :class:`Unmatched`, :class:`BusEvent` or :class:`Malformed`,
for the caller to act on, log or skip.
"""

from __future__ import annotations

import json
import math
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

#: Seconds without any traffic, either way, after which the client sends a heartbeat.
HEARTBEAT_INTERVAL = 30.0


def heartbeat_interval_for(idle_timeout: float) -> float:
    """The heartbeat interval of a connection the server may not be silent on for
    ``idle_timeout`` seconds: ``HEARTBEAT_INTERVAL``, or two thirds of a shorter idle timeout,
    so the server's acknowledgement of a heartbeat arrives before a quiet, healthy connection
    would count as dead. (With a 3 s idle timeout and heartbeats after 30 s, the fault runner
    saw 15 of 12 quiet payments' bus connections declared silent and reopened.) At the
    default ``stream_idle_timeout`` (45 s) it is ``HEARTBEAT_INTERVAL``."""
    return min(HEARTBEAT_INTERVAL, idle_timeout * 2 / 3)


#: How many answered request ids are remembered, to tell "already answered" from "unknown".
_ANSWERED_MEMORY = 256

#: Longest server text quoted in a parse result (they end up in logs).
_EXCERPT = 120

RequestType = Literal["subscribe", "unsubscribe", "heartbeat"]


@dataclass(frozen=True, slots=True)
class Request:
    """A client frame that awaits its ``ack`` or ``error``."""

    id: str
    type: RequestType
    channel: str | None = None
    filter: Mapping[str, Any] | None = None
    sent_at: float = 0.0


# -- parse results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acked:
    """The server acknowledged ``request``."""

    request: Request


@dataclass(frozen=True, slots=True)
class Refused:
    """The server answered ``request`` with an error (e.g. an unknown channel)."""

    request: Request
    message: str


@dataclass(frozen=True, slots=True)
class Unmatched:
    """An ``ack``/``error`` whose ``replyId`` names no pending request.

    ``duplicate`` is true when the id was answered before (a repeated reply), false when it was
    never asked (or ``replyId`` is missing, e.g. the server's error about an unreadable frame).
    """

    kind: Literal["ack", "error"]
    reply_id: str | None
    message: str | None = None
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class BusEvent:
    """An ``event`` frame. ``subscribed`` tells whether the client asked for that channel."""

    channel: str
    payload: dict[str, Any]
    subscribed: bool = True


@dataclass(frozen=True, slots=True)
class Malformed:
    """A frame the client cannot read: log it and carry on."""

    reason: str
    excerpt: str


ParseResult = Acked | Refused | Unmatched | BusEvent | Malformed


@dataclass(frozen=True, slots=True)
class Expired:
    """A timer of the connection ran out: the connection is dead (say why, then drop it)."""

    reason: str


def _excerpt(value: str | bytes) -> str:
    if isinstance(value, bytes):
        value = value[: _EXCERPT * 4].decode("utf-8", "replace")
    text = value[:_EXCERPT]
    # Printable only: a log line must not be broken by the server's control characters.
    text = "".join(c if c.isprintable() else "\ufffd" for c in text)
    return text + ("…" if len(value) > _EXCERPT else "")


def _message_of(frame: Mapping[str, Any]) -> str:
    payload = frame.get("payload")
    message = payload.get("message") if isinstance(payload, dict) else None
    if isinstance(message, str) and message.strip():
        return _excerpt(message.strip())
    return "no message given"


def new_request_id() -> str:
    """16 lower-case hex digits, as MultiSafepay's own client sends."""
    return secrets.token_hex(8)


@dataclass
class BusProtocol:
    """The client side of one logical bus session, across reconnects.

    * frames: :meth:`subscribe`, :meth:`unsubscribe`, :meth:`heartbeat` return the text to send;
    * :meth:`receive` reads one server frame and returns a :data:`ParseResult`;
    * :attr:`pending` holds requests still awaiting their reply;
    * :attr:`subscriptions` holds the channels the client wants (with their filters), kept
      across a reconnect: :meth:`resubscribe_frames` gives the frames for a new connection;
    * :meth:`heartbeat_due` is true after ``heartbeat_interval`` seconds without traffic either
      way (every frame built or received counts as traffic at the ``now`` it was given).
    """

    heartbeat_interval: float = HEARTBEAT_INTERVAL
    new_id: Callable[[], str] = new_request_id
    pending: dict[str, Request] = field(default_factory=dict)
    #: channel -> filter, in subscription order.
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Channels whose current subscription the server acknowledged.
    confirmed: set[str] = field(default_factory=set)
    last_traffic: float | None = None
    _answered: OrderedDict[str, None] = field(default_factory=OrderedDict, repr=False)
    # The timers of the current connection (see open_connection).
    _ours: str | None = field(default=None, repr=False)
    _subscribed: bool = field(default=False, repr=False)
    _ack_deadline: float = field(default=math.inf, repr=False)
    _ack_timeout: float = field(default=math.inf, repr=False)
    _idle_timeout: float = field(default=math.inf, repr=False)
    _quiet_since: float = field(default=0.0, repr=False)

    # -- client frames --------------------------------------------------------------------------

    def subscribe(
        self, channel: str, filter: Mapping[str, Any] | None = None, *, now: float
    ) -> str:
        """The frame that subscribes ``channel``; remembered for :meth:`resubscribe_frames`."""
        _check_channel(channel)
        flt = dict(filter or {})
        json.dumps(flt)  # a filter the wire cannot carry is the caller's bug: fail here, loudly
        self.subscriptions[channel] = flt
        self.confirmed.discard(channel)
        return self._request("subscribe", now, channel=channel, filter=flt)

    def unsubscribe(self, channel: str, *, now: float) -> str:
        """The frame that unsubscribes ``channel``; it is no longer re-subscribed."""
        _check_channel(channel)
        self.subscriptions.pop(channel, None)
        self.confirmed.discard(channel)
        return self._request("unsubscribe", now, channel=channel)

    def heartbeat(self, *, now: float) -> str:
        return self._request("heartbeat", now)

    def _request(
        self,
        kind: RequestType,
        now: float,
        channel: str | None = None,
        filter: dict[str, Any] | None = None,
    ) -> str:
        request_id = self._fresh_id()
        self.pending[request_id] = Request(request_id, kind, channel, filter, now)
        frame: dict[str, Any] = {"id": request_id, "type": kind}
        if channel is not None:
            frame["channel"] = channel
        if kind == "subscribe":
            frame["filter"] = filter or {}
        self.last_traffic = now
        return json.dumps(frame, separators=(",", ":"))

    def _fresh_id(self) -> str:
        # Never the id of a pending request (its reply would be ambiguous); preferably not one
        # answered lately either (a late duplicate reply would look like an answer).
        for attempt in range(1000):
            request_id = self.new_id()
            if request_id in self.pending:
                continue
            if attempt < 100 and request_id in self._answered:
                continue
            return request_id
        raise RuntimeError("the request id factory keeps returning ids in use")

    # -- connections ----------------------------------------------------------------------------

    def connection_lost(self) -> list[Request]:
        """The connection is gone: its pending requests will never be answered. Returns them."""
        abandoned = list(self.pending.values())
        self.pending.clear()
        self.confirmed.clear()
        self._ours, self._subscribed = None, False
        self._ack_deadline = self._idle_timeout = math.inf
        return abandoned

    def resubscribe_frames(self, *, now: float) -> list[str]:
        """A new connection is open: the frames that subscribe every wanted channel again.

        Requests still pending from the previous connection are abandoned first (see
        :meth:`connection_lost`); the heartbeat clock restarts at ``now``.
        """
        self.connection_lost()
        self.last_traffic = now
        wanted = list(self.subscriptions.items())
        return [self.subscribe(channel, flt, now=now) for channel, flt in wanted]

    # -- a connection's timers -------------------------------------------------------------------

    def open_connection(
        self, channel: str, *, now: float, ack_timeout: float, idle_timeout: float
    ) -> list[str]:
        """A new connection is open: the frames to send first (every wanted channel again, and
        ``channel``), and its timers start: ``channel``'s subscription must be acknowledged
        within ``ack_timeout``, and the server may not be silent for ``idle_timeout``."""
        if ack_timeout <= 0 or idle_timeout <= 0:
            raise ValueError("timeouts must be positive")
        frames = self.resubscribe_frames(now=now)
        if channel not in self.subscriptions:
            frames.append(self.subscribe(channel, now=now))
        self._ours = next(
            r.id for r in self.pending.values() if r.type == "subscribe" and r.channel == channel
        )
        self._subscribed = False
        self._ack_timeout, self._ack_deadline = ack_timeout, now + ack_timeout
        self._idle_timeout, self._quiet_since = idle_timeout, now
        return frames

    @property
    def subscribed(self) -> bool:
        """The subscription of :meth:`open_connection` was acknowledged on this connection."""
        return self._subscribed

    def next_deadline(self) -> float:
        """When :meth:`poll_timers` has something to do next (``math.inf``: nothing)."""
        deadline = min(self._quiet_since + self._idle_timeout, self.next_heartbeat_at or math.inf)
        return deadline if self._subscribed else min(deadline, self._ack_deadline)

    def poll_timers(self, now: float) -> str | Expired | None:
        """At or after :meth:`next_deadline`: a heartbeat frame to send, the connection's
        expiry, or nothing yet. Call again after sending a frame (more may be due)."""
        if not self._subscribed and now >= self._ack_deadline:
            return Expired(
                f"message bus did not acknowledge the subscription within {self._ack_timeout:g} s"
            )
        if now >= self._quiet_since + self._idle_timeout:  # the same sum as next_deadline()
            return Expired(f"message bus silent for {self._idle_timeout:g} s")
        if self.heartbeat_due(now):
            return self.heartbeat(now=now)
        return None

    def caught_up(self, now: float) -> None:
        """The caller is back from handling a frame: time it spent is not server silence
        (frames may have waited in the buffer meanwhile)."""
        self._quiet_since = max(self._quiet_since, now)

    # -- heartbeat ------------------------------------------------------------------------------

    @property
    def next_heartbeat_at(self) -> float | None:
        """When a heartbeat becomes due, or None before any traffic."""
        if self.last_traffic is None:
            return None
        return self.last_traffic + self.heartbeat_interval

    def heartbeat_due(self, now: float) -> bool:
        due = self.next_heartbeat_at
        return due is not None and now >= due

    # -- server frames --------------------------------------------------------------------------

    def receive(self, data: str | bytes, *, now: float) -> ParseResult:
        """Read one server frame. Never raises."""
        self.last_traffic = now
        self._quiet_since = max(self._quiet_since, now)
        try:
            result = self._parse(data)
        except Exception as exc:  # noqa: BLE001  # pragma: no cover - _parse is total; belt and braces
            return Malformed(f"unreadable frame ({type(exc).__name__})", "")
        if isinstance(result, Acked) and result.request.id == self._ours:
            self._subscribed = True
        return result

    def _parse(self, data: str | bytes) -> ParseResult:
        if isinstance(data, (bytes, bytearray, memoryview)):
            try:
                text = bytes(data).decode("utf-8")
            except UnicodeDecodeError:
                return Malformed("not UTF-8", _excerpt(bytes(data)))
        elif isinstance(data, str):
            text = data
        else:
            return Malformed(f"not text but {type(data).__name__}", "")
        try:
            frame = json.loads(text)
        except (ValueError, RecursionError):
            return Malformed("not JSON", _excerpt(text))
        if not isinstance(frame, dict):
            return Malformed(f"not a JSON object but {type(frame).__name__}", _excerpt(text))
        kind = frame.get("type")
        if kind is None:
            return Malformed("no type", _excerpt(text))
        if kind == "event":
            return self._event(frame, text)
        if kind in ("ack", "error"):
            return self._reply(kind, frame, text)
        return Malformed("unknown type", _excerpt(text))

    def _event(self, frame: dict[str, Any], text: str) -> ParseResult:
        channel = frame.get("channel")
        payload = frame.get("payload")
        if not isinstance(channel, str) or not channel:
            return Malformed("event without a channel", _excerpt(text))
        if not isinstance(payload, dict):
            return Malformed("event payload is not an object", _excerpt(text))
        return BusEvent(channel, payload, subscribed=channel in self.subscriptions)

    def _reply(
        self, kind: Literal["ack", "error"], frame: dict[str, Any], text: str
    ) -> ParseResult:
        reply_id = frame.get("replyId")
        message = _message_of(frame) if kind == "error" else None
        if reply_id is not None and not isinstance(reply_id, str):
            return Malformed(f"{kind} with a non-text replyId", _excerpt(text))
        request = self.pending.pop(reply_id, None) if reply_id is not None else None
        if request is None:
            duplicate = reply_id is not None and reply_id in self._answered
            return Unmatched(kind, reply_id, message, duplicate=duplicate)
        self._remember_answered(request.id)
        if kind == "ack":
            if request.type == "subscribe" and request.channel in self.subscriptions:
                self.confirmed.add(request.channel)
            return Acked(request)
        assert message is not None
        # A refused subscription: the server will not send this channel, so stop wanting it (a
        # reconnect would only be refused again). A later subscribe() asks anew.
        if (
            request.type == "subscribe"
            and request.channel is not None
            and not self._other_pending_subscribe(request.channel)
        ):
            self.subscriptions.pop(request.channel, None)
            self.confirmed.discard(request.channel)
        return Refused(request, message)

    def _other_pending_subscribe(self, channel: str) -> bool:
        return any(r.type == "subscribe" and r.channel == channel for r in self.pending.values())

    def _remember_answered(self, request_id: str) -> None:
        self._answered[request_id] = None
        while len(self._answered) > _ANSWERED_MEMORY:
            self._answered.popitem(last=False)


def _check_channel(channel: str) -> None:
    if not isinstance(channel, str) or not channel:
        raise ValueError("a channel is a non-empty string")
