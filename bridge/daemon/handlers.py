"""What each till command does. Every outcome is an event on the terminal's channel (or, with
no usable terminal, a log line and a ``{p}:commands:dead`` entry): never a silent drop.

Idempotent per command id: the command's fingerprint is stored under ``{p}:cmd:{id}``; the
same id with the same body is a replay and changes nothing, since every step looks at what
Redis already holds (the order's state) before acting upstream.

This module reads and dispatches; ``pay`` is in :mod:`bridge.daemon.pay_command`, ``cancel``,
``refund`` and ``watch`` in :mod:`bridge.daemon.order_commands`, the answers they share in
:mod:`bridge.daemon.answers`.
"""

from __future__ import annotations

import time

import structlog

from bridge.core.commands import (
    AnyCommand,
    CancelCommand,
    InvalidCommand,
    PayCommand,
    ReceiptCommand,
    RefundCommand,
    command_fingerprint,
    derive_order_id,
    parse_command,
    readable_part,
)
from bridge.core.events import ErrorCode
from bridge.daemon.intake import LeaveUnacknowledged
from bridge.daemon.order_commands import COMMAND_MAX_AGE, OrderCommands
from bridge.daemon.pay_command import OutcomeUnknown, PayFailed, PayHandler
from bridge.daemon.receipts import ReceiptRequests

__all__ = ["COMMAND_MAX_AGE", "CommandHandlers", "OutcomeUnknown", "PayFailed"]

log = structlog.get_logger("bridge.commands")


class CommandHandlers(PayHandler, OrderCommands):
    async def handle(self, entry_id: str, fields: dict[str, str]) -> str | None:
        """Handle one command; the command's type once parsed (the intake's metrics label)."""
        raw = fields.get("command")
        if raw is None:
            await self._dead_letter(entry_id, fields, "entry has no 'command' field")
            return None
        try:
            command = parse_command(raw)
        except InvalidCommand as exc:
            await self._invalid(entry_id, raw, exc)
            return None
        await self._handle(entry_id, command)
        return str(command.type)

    async def _handle(self, entry_id: str, command: AnyCommand) -> None:
        command_id = command.command_id or entry_id
        age = time.time() - int(entry_id.split("-")[0]) / 1000
        if age > COMMAND_MAX_AGE and isinstance(command, PayCommand):
            await self._pay_failed(
                command,
                command_id,
                command.order_id or derive_order_id(command_id),
                ErrorCode.INVALID_COMMAND,
                f"command waited {age:.0f} s in the queue "
                f"(more than {COMMAND_MAX_AGE:.0f} s): not started",
            )
            return
        bound = log.bind(command_id=command_id, terminal_id=command.terminal, type=command.type)
        bound.info(
            "command.received",
            order_id=getattr(command, "order_id", None)
            or (derive_order_id(command_id) if isinstance(command, PayCommand) else None),
        )
        if isinstance(command, PayCommand):
            # claims the command id itself, in the same round trip as what it looks up first;
            # replays are told apart by the order's state
            await self.pay(command, command_id)
            return
        if not await self._claim_command_id(command, command_id):
            return
        if isinstance(command, ReceiptCommand):  # answered once per delivery: no "done" mark
            receipts = ReceiptRequests(self.ctx, self.directory, self.redis, self._command_failed)
            await receipts.answer(command, command_id, entry_id)
            return
        # A cancel, refund or watch is done once: "running" while a daemon handles it (expires,
        # so a daemon that died mid-way does not block the replay), then "done".
        progress = self.keys.command_record(command_id) + ":done"
        running_for = int(2 * self.config.multisafepay.request_timeout + 10)
        if not await self.redis.set(progress, "running", nx=True, ex=running_for):
            if await self.redis.get(progress) == "done":
                bound.info("command.replay", note="already done")
                return
            raise LeaveUnacknowledged(f"command {command_id} is being handled already")
        if isinstance(command, CancelCommand):
            await self.cancel(command, command_id)
        elif isinstance(command, RefundCommand):
            await self.refund(command, command_id)
        else:
            await self.watch(command, command_id)
        await self.redis.set(progress, "done", ex=int(self._ttl))

    async def _claim_command_id(self, command: AnyCommand, command_id: str) -> bool:
        """Record the command's fingerprint; False if its id was used for another command."""
        fingerprint = command_fingerprint(command)
        previous = await self.redis.set(
            self.keys.command_record(command_id), fingerprint, nx=True, ex=int(self._ttl), get=True
        )
        previous_fingerprint = previous if isinstance(previous, str) else None
        return await self._command_id_claimed(
            command, command_id, fingerprint, previous_fingerprint
        )

    async def _invalid(self, entry_id: str, raw: str, exc: InvalidCommand) -> None:
        command_id = exc.command_id or entry_id
        if exc.terminal_id is None:
            await self._dead_letter(entry_id, {"command": raw}, exc.message)
            return
        if exc.command_type == "pay":
            order_id = exc.order_id or derive_order_id(command_id)
            await self._fail_order(
                exc.terminal_id,
                command_id,
                order_id,
                None,
                None,
                ErrorCode.INVALID_COMMAND,
                exc.message,
            )
        else:
            await self._command_failed(
                exc.terminal_id, command_id, exc.order_id, ErrorCode.INVALID_COMMAND, exc.message
            )

    async def give_up(self, entry_id: str, fields: dict[str, str], reason: str) -> None:
        """A command that will not be handled (a poison command): answered ``command.failed``
        where it names a terminal, and dead-lettered with ``reason``."""
        found = readable_part(fields.get("command") or "", reason)
        if found.terminal_id is not None:
            command_id = found.command_id or entry_id
            await self._command_failed(
                found.terminal_id,
                command_id,
                found.order_id,
                ErrorCode.INVALID_COMMAND,
                reason,
                once=f"{command_id}:dead",
            )
        await self._dead_letter(entry_id, fields, reason)
