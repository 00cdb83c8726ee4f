"""Following the answer to one command, as the README tells a till to: subscribe to the
terminal's channel *before* writing the command (a fast answer cannot be missed), remember the
``stream_id`` of the last event handled, and after every (re)subscription read the durable
stream from there (``XREAD``) before going on with pub/sub; events are de-duplicated by
``stream_id`` and ``event_id``. Used by ``pay``, ``cancel`` and ``refund --wait``.

In the cluster layout the channel is a shard channel: ``SSUBSCRIBE`` on the node serving its
slot, ``smessage`` pushes (:mod:`bridge.redis.cluster`); a subscription that node ends itself
(``sunsubscribe``: the slot moved) or loses (the node failed) is made again on the slot's
current master, and caught up from the stream like any reconnect.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from bridge.core.normalize import canonical_terminal_id
from bridge.redis.client import follow_master
from bridge.redis.cluster import dropped_type, message_type, subscribe_terminal, subscribed_type
from bridge.redis.keys import Keys
from bridge.till.daemons import no_reader
from bridge.till.output import Printer, describe_error, warn
from bridge.till.retry import CONNECTION_ERRORS, MASTER_CHECK_EVERY, Retrier
from bridge.till.tail import (
    decode_entry,
    first_entry_id,
    id_key,
    last_entry_id,
    later_id,
    xread_entries,
)

EXIT_COMPLETED = 0
EXIT_NOT_COMPLETED = 1
EXIT_NOT_SENT = 2
EXIT_UNKNOWN = 3
EXIT_INTERRUPTED = 130

#: How long ``--wait`` waits for its subscription to be confirmed before sending.
SUBSCRIBE_TIMEOUT = 5.0
#: After this many seconds without an answer, ``--wait`` checks that a daemon reads commands.
READERS_CHECK_AFTER = 2.0


class CommandWatch:
    """What ``pay``/``cancel``/``refund --wait`` knows about its command: events seen, last
    stream id, outcome. ``kind`` says which events answer the command:

    - ``pay``: the payment's final (``completed``: exit 0), or a failure of the pay;
    - ``refund``: the ``order.refund`` carrying the refund's command id (0), or its
      ``command.failed`` (1);
    - ``cancel``: the order's final (``cancelled``/``void``: 0, anything else: 1), or the
      cancel's ``command.failed`` (1).
    """

    def __init__(
        self,
        *,
        keys: Keys,
        terminal: str,
        command_id: str,
        order_id: str,
        printer: Printer,
        last_id: str = "0-0",
        kind: str = "pay",
    ) -> None:
        self.kind = kind
        self.keys = keys
        self.terminal = canonical_terminal_id(terminal)
        self.command_id = command_id
        self.order_id = order_id
        self.printer = printer
        #: the stream id of the last event handled: where a catch-up reads from
        self.last_id = last_id
        self.outcome: int | None = None
        self.final_event: dict[str, Any] | None = None
        self._seen_stream_ids: set[str] = set()
        self._seen_event_ids: set[str] = set()

    @property
    def stream(self) -> str:
        return self.keys.terminal_stream(self.terminal)

    @property
    def channel(self) -> str:
        return self.keys.terminal_channel(self.terminal)

    def is_mine(self, event: dict[str, Any]) -> bool:
        """An event that answers this command (it decides the outcome)."""
        command_id = event.get("command_id")
        if self.kind == "cancel":
            return command_id == self.command_id or (
                event.get("order_id") == self.order_id and bool(event.get("final"))
            )
        if command_id is not None or self.kind == "refund":
            return bool(command_id == self.command_id)
        # events of an order first seen through a webhook may lack the command id
        return event.get("order_id") == self.order_id and event.get("type") != "command.failed"

    def is_relevant(self, event: dict[str, Any]) -> bool:
        """Printed: this command's answers, and the other events of its order."""
        return self.is_mine(event) or event.get("order_id") == self.order_id

    def outcome_of(self, event: dict[str, Any]) -> int | None:
        """The exit code an event of :meth:`is_mine` decides, or None (not the end yet)."""
        kind, status = event.get("type"), event.get("status")
        if kind == "command.failed":
            return EXIT_NOT_COMPLETED
        if self.kind == "refund":
            return EXIT_COMPLETED if kind == "order.refund" else None
        if not event.get("final"):
            return None
        if self.kind == "cancel":
            done = kind == "order.status" and status in ("cancelled", "void")
        else:
            done = kind == "order.status" and status == "completed"
        return EXIT_COMPLETED if done else EXIT_NOT_COMPLETED

    def handle(self, event: dict[str, Any]) -> bool:
        """Take one event (from pub/sub, the stream or the order key). Returns True when it was
        new and printed. Sets :attr:`outcome` on this command's final answer."""
        stream_id = event.get("stream_id")
        event_id = event.get("event_id")
        if (isinstance(stream_id, str) and stream_id in self._seen_stream_ids) or (
            isinstance(event_id, str) and event_id in self._seen_event_ids
        ):
            return False
        if isinstance(stream_id, str):
            self._seen_stream_ids.add(stream_id)
            try:
                self.last_id = later_id(stream_id, self.last_id)
            except ValueError:
                pass
        if isinstance(event_id, str):
            self._seen_event_ids.add(event_id)
        if self.outcome is not None or not self.is_relevant(event):
            return False
        self.printer.event(event)
        if self.is_mine(event):
            self.outcome = self.outcome_of(event)
            if self.outcome is not None:
                self.final_event = event
        return True

    def handle_message(self, data: str) -> bool:
        try:
            event = json.loads(data)
        except (TypeError, ValueError):
            warn(f"skipped a message on {self.channel} that is not JSON")
            return False
        return isinstance(event, dict) and self.handle(event)

    async def catch_up(self, client: Redis) -> int:
        """Read the terminal's durable stream after :attr:`last_id` and handle what pub/sub
        did not deliver. If the stream no longer reaches back to ``last_id`` (trimmed), the
        order key (the order's latest event) stands in for what was lost. Returns how many
        events were printed."""
        after = self.last_id
        first = await first_entry_id(client, self.stream)
        printed = 0
        while self.outcome is None:
            response = await client.xread({self.stream: self.last_id}, count=500)
            entries = xread_entries(response)
            if not entries:
                break
            for _stream, entry_id, fields in entries:
                event = decode_entry(entry_id, fields)
                if event is not None:
                    printed += self.handle(event)
                self.last_id = later_id(entry_id, self.last_id)
        if self.outcome is None and first is not None and id_key(first) > id_key(after):
            raw = await client.get(self.keys.order(self.order_id))
            if raw:
                try:
                    latest = json.loads(raw)
                except ValueError:
                    latest = None
                if isinstance(latest, dict) and self.is_mine(latest):
                    printed += self.handle(latest)
        return printed


