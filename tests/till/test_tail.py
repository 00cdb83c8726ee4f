"""``pos-bridge tail`` against a real redis-server: catch-up, then live, each event once."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from bridge.cli import main
from bridge.core.events import Source
from bridge.core.normalize import Observation
from bridge.core.state import observe, order_created
from bridge.redis.keys import Keys
from bridge.redis.publisher import EventStore
from bridge.till.output import Printer, format_event
from bridge.till.tail import Tail

pytestmark = pytest.mark.anyio

KEYS = Keys("pos")


def now() -> datetime:
    return datetime.now(UTC)


class Daemon:
    """Writes events the way the daemon does (EventStore + the core state machine)."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.store = EventStore(client, KEYS, stream_maxlen=1000, order_ttl=3600)

    async def create(self, order_id: str, terminal: str) -> None:
        await self.store.record(
            order_id,
            lambda _st: order_created(
                order_id=order_id,
                terminal_id=terminal,
                command_id=f"c-{order_id}",
                amount=1250,
                currency="EUR",
                session_id=None,
                now=now(),
            ),
        )

    async def status(self, order_id: str, word: str) -> None:
        await self.store.record(
            order_id,
            lambda st: observe(
                st, Observation(source=Source.STREAM, order_id=order_id, status=word), now()
            ),
        )

    async def ids(self, terminal: str) -> list[str]:
        return [eid for eid, _ in await self.client.xrange(KEYS.terminal_stream(terminal))]


