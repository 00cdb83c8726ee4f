"""``pos-bridge pay``, ``cancel`` and ``refund``: what a till does, from a shell.

Each writes its command to ``{p}:commands``; with ``--wait`` it follows the terminal's events
until the command's answer (:mod:`bridge.till.watch`), and says within seconds when no daemon
reads the commands (:mod:`bridge.till.daemons`).

Exit codes: 0 done (the payment completed, the order was cancelled, the refund was made; or,
without ``--wait``, the command was sent); 1 not done (the payment did not complete, the
cancel or refund failed: ``command.failed``, or the order ended otherwise); 2 nothing was sent
(bad argument, Redis unreachable); 3 no answer within ``--timeout``: the outcome is unknown
(a payment may still complete), or Redis was lost for good right after an ``XADD`` that may
have got through. 130: interrupted while waiting (outcome unknown too). A Redis failover is
ridden out (``--retry-for``, :mod:`bridge.till.retry`).
"""

from __future__ import annotations

import argparse
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from bridge.core.commands import (
    ORDER_ID_PATTERN,
    TERMINAL_ID_PATTERN,
    AmountError,
    InvalidCommand,
    derive_order_id,
    parse_amount,
    parse_command,
)
from bridge.errors import UserError
from bridge.till.options import tail_hint, till_keys
from bridge.till.output import Printer, describe_error, format_money, redis_failure, warn
from bridge.till.retry import GaveUp, Retrier, gave_up, open_client, retrier
from bridge.till.watch import (
    EXIT_COMPLETED,
    EXIT_INTERRUPTED,
    EXIT_NOT_SENT,
    EXIT_UNKNOWN,
    CommandWatch,
    close_pubsub,
    follow,
    send_command,
)

__all__ = ["CommandWatch", "build_cancel", "build_pay", "build_refund"]


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


def build_order_command(
    kind: str, *, terminal: str, order_id: str, command_id: str | None = None
) -> dict[str, Any]:
    """A command about one order (``cancel``, ``receipt``). :class:`UserError` for bad input."""
    return _validated(
        {
            "type": kind,
            "command_id": command_id or new_command_id(),
            "terminal_id": _check_terminal(terminal),
            "order_id": _check_order_id(order_id),
        }
    )


def build_cancel(*, terminal: str, order_id: str, command_id: str | None = None) -> dict[str, Any]:
    return build_order_command(
        "cancel", terminal=terminal, order_id=order_id, command_id=command_id
    )


def build_refund(
    *,
    terminal: str,
    order_id: str,
    amount: str | None = None,
    description: str | None = None,
    command_id: str | None = None,
) -> dict[str, Any]:
    """The ``refund`` command; without ``amount``, what remains of the order is refunded."""
    body: dict[str, Any] = {
        "type": "refund",
        "command_id": command_id or new_command_id(),
        "terminal_id": _check_terminal(terminal),
        "order_id": _check_order_id(order_id),
    }
    if amount is not None:
        try:
            body["amount"] = parse_amount(amount)
        except AmountError as exc:
            raise UserError(str(exc)) from None
    if description is not None:
        body["description"] = description
    return _validated(body)


def _unknown_outcome(args: argparse.Namespace, watch: CommandWatch, why: str) -> None:
    what = (
        f"the outcome of order {watch.order_id} is unknown and the payment may still complete"
        if watch.kind == "pay"
        else f"the outcome of {watch.kind} {watch.command_id} is unknown"
    )
    warn(f"{why}: {what}; follow it with: {tail_hint(args, watch.terminal, watch.last_id)}")


def _sent_notice(printer: Printer, command: dict[str, Any], order_id: str, entry_id: str) -> None:
    data = {**command, "order_id": order_id, "entry_id": entry_id}
    where = f"order {order_id} on terminal {command['terminal_id']}"
    amount = command.get("amount")
    money = f", {format_money(amount, command.get('currency', ''))}" if amount else ""
    printer.notice(f"sent {command['type']} {command['command_id']}: {where}{money}", data)


def _open(args: argparse.Namespace) -> Redis:
    return open_client(args)


#: Run after ``--wait`` saw its command succeed, on the same Redis connection and retrier
#: (``pay --receipt``: ``bridge.till.receipt``).
AfterSuccess = Callable[[Redis, Retrier, CommandWatch, argparse.Namespace], Awaitable[None]]