async def subscribe(client: Redis, watch: CommandWatch, within: float) -> PubSub:
    """Subscribe to the watch's terminal channel and wait for the confirmation: from then on,
    nothing published is missed."""
    pubsub: PubSub | None = None
    confirmed = subscribed_type(watch.keys)
    try:
        pubsub = await subscribe_terminal(client, watch.keys, watch.terminal)
        with anyio.move_on_after(within):
            while True:
                message = await pubsub.get_message(timeout=within)
                if message is not None and message["type"] == confirmed:
                    return pubsub
        raise RedisError(
            f"no confirmation of {confirmed.upper()} {watch.channel} within {within:g} s"
        )
    except BaseException:
        with anyio.CancelScope(shield=True):
            await close_pubsub(pubsub)
        raise


async def send_command(
    client: Redis, retry: Retrier, watch: CommandWatch, command: dict[str, Any], *, wait: bool
) -> tuple[PubSub | None, str]:
    """Write ``command`` to the commands stream; with ``wait``, subscribed first and with
    ``watch.last_id`` noted (where the terminal's stream ended): whatever answers the command
    is then either published to us or in the stream after that id. Each step is retried
    through a failover by ``retry`` (:class:`GaveUp` when its budget is spent), the ``XADD``
    with the same command (the same ``command_id``: the daemon takes a second copy as a
    replay). The stream's end is noted once: a retry must not skip what answered an ``XADD``
    that got through before its reply was lost. After a retry the subscription returned is
    None: :func:`follow` subscribes anew and catches up from ``watch.last_id``.

    Returns the subscription (confirmed) and the entry id of the command."""
    pubsub: PubSub | None = None
    noted = False
    first = retry.attempts

    async def attempt() -> str:
        nonlocal pubsub, noted
        await close_pubsub(pubsub)
        pubsub = None
        if wait:
            pubsub = await subscribe(client, watch, SUBSCRIBE_TIMEOUT)
            if not noted:
                watch.last_id = await last_entry_id(client, watch.stream)
                noted = True
        try:
            return str(await client.xadd(watch.keys.commands, {"command": json.dumps(command)}))
        except CONNECTION_ERRORS as exc:
            retry.sending(exc)
            raise

    try:
        entry_id = await retry.call(attempt, "sending the command")
    except BaseException:
        with anyio.CancelScope(shield=True):
            await close_pubsub(pubsub)
        raise
    if retry.attempts - first > 1 and pubsub is not None:
        await close_pubsub(pubsub)
        pubsub = None
    return pubsub, entry_id


