"""``bridge.redis.coalesce``: calls made meanwhile go out together, each gets its own answer."""

from __future__ import annotations

import anyio
import pytest

from bridge.redis.coalesce import Coalescer, Pending

pytestmark = pytest.mark.anyio


class Recorder:
    """A ``send`` that answers each item doubled, after a checkpoint (a round trip)."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on
        self.gate = anyio.Event()

    async def send(self, batch: list[Pending[int]]) -> None:
        self.batches.append([p.item for p in batch])
        await self.gate.wait()
        for p in batch:
            if p.item == self.fail_on:
                p.error = ValueError(f"refused {p.item}")
            else:
                p.result = p.item * 2


async def test_alone_a_call_is_sent_at_once() -> None:
    rec = Recorder()
    rec.gate.set()
    calls = Coalescer(rec.send)
    assert await calls.call(1) == 2
    assert await calls.call(2) == 4
    assert rec.batches == [[1], [2]]


async def test_calls_made_while_one_is_in_flight_go_out_in_one_batch() -> None:
    rec = Recorder()
    calls = Coalescer(rec.send)
    results: dict[int, int] = {}

    async def call(i: int) -> None:
        results[i] = await calls.call(i)

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(call, i)
        await anyio.wait_all_tasks_blocked()
        rec.gate.set()
    assert rec.batches == [[0], [1, 2, 3, 4]]
    assert results == {i: 2 * i for i in range(5)}


async def test_an_error_is_raised_to_its_own_caller_only() -> None:
    rec = Recorder(fail_on=3)
    calls = Coalescer(rec.send)
    outcomes: dict[int, object] = {}

    async def call(i: int) -> None:
        try:
            outcomes[i] = await calls.call(i)
        except ValueError as exc:
            outcomes[i] = str(exc)

    async with anyio.create_task_group() as tg:
        for i in range(1, 5):
            tg.start_soon(call, i)
        await anyio.wait_all_tasks_blocked()
        rec.gate.set()
    assert outcomes == {1: 2, 2: 4, 3: "refused 3", 4: 8}


async def test_a_caller_cancelled_before_its_batch_is_not_sent() -> None:
    rec = Recorder()
    calls = Coalescer(rec.send)
    results: list[int] = []

    async def call(i: int) -> None:
        results.append(await calls.call(i))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, 1)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(call, 2)  # queued behind 1's batch
        await anyio.wait_all_tasks_blocked()
        async with anyio.create_task_group() as inner:
            waiting = anyio.CancelScope()

            async def cancelled_call() -> None:
                with waiting:
                    await calls.call(99)

            inner.start_soon(cancelled_call)
            await anyio.wait_all_tasks_blocked()
            waiting.cancel()
        rec.gate.set()
    assert rec.batches == [[1], [2]]  # 99 left the queue when its caller was cancelled
    assert sorted(results) == [2, 4]