class Written(io.StringIO):
    """What the printer wrote, with an event set at each write (the tail runs in this loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.wrote = anyio.Event()

    def write(self, text: str) -> int:
        n = super().write(text)
        self.wrote.set()
        return n

    async def next_write(self) -> None:
        await self.wrote.wait()
        self.wrote = anyio.Event()


class Lines:
    def __init__(self) -> None:
        self.out = Written()

    @property
    def events(self) -> list[dict]:
        return [json.loads(x) for x in self.out.getvalue().splitlines()]

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[dict]:
        with anyio.fail_after(timeout):
            while len(self.events) < count:
                await self.out.next_write()
        return self.events


@asynccontextmanager
async def tailing(client: Redis, **kw: object) -> AsyncIterator[tuple[Lines, Tail]]:
    lines = Lines()
    tail = Tail(
        client,
        KEYS,
        Printer(json_lines=True, out=lines.out),
        block_ms=100,
        rescan_interval=0.1,
        **kw,
    )  # type: ignore[arg-type]
    await tail.start()
    async with anyio.create_task_group() as tg:
        tg.start_soon(tail.run, "redis://test")
        yield lines, tail
        tg.cancel_scope.cancel()


async def test_from_start_prints_the_stream_then_live_events(redis_client: Redis) -> None:
    d = Daemon(redis_client)
    await d.create("o-1", "T1")
    await d.status("o-1", "initialized")
    await d.create("o-other", "T2")  # another terminal: not printed
    async with tailing(redis_client, terminal="t1", from_start=True) as (lines, _):
        events = await lines.wait_for(2)
        assert [e["type"] for e in events] == ["order.created", "order.status"]
        await d.status("o-1", "completed")
        events = await lines.wait_for(3)
    assert [e.get("status") for e in events] == [None, "initialized", "completed"]
    assert [e["stream_id"] for e in events] == await d.ids("T1")  # each once, in order
    assert {e["terminal_id"] for e in events} == {"T1"}


async def test_since_prints_only_what_came_after_that_id(redis_client: Redis) -> None:
    d = Daemon(redis_client)
    await d.create("o-1", "T1")
    await d.status("o-1", "initialized")
    await d.status("o-1", "declined")
    first = (await d.ids("T1"))[0]
    async with tailing(redis_client, terminal="T1", since=first) as (lines, _):
        assert [e["status"] for e in await lines.wait_for(2)] == ["initialized", "declined"]
        await d.status("o-1", "cancelled")
        events = await lines.wait_for(3)
    assert [e["stream_id"] for e in events] == (await d.ids("T1"))[1:]
    assert events[-1]["final"] is True


async def test_without_since_only_new_events_are_printed(redis_client: Redis) -> None:
    d = Daemon(redis_client)
    await d.create("o-1", "T1")
    async with tailing(redis_client, terminal="T1") as (lines, _):
        await d.status("o-1", "completed")  # the marker: printed in stream order, after any old
        events = await lines.wait_for(1)
    assert [e.get("status") for e in events] == ["completed"]


async def test_a_terminal_without_a_stream_yet_is_followed_from_its_first_event(
    redis_client: Redis,
) -> None:
    d = Daemon(redis_client)
    async with tailing(redis_client, terminal="T9") as (lines, _):
        await d.create("o-9", "T9")
        assert [e["type"] for e in await lines.wait_for(1)] == ["order.created"]


async def test_all_terminals_including_ones_that_appear_later(redis_client: Redis) -> None:
    d = Daemon(redis_client)
    await d.create("o-1", "T1")
    await d.create("o-2", "T2")
    await redis_client.set("pos:terminal:T1:active", "o-1")  # not a stream: ignored
    async with tailing(redis_client) as (lines, tail):
        assert set(tail.positions) == {KEYS.terminal_stream("T1"), KEYS.terminal_stream("T2")}
        await d.status("o-1", "completed")
        await d.create("o-3", "T3")  # a terminal that had no stream when tail started
        await d.status("o-3", "initialized")
        await d.status("o-2", "cancelled")
        events = await lines.wait_for(4)
    assert sorted((e["order_id"], e["type"], e.get("status")) for e in events) == [
        ("o-1", "order.status", "completed"),
        ("o-2", "order.status", "cancelled"),
        ("o-3", "order.created", None),
        ("o-3", "order.status", "initialized"),
    ]


async def test_all_terminals_from_start_in_time_order(redis_client: Redis) -> None:
    d = Daemon(redis_client)
    await d.create("o-1", "T1")
    await anyio.sleep(0.002)  # ids are milliseconds: order across streams needs one between
    await d.create("o-2", "T2")
    await anyio.sleep(0.002)
    await d.status("o-1", "completed")
    async with tailing(redis_client, from_start=True) as (lines, _):
        events = await lines.wait_for(3)
    assert [(e["order_id"], e["type"]) for e in events] == [
        ("o-1", "order.created"),
        ("o-2", "order.created"),
        ("o-1", "order.status"),
    ]


async def test_tail_resumes_after_redis_comes_back(
    redis_server, redis_client: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    d = Daemon(redis_client)
    await d.create("o-1", "T1")
    async with tailing(redis_client, terminal="T1", from_start=True) as (lines, _):
        await lines.wait_for(1)
        redis_server.stop()
        await anyio.sleep(1.5)  # longer than redis-py's own retries
        await anyio.to_thread.run_sync(redis_server.start)  # empty again: no persistence
        await d.create("o-2", "T1")
        events = await lines.wait_for(2, timeout=10)
    assert [e["order_id"] for e in events] == ["o-1", "o-2"]
    err = capsys.readouterr().err
    assert "lost Redis" in err and "Redis is back" in err


async def test_tail_cli_refuses_a_bad_since(
    redis_server, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await anyio.to_thread.run_sync(
        main, ["tail", "--redis-url", redis_server.url, "--terminal", "T1", "--since", "yesterday"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--since 'yesterday' is not a stream id" in err


async def test_tail_cli_reports_a_refusal_in_one_line(
    redis_server, redis_client: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    await redis_client.set(KEYS.terminal_stream("T1"), "not a stream")
    code = await anyio.to_thread.run_sync(
        main, ["tail", "--redis-url", redis_server.url, "--terminal", "T1", "--from-start"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "refused the request: WRONGTYPE" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_tail_cli_prints_json_lines_and_stops_cleanly_on_a_signal(
    redis_server, redis_client: Redis, sig: signal.Signals
) -> None:
    d = Daemon(redis_client)
    await d.create("o-1", "T1")
    exe = Path(sys.executable).with_name("pos-bridge")
    argv = [str(exe), "tail", "--redis-url", redis_server.url, "--terminal", "T1", "--from-start"]
    proc = await anyio.to_thread.run_sync(
        lambda: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    )
    try:
        line = await anyio.to_thread.run_sync(proc.stdout.readline)  # type: ignore[union-attr]
        assert json.loads(line)["order_id"] == "o-1"  # stdout is a pipe: JSON
        await d.status("o-1", "completed")
        line = await anyio.to_thread.run_sync(proc.stdout.readline)  # type: ignore[union-attr]
        assert json.loads(line)["status"] == "completed"
        proc.send_signal(sig)
        code = await anyio.to_thread.run_sync(lambda: proc.wait(timeout=10))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0
    assert proc.stderr is not None and proc.stderr.read() == ""  # no traceback


async def test_tail_cli_unreachable_redis(capsys: pytest.CaptureFixture[str]) -> None:
    from bridge.redis.server import free_port

    code = await anyio.to_thread.run_sync(
        main, ["tail", "--redis-url", f"redis://u:pw@127.0.0.1:{free_port()}/0"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "cannot reach Redis at redis://u:***@127.0.0.1:" in err and "pw@" not in err


# -- the readable line ------------------------------------------------------------------------


def test_readable_lines() -> None:
    completed = {
        "schema": 1,
        "event_id": "e",
        "type": "order.status",
        "terminal_id": "0000004D",
        "order_id": "till7-000123",
        "command_id": "c-8f2",
        "status": "completed",
        "final": True,
        "amount": 1250,
        "currency": "EUR",
        "source": "stream",
        "received_at": "2026-11-24T10:15:02.123456Z",
        "details": {"card": "VISA", "last4": "1234"},
        "stream_id": "1764000000000-0",
    }
    line = format_event(completed, tz=UTC, today=date(2026, 11, 24))
    assert line == (
        "10:15:02.123 0000004D till7-000123 order.status   completed   FINAL EUR 12.50 "
        "VISA ****1234 [stream] id=1764000000000-0"
    )
    failed = {
        "type": "order.failed",
        "terminal_id": "T1",
        "order_id": "o-1",
        "final": True,
        "amount": 5,
        "currency": "EUR",
        "source": "bridge",
        "received_at": "2026-11-23T23:00:00Z",
        "error": {"code": "terminal_busy", "message": "terminal T1 is busy\nnewline"},
    }
    line = format_event(failed, tz=UTC, today=date(2026, 11, 24))
    assert line.startswith("2026-11-23 23:00:00.000 T1 o-1 order.failed ")
    assert line.endswith("FINAL EUR 0.05 error terminal_busy: terminal T1 is busy newline [bridge]")
    assert "\n" not in line
