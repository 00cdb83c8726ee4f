"""The daemon's scheduler on a fake clock: timers fire when the clock says, in order, work runs
in the owner's task group and stops with it. No real time is asserted: the clock only moves
when the test moves it, and the test waits until every task is blocked."""

from __future__ import annotations

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from bridge.daemon.scheduler import Scheduler

pytestmark = pytest.mark.anyio


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def advance(clock: FakeClock, sched: Scheduler, to: float) -> None:
    """Move the clock, then wake the scheduler's loop (as a new earlier timer would) and let
    it run until it sleeps again."""
    clock.now = to
    sched.call_at(float("-inf"), lambda: None)  # a timer due at once: the loop looks again
    await wait_all_tasks_blocked()


async def test_timers_fire_when_the_clock_reaches_them_and_not_before() -> None:
    clock = FakeClock()
    fired: list[str] = []
    async with anyio.create_task_group() as tg:
        sched = Scheduler(tg, clock)
        await tg.start(sched.run)
        sched.call_at(1010.0, lambda: fired.append("poll"))
        sched.call_later(5.0, lambda: fired.append("sooner"))
        late = sched.call_at(1300.0, lambda: fired.append("deadline"))
        await wait_all_tasks_blocked()
        assert fired == []
        await advance(clock, sched, 1005.0)
        assert fired == ["sooner"]
        await advance(clock, sched, 1200.0)
        assert fired == ["sooner", "poll"]
        sched.cancel(late)
        await advance(clock, sched, 2000.0)
        assert fired == ["sooner", "poll"] and len(sched) == 0
        tg.cancel_scope.cancel()


async def test_a_callback_may_set_timers_and_spawn_work_that_stops_with_its_owner() -> None:
    clock = FakeClock()
    steps: list[str] = []
    stopped = anyio.Event()

    async def work(name: str) -> None:
        steps.append(f"{name} started")
        try:
            await anyio.sleep_forever()
        finally:
            stopped.set()

    async with anyio.create_task_group() as tg:
        sched = Scheduler(tg, clock)
        await tg.start(sched.run)

        def due() -> None:
            steps.append("due")
            sched.call_later(1.0, lambda: steps.append("again"))
            sched.spawn(work, "job")

        sched.call_later(1.0, due)
        await advance(clock, sched, 1001.0)
        assert steps == ["due", "job started"]
        await advance(clock, sched, 1002.0)
        assert steps == ["due", "job started", "again"]
        tg.cancel_scope.cancel()
    assert stopped.is_set()  # the work ended with the task group that owns it
