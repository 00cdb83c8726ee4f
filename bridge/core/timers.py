"""A heap of deadlines with callbacks: the per-payment timers of a whole daemon in one place.

Pure: the caller owns the clock and the waiting (``bridge.daemon.scheduler`` runs one task over
it). Why written here and not taken from the standard library or anyio:

- anyio has no timer callbacks, only ``sleep`` and cancel scopes, which need a task per timer:
  four tasks, their cancel scopes and events per payment were the memory and the garbage
  collector's work this replaces.
- asyncio's loop keeps such a heap (``loop.call_at``), but its callbacks run owned by no task
  group (an error goes to the loop's exception handler: fire-and-forget), each handle copies
  the context, and it cannot be driven by a fake clock in a test.

So: one small object per timer (:class:`Timer` is its own heap entry, ordered by deadline
then by creation), O(log n) to add, cancel in O(1) by forgetting the callback, and the
cancelled entries dropped when they reach the top or, when they are more than half of the
heap, all at once (as asyncio does).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

Callback = Callable[[], None]


class Timer:
    """One deadline; its callback is None once it fired or was cancelled."""

    __slots__ = ("when", "_seq", "callback")

    def __init__(self, when: float, seq: int, callback: Callback) -> None:
        self.when = when
        self._seq = seq
        self.callback: Callback | None = callback

    def __lt__(self, other: Timer) -> bool:
        return (self.when, self._seq) < (other.when, other._seq)

    @property
    def pending(self) -> bool:
        """Neither fired nor cancelled."""
        return self.callback is not None


class TimerHeap:
    __slots__ = ("_heap", "_seq", "_cancelled")

    #: Below this many entries the cancelled ones are left to reach the top.
    COMPACT_MIN = 64

    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._seq = 0
        self._cancelled = 0

    def __len__(self) -> int:
        """Timers not yet fired nor cancelled."""
        return len(self._heap) - self._cancelled

    def at(self, when: float, callback: Callback) -> Timer:
        """Call ``callback`` once the clock reaches ``when``."""
        self._seq += 1
        timer = Timer(when, self._seq, callback)
        heapq.heappush(self._heap, timer)
        return timer

    def cancel(self, timer: Timer | None) -> None:
        """It will not fire (nothing happens if it fired or was cancelled already)."""
        if timer is None or timer.callback is None:
            return
        timer.callback = None  # it stays in the heap, skipped, until dropped
        self._cancelled += 1
        if self._cancelled > self.COMPACT_MIN and self._cancelled * 2 > len(self._heap):
            self._heap = [t for t in self._heap if t.callback is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def next_at(self) -> float | None:
        """The earliest deadline of a live timer, None when there is none."""
        heap = self._heap
        while heap and heap[0].callback is None:
            heapq.heappop(heap)
            self._cancelled -= 1
        return heap[0].when if heap else None

    def pop_due(self, now: float) -> list[Callback]:
        """The callbacks of every live timer due at ``now``, earliest first; they are out of
        the heap (call them after, so a callback may add timers)."""
        due: list[Callback] = []
        heap = self._heap
        while heap and heap[0].when <= now:
            timer = heapq.heappop(heap)
            callback = timer.callback
            if callback is None:
                self._cancelled -= 1
                continue
            timer.callback = None  # fired: a cancel() from now on does nothing
            due.append(callback)
        return due