async def _send(
    args: argparse.Namespace,
    command: dict[str, Any],
    watch: CommandWatch,
    after_success: AfterSuccess | None = None,
) -> int:
    """Write ``command`` (subscribed first with ``--wait``) and, with ``--wait``, follow the
    terminal until its answer. A failover is ridden out (:mod:`bridge.till.retry`)."""
    wait = bool(getattr(args, "wait", False))
    client = _open(args)
    retry = retrier(args, client)
    pubsub: PubSub | None = None
    try:
        try:
            pubsub, entry_id = await send_command(client, retry, watch, command, wait=wait)
        except GaveUp as exc:
            if exc.maybe_sent:  # an XADD may have got through: not "nothing was sent"
                why = exc.reason(retry.where, retry.url)
                _unknown_outcome(args, watch, f"{why}; the command may have been sent")
                return EXIT_UNKNOWN
            raise gave_up(retry, exc, EXIT_NOT_SENT) from None
        except (RedisError, OSError, TimeoutError) as exc:
            raise redis_failure(args.redis_url, exc, EXIT_NOT_SENT) from None
        _sent_notice(watch.printer, command, watch.order_id, entry_id)
        if not wait:
            return EXIT_COMPLETED
        deadline = anyio.current_time() + max(0.0, args.timeout)
        try:
            await follow(client, watch, pubsub, deadline, args.redis_url)
        except RedisError as exc:  # not a lost connection: e.g. an ACL refusing XREAD
            reason = describe_error(exc, args.redis_url)
            _unknown_outcome(args, watch, f"Redis refused to let us follow it: {reason}")
            return EXIT_UNKNOWN
        finally:
            pubsub = None  # follow() closed it
        if watch.outcome is None:
            try:  # a last look: the answer may have been written while we were away
                await watch.catch_up(client)
            except (RedisError, OSError):
                pass
        if watch.outcome is None:
            _unknown_outcome(args, watch, f"no answer within {args.timeout:g} s")
            return EXIT_UNKNOWN
        if watch.outcome == EXIT_COMPLETED and after_success is not None:
            await after_success(client, retry, watch, args)
        return watch.outcome
    finally:
        with anyio.CancelScope(shield=True):
            await close_pubsub(pubsub)
            await client.aclose()


def _run(
    args: argparse.Namespace,
    command: dict[str, Any],
    watch: CommandWatch,
    after_success: AfterSuccess | None = None,
) -> int:
    if getattr(args, "wait", False) and args.timeout <= 0:
        raise UserError("--timeout must be more than 0 seconds")
    try:
        return int(anyio.run(_send, args, command, watch, after_success))
    except KeyboardInterrupt:
        if getattr(args, "wait", False):
            _unknown_outcome(args, watch, "interrupted")
        return EXIT_INTERRUPTED


def _watch(args: argparse.Namespace, command: dict[str, Any], order_id: str) -> CommandWatch:
    return CommandWatch(
        keys=till_keys(args),
        terminal=command["terminal_id"],
        command_id=command["command_id"],
        order_id=order_id,
        printer=Printer(),
        kind=command["type"],
    )


def pay_command(args: argparse.Namespace, after_completed: AfterSuccess | None = None) -> int:
    """Sends a ``pay``; with ``--wait``, follows it to its final. ``after_completed`` runs once
    the payment completed (``pay --receipt``)."""
    command = build_pay(
        terminal=args.terminal,
        amount=args.amount,
        currency=args.currency,
        order_id=args.order_id,
        description=args.description,
    )
    order_id = command.get("order_id") or derive_order_id(command["command_id"])
    return _run(args, command, _watch(args, command, order_id), after_completed)


# -- cancel and refund: the order's terminal is read from its key when not given --------------


async def order_terminal(
    args: argparse.Namespace, client: Redis, retry: Retrier, order_id: str
) -> str:
    """The terminal of ``order_id``, from its order key (:class:`UserError` when unknown)."""
    keys = till_keys(args)
    try:
        raw = await retry.call(lambda: client.get(keys.order(order_id)), "reading the order")
    except GaveUp as exc:
        raise gave_up(retry, exc) from None
    except (RedisError, OSError) as exc:
        raise redis_failure(args.redis_url, exc) from None
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
    return _check_terminal(str(terminal))


async def _order_terminal(args: argparse.Namespace, order_id: str) -> str:
    client = _open(args)
    try:
        return await order_terminal(args, client, retrier(args, client), order_id)
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()


def _terminal_of(args: argparse.Namespace, order_id: str) -> str:
    if args.terminal:
        return _check_terminal(args.terminal)
    return str(anyio.run(_order_terminal, args, order_id))


def cancel_command(args: argparse.Namespace) -> int:
    """Sends a ``cancel``; with ``--wait``, exit 0 when the order ends cancelled (or void),
    1 when the cancel fails or the order ends otherwise. See the module for the other codes."""
    order_id = _check_order_id(args.order_id)
    command = build_cancel(terminal=_terminal_of(args, order_id), order_id=order_id)
    return _run(args, command, _watch(args, command, order_id))


def refund_command(args: argparse.Namespace) -> int:
    """Sends a ``refund``; with ``--wait``, exit 0 on its ``order.refund``, 1 on its
    ``command.failed``."""
    order_id = _check_order_id(args.order_id)
    command = build_refund(
        terminal=_terminal_of(args, order_id),
        order_id=order_id,
        amount=args.amount,
        description=args.description,
    )
    return _run(args, command, _watch(args, command, order_id))
