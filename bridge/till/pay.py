"""``pos-bridge pay`` and ``pos-bridge cancel``: what a till does, from a shell.

``pay`` writes a ``pay`` command to ``{p}:commands``; with ``--wait`` it follows the terminal's
events the way DESIGN.md tells a till to: subscribe to the terminal's channel *before* writing
the command (a fast answer cannot be missed), remember the ``stream_id`` of the last event
handled, and after every (re)subscription read the durable stream from there (``XREAD``) before
going on with pub/sub; events are de-duplicated by ``stream_id`` and ``event_id``.

Exit codes of ``pay``: 0 the payment completed (or, without ``--wait``, the command was sent);
1 it did not (cancelled, void, expired, ``order.failed``, or ``command.failed`` for this
command); 2 nothing was sent (bad argument, Redis unreachable); 3 no final event within
``--timeout``: the outcome is unknown and the payment may still complete. 130: interrupted
while waiting (outcome unknown too).
"""

from __future__ import annotations

import argparse
import json
import re
import uuid
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from bridge.cli import DEFAULT_PREFIX, DEFAULT_REDIS_URL
from bridge.config import mask_url_password
from bridge.core.commands import (
    ORDER_ID_PATTERN,
    TERMINAL_ID_PATTERN,
    AmountError,
    InvalidCommand,
    derive_order_id,
    parse_amount,
    parse_command,
)
from bridge.core.normalize import canonical_terminal_id
from bridge.errors import UserError
from bridge.redis.client import connect, text
from bridge.redis.keys import Keys
from bridge.till.output import Printer, describe_error, format_money, redis_failure, warn
from bridge.till.tail import (
    CONNECTION_ERRORS,
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

#: How long ``pay --wait`` waits for its subscription to be confirmed before sending.
SUBSCRIBE_TIMEOUT = 5.0


def new_command_id() -> str:
    return "cli-" + uuid.uuid4().hex


# -- building commands ------------------------------------------------------------------------


def _check_terminal(terminal: str) -> str:
    terminal = terminal.strip()
    if not re.match(TERMINAL_ID_PATTERN, terminal):
        raise UserError(f"terminal ID {terminal!r} is not valid (1-32 of A-Z a-z 0-9 -)")
    return terminal


def _check_order_id(order_id: str) -> str:
    order_id = order_id.strip()
    if not re.match(ORDER_ID_PATTERN, order_id):
        raise UserError(f"order ID {order_id!r} is not valid (1-50 of A-Z a-z 0-9 / - _)")
    return order_id


def _validated(body: dict[str, Any]) -> dict[str, Any]:
    """The core's parser is the authority: a command it refuses is never sent."""
    try:
        command = parse_command(json.dumps(body))
    except InvalidCommand as exc:
        raise UserError(exc.message) from None
    dumped = command.model_dump(mode="json", exclude_none=True)
    return {"type": dumped.pop("type"), **dumped}


def build_pay(
    *,
    terminal: str,
    amount: str,
    currency: str = "EUR",
    order_id: str | None = None,
    description: str | None = None,
    command_id: str | None = None,
) -> dict[str, Any]:
    """The ``pay`` command JSON object. Raises :class:`UserError` (exit 2) for bad input."""
    try:
        cents = parse_amount(amount)
    except AmountError as exc:
        raise UserError(str(exc)) from None
    currency = currency.strip().upper()
    if not re.fullmatch(r"[A-Z]{3}", currency):
        raise UserError(f"currency {currency!r} is not a three-letter code such as EUR")
    body: dict[str, Any] = {
        "type": "pay",
        "command_id": command_id or new_command_id(),
        "terminal_id": _check_terminal(terminal),
        "amount": cents,
        "currency": currency,
    }
    if order_id is not None:
        body["order_id"] = _check_order_id(order_id)
    if description is not None:
        if len(description) > 200:
            raise UserError("description is longer than 200 characters")
        body["description"] = description
    return _validated(body)


def build_cancel(*, terminal: str, order_id: str, command_id: str | None = None) -> dict[str, Any]:
    return _validated(
        {
            "type": "cancel",
            "command_id": command_id or new_command_id(),
            "terminal_id": _check_terminal(terminal),
            "order_id": _check_order_id(order_id),
        }
    )


def _open(url: str) -> Redis:
    try:
        return connect(url)
    except ValueError as exc:
        raise UserError(f"invalid Redis URL: {describe_error(exc, url)}") from None


# -- following one payment --------------------------------------------------------------------


class PaymentWatch:
    """What ``pay --wait`` knows about its payment: events seen, last stream id, outcome."""

    def __init__(
        self,
        *,
        keys: Keys,
        terminal: str,
        command_id: str,
        order_id: str,
        printer: Printer,
        last_id: str = "0-0",
    ) -> None:
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
        """An event about this command's payment (it decides the outcome)."""
        command_id = event.get("command_id")
        if command_id is not None:
            return bool(command_id == self.command_id)
        # events of an order first seen through a webhook may lack the command id
        return event.get("order_id") == self.order_id and event.get("type") != "command.failed"

    def is_relevant(self, event: dict[str, Any]) -> bool:
        """Printed: this payment's events, and e.g. a failed ``cancel`` of its order."""
        return self.is_mine(event) or (
            event.get("order_id") == self.order_id and event.get("type") == "command.failed"
        )

    def handle(self, event: dict[str, Any]) -> bool:
        """Take one event (from pub/sub, the stream or the order key). Returns True when it was
        new and printed. Sets :attr:`outcome` on this payment's final answer."""
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
            if event.get("type") == "command.failed":
                self.outcome = EXIT_NOT_COMPLETED
            elif event.get("final"):
                completed = (
                    event.get("type") == "order.status" and event.get("status") == "completed"
                )
                self.outcome = EXIT_COMPLETED if completed else EXIT_NOT_COMPLETED
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


async def _subscribe(client: Redis, channel: str, timeout: float) -> PubSub:
    """Subscribe and wait for the confirmation: from then on, nothing published is missed."""
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(channel)
        with anyio.move_on_after(timeout):
            while True:
                message = await pubsub.get_message(timeout=timeout)
                if message is not None and message["type"] == "subscribe":
                    return pubsub
        raise RedisError(f"no confirmation of SUBSCRIBE {channel} within {timeout:g} s")
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _close(pubsub)
        raise


async def _close(pubsub: PubSub | None) -> None:
    if pubsub is None:
        return
    try:
        await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
    except (RedisError, OSError):
        pass


async def follow(
    client: Redis, watch: PaymentWatch, pubsub: PubSub | None, deadline: float, url: str
) -> None:
    """Handle the terminal's events until this payment's outcome is known or ``deadline``
    (``anyio.current_time()``) passes. ``pubsub``: an already confirmed subscription.

    Any further ``subscribe`` confirmation means the connection was re-established (redis-py
    resubscribes by itself after a short drop; after a longer one this function subscribes
    anew): what was published meanwhile is read from the stream before going on."""
    delay = 0.1
    lost = False
    try:
        while watch.outcome is None:
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                return
            try:
                if pubsub is None:
                    pubsub = client.pubsub()
                    await pubsub.subscribe(watch.channel)
                message = await pubsub.get_message(timeout=min(remaining, 1.0))
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    await watch.catch_up(client)
                elif message["type"] == "message":
                    watch.handle_message(message["data"])
            except CONNECTION_ERRORS as exc:
                if not lost:
                    warn(f"lost Redis: {describe_error(exc, url)}; reconnecting")
                    lost = True
                await _close(pubsub)
                pubsub = None
                await anyio.sleep(max(0.0, min(delay, deadline - anyio.current_time())))
                delay = min(delay * 2, 2.0)
                continue
            if lost:
                warn("reconnected to Redis; caught up from the terminal's event stream")
                lost, delay = False, 0.1
    finally:
        with anyio.CancelScope(shield=True):
            await _close(pubsub)


def _unknown_outcome(args: argparse.Namespace, watch: PaymentWatch, why: str) -> None:
    follow_cmd = ["pos-bridge", "tail", "--terminal", watch.terminal]
    if watch.last_id != "0-0":
        follow_cmd += ["--since", watch.last_id]
    if args.prefix != DEFAULT_PREFIX:
        follow_cmd += ["--prefix", args.prefix]
    if args.redis_url != DEFAULT_REDIS_URL:
        follow_cmd += ["--redis-url", mask_url_password(args.redis_url)]
    warn(
        f"{why}: the outcome of order {watch.order_id} is unknown and the payment may still "
        f"complete; follow it with: {' '.join(follow_cmd)}"
    )


def _sent_notice(printer: Printer, command: dict[str, Any], order_id: str, entry_id: str) -> None:
    data = {**command, "order_id": order_id, "entry_id": entry_id}
    if command["type"] == "pay":
        text = (
            f"sent pay {command['command_id']}: order {order_id} on terminal "
            f"{command['terminal_id']}, {format_money(command['amount'], command['currency'])}"
        )
    else:
        text = (
            f"sent cancel {command['command_id']}: order {order_id} on terminal "
            f"{command['terminal_id']}"
        )
    printer.notice(text, data)


async def _pay(args: argparse.Namespace, command: dict[str, Any], printer: Printer) -> int:
    keys = Keys(args.prefix)
    order_id = command.get("order_id") or derive_order_id(command["command_id"])
    watch = PaymentWatch(
        keys=keys,
        terminal=command["terminal_id"],
        command_id=command["command_id"],
        order_id=order_id,
        printer=printer,
    )
    client = _open(args.redis_url)
    pubsub: PubSub | None = None
    try:
        try:
            if args.wait:
                # Subscribe first, then note where the stream ends: whatever answers the
                # command is either published to us or written after that id.
                pubsub = await _subscribe(client, watch.channel, SUBSCRIBE_TIMEOUT)
                watch.last_id = await last_entry_id(client, watch.stream)
            entry_id = await client.xadd(keys.commands, {"command": json.dumps(command)})
        except (RedisError, OSError, TimeoutError) as exc:
            raise redis_failure(args.redis_url, exc, EXIT_NOT_SENT) from None
        _sent_notice(printer, command, order_id, text(entry_id))
        if not args.wait:
            return EXIT_COMPLETED
        deadline = anyio.current_time() + max(0.0, args.timeout)
        try:
            await follow(client, watch, pubsub, deadline, args.redis_url)
        except RedisError as exc:  # not a lost connection: e.g. an ACL refusing XREAD
            reason = describe_error(exc, args.redis_url)
            _unknown_outcome(args, watch, f"Redis refused to let us follow the payment: {reason}")
            return EXIT_UNKNOWN
        finally:
            pubsub = None  # follow() closed it
        if watch.outcome is None:
            try:  # a last look: the final may have been written while we were away
                await watch.catch_up(client)
            except (RedisError, OSError):
                pass
        if watch.outcome is None:
            _unknown_outcome(args, watch, f"no final event within {args.timeout:g} s")
            return EXIT_UNKNOWN
        return watch.outcome
    finally:
        with anyio.CancelScope(shield=True):
            await _close(pubsub)
            await client.aclose()


def pay_command(args: argparse.Namespace) -> int:
    command = build_pay(
        terminal=args.terminal,
        amount=args.amount,
        currency=args.currency,
        order_id=args.order_id,
        description=args.description,
    )
    if args.wait and args.timeout <= 0:
        raise UserError("--timeout must be more than 0 seconds")
    printer = Printer()
    try:
        return int(anyio.run(_pay, args, command, printer))
    except KeyboardInterrupt:
        if args.wait:
            order_id = command.get("order_id") or derive_order_id(command["command_id"])
            warn(
                f"interrupted: the outcome of order {order_id} is unknown and the payment may "
                f"still complete; follow it with: pos-bridge tail --terminal "
                f"{canonical_terminal_id(command['terminal_id'])}"
            )
        return EXIT_INTERRUPTED


# -- cancel -------------------------------------------------------------------------------------


async def _cancel(args: argparse.Namespace, printer: Printer) -> int:
    keys = Keys(args.prefix)
    order_id = _check_order_id(args.order_id)
    terminal = _check_terminal(args.terminal) if args.terminal else None
    client = _open(args.redis_url)
    try:
        try:
            if terminal is None:
                raw = await client.get(keys.order(order_id))
                if raw is None:
                    raise UserError(
                        f"unknown order ID {order_id!r} (no {keys.order(order_id)} in Redis: "
                        "never seen or expired); pass --terminal"
                    )
                try:
                    terminal = json.loads(raw)["terminal_id"]
                except (ValueError, TypeError, KeyError):
                    raise UserError(
                        f"{keys.order(order_id)} does not name a terminal; pass --terminal"
                    ) from None
                terminal = _check_terminal(str(terminal))
            command = build_cancel(terminal=terminal, order_id=order_id)
            entry_id = await client.xadd(keys.commands, {"command": json.dumps(command)})
        except (RedisError, OSError) as exc:
            raise redis_failure(args.redis_url, exc) from None
        _sent_notice(printer, command, order_id, text(entry_id))
        return 0
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()


def cancel_command(args: argparse.Namespace) -> int:
    """Sends a ``cancel``; exit 0 when sent, 2 on a bad argument, an unknown order without
    ``--terminal``, or Redis unreachable. The answer comes as events (``pos-bridge tail``)."""
    return int(anyio.run(_cancel, args, Printer()))
