"""``pos-bridge receipt``: ask the bridge for an order's receipt and print it.

What a till does for a receipt, from a shell: subscribe to the terminal's channel, note where
its durable stream ends, write a ``receipt`` command, and wait for the answer to that command
(``order.receipt``, or ``command.failed``), catching up from the stream after a reconnect, as
``pay --wait`` does (:func:`bridge.till.watch.follow`).

On a terminal (or with ``--text``) the receipt is printed as plain text for a receipt printer
(``bridge.till.receipt_layout``: customer copy, tear-off line, merchant copy, ``--width``
characters wide); piped, the ``order.receipt`` event as one JSON line. Exit codes: 0 printed;
1 the bridge answered that there is no receipt (``command.failed``: the error is printed);
2 nothing was sent (bad argument, unknown order without ``--terminal``, Redis unreachable);
3 no answer within ``--timeout``.
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bridge.errors import UserError
from bridge.redis.keys import Keys
from bridge.till.options import till_keys
from bridge.till.output import Printer, describe_error, redis_failure, warn
from bridge.till.pay import (
    _check_order_id,
    _check_terminal,
    _open,
    build_order_command,
    order_terminal,
    pay_command,
)
from bridge.till.receipt_layout import render_copies
from bridge.till.retry import GaveUp, Retrier, gave_up, retrier
from bridge.till.watch import CommandWatch, follow, send_command

EXIT_PRINTED = 0
EXIT_NO_RECEIPT = 1
EXIT_NOT_SENT = 2
EXIT_NO_ANSWER = 3

DEFAULT_TIMEOUT = 30.0


class ReceiptWatch(CommandWatch):
    """Waits for the answer to one ``receipt`` command; every other event is passed over."""

    def is_mine(self, event: dict[str, Any]) -> bool:
        return bool(event.get("command_id") == self.command_id)

    def handle(self, event: dict[str, Any]) -> bool:
        if self.outcome is not None or not self.is_mine(event):
            return False
        if event.get("type") == "order.receipt":
            self.outcome = EXIT_PRINTED
        elif event.get("type") == "command.failed":
            self.outcome = EXIT_NO_RECEIPT
        else:
            return False
        self.final_event = event
        return True


async def ask_receipt(
    client: Redis,
    retry: Retrier,
    keys: Keys,
    terminal: str,
    order_id: str,
    printer: Printer,
    *,
    seconds: float,
    url: str,
) -> dict[str, Any] | None:
    """Send a ``receipt`` command and wait ``seconds`` for its answer (None: none by then).
    Redis errors before the command is written propagate (:class:`GaveUp` after a failover
    that outlasted ``retry``'s budget). Sending twice is harmless: each copy is answered, the
    first answer is taken."""
    command = build_order_command("receipt", terminal=terminal, order_id=order_id)
    watch = ReceiptWatch(
        keys=keys,
        terminal=terminal,
        command_id=command["command_id"],
        order_id=order_id,
        printer=printer,
        kind="receipt",
    )
    pubsub, _entry_id = await send_command(client, retry, watch, command, wait=True)
    try:
        await follow(client, watch, pubsub, anyio.current_time() + seconds, url)
        if watch.outcome is None:
            await watch.catch_up(client)  # a last look at the durable stream
    except RedisError as exc:  # not a lost connection (follow retries those): e.g. an ACL
        warn(f"Redis refused to let us read the answer: {describe_error(exc, url)}")
    return watch.final_event


def show(printer: Printer, event: dict[str, Any], *, width: int, text: bool = False) -> int:
    """Print the answer: the receipt (text or JSON), or why there is none. The exit code."""
    if event.get("type") != "order.receipt":
        error = event.get("error") or {}
        if printer.json_lines:
            printer.event(event)
        warn(f"no receipt: {error.get('code')}: {error.get('message')}")
        return EXIT_NO_RECEIPT
    if printer.json_lines and not text:
        printer.event(event)
    else:
        details = event.get("details") if isinstance(event.get("details"), dict) else {}
        assert isinstance(details, dict)
        printer.out.write(render_copies(details, width=width, order_id=event.get("order_id")))
        printer.out.flush()
    return EXIT_PRINTED


async def _receipt(args: argparse.Namespace, printer: Printer) -> int:
    keys = till_keys(args)
    order_id = _check_order_id(args.order_id)
    client = _open(args)
    retry = retrier(args, client)
    try:
        try:
            terminal = (
                _check_terminal(args.terminal)
                if args.terminal
                else await order_terminal(args, client, retry, order_id)
            )
            event = await ask_receipt(
                client,
                retry,
                keys,
                terminal,
                order_id,
                printer,
                seconds=args.timeout,
                url=args.redis_url,
            )
        except GaveUp as exc:  # a receipt asked twice is answered twice: exit 2 either way
            raise gave_up(retry, exc, EXIT_NOT_SENT) from None
        except (RedisError, OSError, TimeoutError) as exc:
            raise redis_failure(args.redis_url, exc, EXIT_NOT_SENT) from None
        if event is None:
            warn(f"no answer about the receipt of order {order_id} within {args.timeout:g} s")
            return EXIT_NO_ANSWER
        return show(printer, event, width=args.width, text=args.text)
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()


def receipt_command(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise UserError("--timeout must be more than 0 seconds")
    return int(anyio.run(_receipt, args, Printer()))


async def _receipt_after_payment(
    client: Redis, retry: Retrier, watch: CommandWatch, args: argparse.Namespace
) -> None:
    """The receipt of the payment that just completed. One that cannot be had is a warning:
    the payment's outcome (the exit code) stands."""
    url = args.redis_url
    try:
        event = await ask_receipt(
            client,
            retry,
            watch.keys,
            watch.terminal,
            watch.order_id,
            watch.printer,
            seconds=DEFAULT_TIMEOUT,
            url=url,
        )
    except GaveUp as exc:
        warn(f"could not ask for the receipt: {exc.reason(retry.where, url)}")
        return
    except (RedisError, OSError, TimeoutError) as exc:
        warn(f"could not ask for the receipt: {describe_error(exc, url)}")
        return
    if event is None:
        warn(f"no receipt for order {watch.order_id} within {DEFAULT_TIMEOUT:g} s")
        return
    show(watch.printer, event, width=args.width)


def pay_with_receipt_command(args: argparse.Namespace) -> int:
    """``pos-bridge pay``: ``pay.pay_command``, and with ``--wait --receipt`` the receipt of
    a completed payment after its events."""
    if not args.receipt:
        return pay_command(args)
    if not args.wait:
        raise UserError("--receipt needs --wait (the receipt follows a completed payment)")
    return pay_command(args, after_completed=_receipt_after_payment)