async def close_pubsub(pubsub: PubSub | None) -> None:
    if pubsub is None:
        return
    try:
        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # redis-py leaves it unannotated
    except (RedisError, OSError):
        pass


async def follow(
    client: Redis, watch: CommandWatch, pubsub: PubSub | None, deadline: float, url: str
) -> None:
    """Handle the terminal's events until this payment's outcome is known or ``deadline``
    (``anyio.current_time()``) passes. ``pubsub``: an already confirmed subscription.

    Any further ``subscribe`` confirmation means the connection was re-established (redis-py
    resubscribes by itself after a short drop; after a longer one this function subscribes
    anew): what was published meanwhile is read from the stream before going on. With
    sentinels they are asked every ``MASTER_CHECK_EVERY`` s where the master is: a
    subscription to one they replaced is dropped then (``follow_master``), not when the old
    master is demoted."""
    delay = 0.1
    lost = False
    confirmed, published, dropped = (
        subscribed_type(watch.keys),
        message_type(watch.keys),
        dropped_type(watch.keys),
    )
    check_readers_at: float | None = anyio.current_time() + READERS_CHECK_AFTER
    sentinels = getattr(client, "sentinels", None) is not None
    check_master_at = anyio.current_time() + MASTER_CHECK_EVERY
    try:
        while watch.outcome is None:
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                return
            try:
                if sentinels and anyio.current_time() >= check_master_at:
                    # moved: the subscription to the old master is dropped, made again below
                    check_master_at = anyio.current_time() + MASTER_CHECK_EVERY
                    await follow_master(client)  # type: ignore[arg-type] # a BridgeRedis
                if check_readers_at is not None and anyio.current_time() >= check_readers_at:
                    why = await no_reader(client, watch.keys)  # Redis may be away right now
                    check_readers_at = None
                    if why is not None:
                        warn(f"{why}: the command waits in the stream until a daemon runs")
                if pubsub is None:
                    pubsub = await subscribe_terminal(client, watch.keys, watch.terminal)
                message = await pubsub.get_message(timeout=min(remaining, 1.0))
                if message is None:
                    continue
                if message["type"] == confirmed:
                    await watch.catch_up(client)
                elif message["type"] == published:
                    watch.handle_message(message["data"])
                elif message["type"] == dropped:  # Redis ended it (the slot moved): again
                    await close_pubsub(pubsub)
                    pubsub = None
            except CONNECTION_ERRORS as exc:
                if not lost:
                    warn(f"lost Redis: {describe_error(exc, url)}; reconnecting")
                    lost = True
                await close_pubsub(pubsub)
                pubsub = None
                await anyio.sleep(max(0.0, min(delay, deadline - anyio.current_time())))
                delay = min(delay * 2, 2.0)
                continue
            if lost:
                warn("reconnected to Redis; caught up from the terminal's event stream")
                lost, delay = False, 0.1
    finally:
        with anyio.CancelScope(shield=True):
            await close_pubsub(pubsub)
