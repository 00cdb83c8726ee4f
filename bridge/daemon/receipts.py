"""Receipts: the ``receipt`` command, and receipts fetched by themselves after a final.

Both fetch ``GET pos/receipt/{order_id}`` with the API key of the order's terminal group and
publish an ``order.receipt`` event (``bridge.core.receipt``) on a terminal's channel and durable
stream with ``announce`` (``bridge/redis/announce.lua``): it never touches the order's state or
its order key, so a receipt cannot change a payment's outcome, and it is never final.

- **The command** is answered once per *delivery*: a replay (the same ``command_id`` written
  again) gets its answer again, since the till that sent it again may have missed the first;
  the same stream entry handled twice (claimed after a daemon died) is answered once. Nothing
  else happens: a receipt is read, never written.
- **Automatic receipts** (``[receipts] auto = true``): :class:`AutoReceipts` is offered every
  event the daemon publishes, after it is committed, and queues the finals without waiting; its
  workers fetch each receipt, retrying with backoff, and publish it. The final is never delayed
  or changed by it. One daemon takes each order (a claim in Redis), at most once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream
from redis.asyncio import Redis

from bridge.core.events import ErrorCode, Event, EventType
from bridge.core.receipt import receipt_event
from bridge.core.state import utcnow
from bridge.multisafepay.api import ApiError

if TYPE_CHECKING:
    from bridge.core.commands import ReceiptCommand
    from bridge.daemon.payment import SessionContext
    from bridge.daemon.terminals import TerminalDirectory


#: How a handler answers ``command.failed``: ``CommandHandlers._command_failed`` (``terminal,
#: command_id, order_id, code, message, *, once``).
CommandFailed = Callable[..., Awaitable[None]]


log = structlog.get_logger("bridge.receipts")

#: Tries of a receipt asked for by command before the till is told ``upstream_unavailable``.
COMMAND_ATTEMPTS = 3
#: Finals waiting for their automatic receipt; more are logged and skipped, never waited for.
AUTO_QUEUE = 1000
#: Automatic receipts fetched at once.
AUTO_WORKERS = 4


class ReceiptFetcher:
    """``GET pos/receipt/{order_id}`` with the right key, transient failures retried."""

    def __init__(self, ctx: SessionContext, directory: TerminalDirectory) -> None:
        self.ctx = ctx
        self.directory = directory

    def key_for(self, terminal_id: str) -> str | None:
        route = self.directory.route(terminal_id)
        return route[0].key.get_secret_value() if route is not None else None

    def same_group(self, sender: str, order_terminal: str) -> bool:
        """Whether ``sender`` is a terminal of the group ``order_terminal`` belongs to."""
        a, b = self.directory.route(sender), self.directory.route(order_terminal)
        return a is not None and b is not None and a[0].name == b[0].name

    async def fetch(self, key: str, order_id: str, attempts: int, *, retry_all: bool) -> Any:
        """The receipt's ``data``. ``retry_all``: also retry refusals (right after a final the
        receipt may not be there yet; assumed), not only an unreachable or failing API."""
        backoff = self.ctx.backoff()
        for attempt in range(1, attempts + 1):
            try:
                return await self.ctx.api.get_receipt(key, order_id)
            except ApiError as exc:
                transient = exc.code is ErrorCode.UPSTREAM_UNAVAILABLE
                if attempt == attempts or not (transient or retry_all):
                    raise
                log.warning(
                    "receipt.fetch_failed", order_id=order_id, attempt=attempt, error=exc.message
                )
                await anyio.sleep(backoff.next())
        raise AssertionError("unreachable")  # pragma: no cover


class ReceiptRequests:
    """The ``receipt`` command (dispatched by ``CommandHandlers.handle``)."""

    def __init__(
        self,
        ctx: SessionContext,
        directory: TerminalDirectory,
        redis: Redis,
        command_failed: CommandFailed,
    ) -> None:
        self.ctx = ctx
        self.redis = redis
        self.command_failed = command_failed
        self.fetcher = ReceiptFetcher(ctx, directory)

    async def answer(self, command: ReceiptCommand, command_id: str, entry_id: str) -> None:
        order_id = command.order_id
        once = f"{command_id}:receipt:{entry_id}"  # one answer per delivery (stream entry)
        store = self.ctx.store
        if await self.redis.exists(store.keys.command_record(once)):
            log.info("command.replay", command_id=command_id, note="this delivery was answered")
            return
        state = await store.load(order_id)
        if state is not None and state.final and state.status is None:
            await self._failed(
                command, command_id, ErrorCode.NOT_FOUND, f"order {order_id} was never made", once
            )
            return
        terminal = state.terminal_id if state is not None else command.terminal_id
        key = self.fetcher.key_for(terminal)
        if key is None:
            message = f"terminal {terminal} is in no configured terminal group"
            await self._failed(command, command_id, ErrorCode.UNKNOWN_TERMINAL, message, once)
            return
        if not self.fetcher.same_group(command.terminal, terminal):
            # a key speaks only for its own group: a till of group A gets no receipt of group B
            message = f"order {order_id} is not of terminal {command.terminal}'s terminal group"
            await self._failed(command, command_id, ErrorCode.INVALID_COMMAND, message, once)
            return
        try:
            data = await self.fetcher.fetch(key, order_id, COMMAND_ATTEMPTS, retry_all=False)
            event = receipt_event(
                data,
                order_id=order_id,
                terminal_id=command.terminal,
                command_id=command_id,
                state=state,
                upstream_tz=self.ctx.tz,
                now=utcnow(),
            )
        except ApiError as exc:
            await self._failed(command, command_id, exc.code, exc.message, once)
            return
        stream_id = await store.announce(event, store.keys.command_record(once))
        log.info(
            "order.receipt",
            order_id=order_id,
            command_id=command_id,
            terminal_id=event.terminal_id,
            result=event.details["result"],
            published=stream_id is not None,
        )

    async def _failed(
        self, command: ReceiptCommand, command_id: str, code: ErrorCode, message: str, once: str
    ) -> None:
        await self.command_failed(
            command.terminal, command_id, command.order_id, code, message, once=once
        )


class AutoReceipts:
    """After a final, fetch and publish the order's receipt: queued, never awaited by the final.

    ``offer`` is called with what each commit published (``MeteredEventStore.on_published``);
    ``run`` (in the daemon's task group) holds the workers until the daemon stops.
    """

    def __init__(
        self, redis: Redis, fetcher: ReceiptFetcher, *, attempts: int, claim_ttl: int
    ) -> None:
        self.redis = redis
        self.fetcher = fetcher
        self.attempts = attempts
        self.claim_ttl = claim_ttl
        self._send, self._receive = anyio.create_memory_object_stream[tuple[str, str]](AUTO_QUEUE)

    def offer(self, events: Iterable[Event]) -> None:
        for event in events:
            if event.type is not EventType.ORDER_STATUS or not event.final or not event.order_id:
                continue
            try:
                self._send.send_nowait((event.order_id, event.terminal_id))
            except anyio.WouldBlock:
                log.warning(
                    "receipt.auto_skipped",
                    order_id=event.order_id,
                    reason=f"{AUTO_QUEUE} receipts already waiting",
                )
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                log.warning("receipt.auto_skipped", order_id=event.order_id, reason="stopping")

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(AUTO_WORKERS):
                tg.start_soon(self._worker, self._receive.clone())
            self._receive.close()

    async def _worker(self, receive: MemoryObjectReceiveStream[tuple[str, str]]) -> None:
        async with receive:
            async for order_id, terminal_id in receive:
                try:
                    await self.publish(order_id, terminal_id)
                except Exception:  # noqa: BLE001 - a receipt must never stop the daemon: logged, next
                    log.exception("receipt.auto_crashed", order_id=order_id)

    async def publish(self, order_id: str, terminal_id: str) -> None:
        """Fetch and publish one order's receipt, once across daemons; failures are logged."""
        ctx = self.fetcher.ctx
        claim = ctx.store.keys.receipt_claim(order_id)
        claimed = await ctx.redis_waiters.call(
            lambda: self.redis.set(claim, "1", nx=True, ex=self.claim_ttl),
            what="an automatic receipt",
        )
        if not claimed:
            return  # another daemon (or an earlier final of this order) has it
        key = self.fetcher.key_for(terminal_id)
        if key is None:
            log.warning("receipt.auto_failed", order_id=order_id, reason="no terminal group")
            return
        try:
            data = await self.fetcher.fetch(key, order_id, self.attempts, retry_all=True)
            state = await ctx.redis_waiters.call(
                lambda: ctx.store.load(order_id), what="an automatic receipt"
            )
            event = receipt_event(
                data,
                order_id=order_id,
                terminal_id=terminal_id,
                command_id=None,
                state=state,
                upstream_tz=ctx.tz,
                now=utcnow(),
            )
        except ApiError as exc:
            log.error(
                "receipt.auto_failed",
                order_id=order_id,
                attempts=self.attempts,
                error=exc.message,
                note="a till can still ask with a receipt command",
            )
            return
        await ctx.redis_waiters.call(
            lambda: ctx.store.announce(event, claim + ":published"), what="an automatic receipt"
        )
        log.info(
            "order.receipt",
            order_id=order_id,
            terminal_id=terminal_id,
            auto=True,
            result=event.details["result"],
        )
