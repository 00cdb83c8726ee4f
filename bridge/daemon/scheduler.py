"""The daemon's one scheduler for the timers of every payment in flight (poll when quiet, the
payment's deadline, its outcome check), and the task group their work runs in.

One task (:meth:`Scheduler.run`) sleeps until the earliest deadline of a
:class:`bridge.core.timers.TimerHeap` (pure, tested on a fake clock) and calls what is due. A
callback is synchronous and short: it decides, and when there is I/O to do it hands a
coroutine to :meth:`Scheduler.spawn`, which runs it in the task group that owns the payments
(so a daemon that stops cancels it, and nothing outlives its owner). A quiet payment therefore
costs no task for its timers, only heap entries; work exists only while it runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus

from bridge.core.timers import Callback, Timer, TimerHeap
from bridge.daemon import loops

#: Timers due within this much of the clock fire together (the loop's own clock may have a
#: millisecond's granularity: no wake-up just short of a deadline to sleep a microsecond).
SLACK = 0.001
#: The loop sleeps this much past the earliest deadline, so the timers of thousands of
#: payments fire in a few wake-ups a second, not one each: a poll or a deadline may come this
#: much late, never early.
COALESCE = 0.05


class Scheduler:
    __slots__ = ("_tg", "_clock", "_heap", "_wake", "_next")

    def __init__(self, tg: TaskGroup, clock: Callable[[], float] = time.monotonic) -> None:
        self._tg = tg
        self._clock = clock
        self._heap = TimerHeap()
        self._wake = anyio.Event()
        #: The deadline the running loop sleeps until (inf: none).
        self._next = float("inf")

    def now(self) -> float:
        return self._clock()

    def __len__(self) -> int:
        return len(self._heap)

    def call_at(self, when: float, callback: Callback) -> Timer:
        """Call ``callback`` (synchronous, short) once the clock reaches ``when``."""
        timer = self._heap.at(when, callback)
        if when < self._next:
            self._next = when
            self._wake.set()  # the loop sleeps longer than this: it recomputes
        return timer

    def call_later(self, delay: float, callback: Callback) -> Timer:
        return self.call_at(self._clock() + delay, callback)

    def cancel(self, timer: Timer | None) -> None:
        self._heap.cancel(timer)

    def spawn(self, work: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run ``work(*args)`` in the payments' task group: its errors are its owner's to
        catch (one left uncaught would stop every payment)."""
        self._tg.start_soon(work, *args)

    def fire_due(self) -> float | None:
        """Call every callback due now; the next deadline, None when there is none."""
        for callback in self._heap.pop_due(self._clock() + SLACK):
            callback()
        return self._heap.next_at()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Fire the timers as they fall due, for the life of the task group."""
        task_status.started()
        while True:
            loops.fault_point("payment_timers")
            self._wake = anyio.Event()
            self._next = float("inf")
            when = self.fire_due()
            # a callback may have added an earlier timer meanwhile: _next says so
            self._next = min(self._next, float("inf") if when is None else when)
            delay = self._next - self._clock()
            if delay <= 0:
                await anyio.lowlevel.checkpoint()
                continue
            with anyio.move_on_after(delay + COALESCE):
                await self._wake.wait()
