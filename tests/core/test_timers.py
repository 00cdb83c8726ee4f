"""The heap of deadlines behind the daemon's scheduler (pure: the clock is a number here)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.core.timers import TimerHeap


def test_timers_fire_in_deadline_order_then_in_the_order_they_were_set() -> None:
    heap = TimerHeap()
    fired: list[str] = []
    heap.at(5.0, lambda: fired.append("b"))
    heap.at(1.0, lambda: fired.append("a"))
    heap.at(5.0, lambda: fired.append("c"))
    heap.at(9.0, lambda: fired.append("d"))
    assert heap.next_at() == 1.0 and len(heap) == 4
    for callback in heap.pop_due(0.5):
        callback()
    assert fired == []
    for callback in heap.pop_due(5.0):
        callback()
    assert fired == ["a", "b", "c"]
    assert heap.next_at() == 9.0 and len(heap) == 1


def test_a_cancelled_timer_never_fires_and_a_fired_one_cancels_to_nothing() -> None:
    heap = TimerHeap()
    fired: list[int] = []
    first = heap.at(1.0, lambda: fired.append(1))
    second = heap.at(2.0, lambda: fired.append(2))
    heap.cancel(first)
    heap.cancel(first)  # twice: still one cancellation
    assert not first.pending and second.pending
    assert len(heap) == 1 and heap.next_at() == 2.0
    for callback in heap.pop_due(3.0):
        callback()
    heap.cancel(second)  # fired already
    heap.cancel(None)
    assert fired == [2] and len(heap) == 0 and heap.next_at() is None


def test_many_cancelled_timers_are_dropped_at_once() -> None:
    heap = TimerHeap()
    timers = [heap.at(float(i), lambda: None) for i in range(1000)]
    for timer in timers[1:]:
        heap.cancel(timer)
    assert len(heap) == 1
    assert len(heap._heap) <= 2 * TimerHeap.COMPACT_MIN  # not 1,000 entries kept for nothing
    assert heap.next_at() == 0.0


@given(
    st.lists(st.tuples(st.floats(0, 100, allow_nan=False), st.booleans()), min_size=1, max_size=60),
    st.lists(st.floats(0, 120, allow_nan=False), min_size=1, max_size=10),
)
def test_each_live_timer_fires_once_when_due_and_never_early(
    timers: list[tuple[float, bool]], clock_steps: list[float]
) -> None:
    heap = TimerHeap()
    fired: list[int] = []
    handles = [heap.at(when, lambda i=i: fired.append(i)) for i, (when, _) in enumerate(timers)]
    for handle, (_, cancel) in zip(handles, timers, strict=True):
        if cancel:
            heap.cancel(handle)
    now = 0.0
    for step in sorted(clock_steps):
        now = step
        before = len(fired)
        for callback in heap.pop_due(now):
            callback()
        assert all(timers[i][0] <= now for i in fired[before:])  # never early
        whens = [timers[i][0] for i in fired[before:]]
        assert whens == sorted(whens)  # earliest first
        nxt = heap.next_at()
        assert nxt is None or nxt > now
    live = {i for i, (when, cancel) in enumerate(timers) if not cancel and when <= now}
    assert sorted(fired) == sorted(live)  # each once, none cancelled
    assert len(heap) == sum(1 for when, cancel in timers if not cancel and when > now)
