"""Calls to Redis made at about the same time, sent together in one round trip.

No background task: the first caller to find nothing in flight sends the queue; calls arriving
meanwhile wait for the next batch, sent by the first of them. Idle, a call costs what it did
alone; under load N calls cost one round trip (and one socket write and read, and one pooled
connection). Used for the transition scripts (``publisher``) and the commands' ``XACK``s
(``daemon.intake``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import anyio

T = TypeVar("T")


class Pending(Generic[T]):
    """One call waiting in a :class:`Coalescer`'s queue: ``send`` sets its result or error."""

    __slots__ = ("done", "error", "item", "lead", "result")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = anyio.Event()
        self.lead = False  # woken to send the next batch, not with a result
        self.result: Any = None
        self.error: BaseException | None = None

    def value(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class Coalescer(Generic[T]):
    """``await call(item)``: ``item`` goes out with the others queued meanwhile, through
    ``send(batch)``, which must set each one's result or error (and not raise)."""

    def __init__(self, send: Callable[[list[Pending[T]]], Awaitable[None]]) -> None:
        self._send = send
        self._queue: list[Pending[T]] = []
        self._busy = False

    async def call(self, item: T) -> Any:
        me = Pending(item)
        self._queue.append(me)
        if self._busy:
            try:
                await me.done.wait()
            except BaseException:
                if me.lead:  # cancelled just as our turn came: send the batch anyway
                    await self._send_batch()
                elif me in self._queue:  # not sent yet: it never will be
                    self._queue.remove(me)
                raise
            if not me.lead:
                return me.value()
        await self._send_batch()
        return me.value()

    async def _send_batch(self) -> None:
        self._busy = True
        batch, self._queue = self._queue, []
        try:
            with anyio.CancelScope(shield=True):  # others wait on this batch
                await self._send(batch)
        finally:
            for p in batch:
                p.done.set()
            if self._queue:
                nxt = self._queue[0]
                nxt.lead = True
                nxt.done.set()
            else:
                self._busy = False
