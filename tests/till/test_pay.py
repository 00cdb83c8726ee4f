"""``pos-bridge pay`` and ``cancel`` against a real redis-server.

No daemon exists here: each test plays its part, reading the command from ``{p}:commands`` and
writing events through :class:`EventStore` and the core state machine, so what ``pay`` reads is
the real wire format (stream entries, pub/sub messages with ``stream_id``, order keys).
"""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import anyio
import pytest
from redis.asyncio import Redis

from bridge.cli import main
from bridge.core.commands import PayCommand, derive_order_id, parse_command
from bridge.core.events import ErrorCode, Event, EventError, EventType, Source, make_event_id
from bridge.core.normalize import Observation
from bridge.core.state import observe, order_created, order_failed
from bridge.redis.keys import Keys
from bridge.redis.publisher import EventStore
from bridge.redis.server import free_port
from bridge.till.output import Printer
from bridge.till.pay import CommandWatch, build_pay

pytestmark = pytest.mark.anyio

KEYS = Keys("pos")
TERMINAL = "0000004d"  # as a till might write it; keys and events use 0000004D


def now() -> datetime:
    return datetime.now(UTC)


def store(client: Redis) -> EventStore:
    return EventStore(client, KEYS, stream_maxlen=1000, order_ttl=3600)


async def next_command(
    client: Redis, after: str = "0-0", within: float = 5.0
) -> tuple[str, PayCommand]:
    with anyio.fail_after(within):
        while True:
            answer = await client.xread({KEYS.commands: after}, count=1, block=100)
            if answer:
                entry_id, fields = answer[0][1][0]
                return entry_id, parse_command(fields["command"])  # type: ignore[return-value]


async def create(s: EventStore, cmd: PayCommand) -> str:
    order_id = cmd.order_id or derive_order_id(cmd.command_id or "")
    await s.record(
        order_id,
        lambda _st: order_created(
            order_id=order_id,
            terminal_id=cmd.terminal_id,
            command_id=cmd.command_id,
            amount=cmd.amount,
            currency=cmd.currency,
            session_id="s-1",
            now=now(),
        ),
    )
    return order_id


async def status(s: EventStore, order_id: str, word: str, source: Source = Source.STREAM) -> None:
    recorded = await s.record(
        order_id,
        lambda st: observe(st, Observation(source=source, order_id=order_id, status=word), now()),
    )
    assert recorded.stream_ids, f"{word} was not published"


async def command_failed(s: EventStore, cmd: PayCommand, code: ErrorCode, message: str) -> None:
    event = Event(
        event_id=make_event_id(cmd.command_id, "command.failed"),
        type=EventType.COMMAND_FAILED,
        terminal_id=cmd.terminal,
        order_id=cmd.order_id,
        command_id=cmd.command_id,
        source=Source.BRIDGE,
        received_at=now(),
        error=EventError(code=code, message=message),
    )
    assert await s.announce(event, KEYS.command_record(cmd.command_id or "") + ":failed")


async def run_cli(
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    responder: Callable[[], Awaitable[None]] | None = None,
) -> tuple[int, list[str], str]:
    """``bridge.cli.main(argv)`` in a worker thread (it runs its own event loop), with an
    optional daemon stand-in beside it. Returns (exit code, stdout lines, stderr)."""
    result: list[int] = []

    async def cli() -> None:
        result.append(await anyio.to_thread.run_sync(main, argv))

    async with anyio.create_task_group() as tg:
        tg.start_soon(cli)
        if responder is not None:
            await responder()
    out, err = capsys.readouterr()
    return result[0], out.splitlines(), err


def pay_argv(url: str, *extra: str) -> list[str]:
    return ["pay", "--redis-url", url, "--terminal", TERMINAL, "--amount", "12,50", *extra]


# -- the command ---------------------------------------------------------------------------


async def test_pay_without_wait_sends_the_command_and_prints_ids(
    redis_server, redis_client: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run_cli(
        pay_argv(redis_server.url, "--description", "Till 7 sale 1"), capsys
    )
    assert code == 0 and err == ""
    assert len(out) == 1
    printed = json.loads(out[0])  # stdout is not a terminal: JSON
    entry_id, cmd = await next_command(redis_client)
    assert isinstance(cmd, PayCommand)
    assert cmd.amount == 1250 and cmd.currency == "EUR" and cmd.terminal_id == TERMINAL
    assert cmd.order_id is None and cmd.description == "Till 7 sale 1"
    assert cmd.command_id and cmd.command_id.startswith("cli-")
    assert printed["command_id"] == cmd.command_id
    assert printed["order_id"] == derive_order_id(cmd.command_id)
    assert printed["entry_id"] == entry_id
    # what was written is exactly the documented command
    raw = json.loads((await redis_client.xrange(KEYS.commands))[0][1]["command"])
    assert raw == {
        "type": "pay",
        "command_id": cmd.command_id,
        "terminal_id": TERMINAL,
        "amount": 1250,
        "currency": "EUR",
        "description": "Till 7 sale 1",
    }


async def test_pay_with_order_id_and_lower_case_currency(
    redis_server, redis_client: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await run_cli(
        pay_argv(redis_server.url, "--order-id", "till7-000123", "--currency", "usd"), capsys
    )
    assert code == 0 and json.loads(out[0])["order_id"] == "till7-000123"
    _, cmd = await next_command(redis_client)
    assert isinstance(cmd, PayCommand) and cmd.order_id == "till7-000123" and cmd.currency == "USD"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--amount", "12.555"], "more than two decimals"),
        (["--amount", "-3"], "not a positive number"),
        (["--amount", "0,00"], "more than zero"),
        (["--amount", "twelve"], "not a positive number"),
        (["--amount", "1", "--terminal", "bad id!"], "terminal ID 'bad id!' is not valid"),
        (["--amount", "1", "--order-id", "way too long " * 5], "order ID"),
        (["--amount", "1", "--currency", "EURO"], "three-letter code"),
    ],
)
async def test_pay_refuses_bad_input_with_one_line_and_exit_2(
    redis_server,
    redis_client: Redis,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    argv = ["pay", "--redis-url", redis_server.url, "--terminal", TERMINAL, "--wait", *flags]
    code, out, err = await run_cli(argv, capsys)
    assert code == 2 and out == []
    assert err.count("\n") == 1 and err.startswith("pos-bridge: ") and message in err
    assert await redis_client.xlen(KEYS.commands) == 0  # nothing was sent


def test_build_pay_uses_the_core_parser() -> None:
    body = build_pay(terminal=" 0000004d ", amount="0.01", command_id="c-1")
    assert body == {
        "type": "pay",
        "command_id": "c-1",
        "terminal_id": "0000004d",
        "amount": 1,
        "currency": "EUR",
    }
    assert isinstance(parse_command(json.dumps(body)), PayCommand)


async def test_unreachable_redis_is_one_line_with_the_password_masked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    for argv in (
        pay_argv(url),
        pay_argv(url, "--wait"),
        ["cancel", "--redis-url", url, "--order-id", "o-1"],
    ):
        code, out, err = await run_cli(argv, capsys)
        assert code == 2 and out == []
        assert err.count("\n") == 1, err
        assert err.startswith("pos-bridge: cannot reach Redis at redis://:***@127.0.0.1:")
        assert "s3cret" not in err and "Traceback" not in err


# -- --wait: the outcome ------------------------------------------------------------------


async def test_wait_prints_events_and_exits_0_on_completed(
    redis_server, redis_client: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    subscribers: list[int] = []

    async def daemon() -> None:
        _, cmd = await next_command(redis_client)
        # pay subscribed to the terminal's channel before it wrote the command
        subscribers.append(
            (await redis_client.pubsub_numsub(KEYS.terminal_channel(TERMINAL)))[0][1]
        )
        s = store(redis_client)
        # answer at once, with no pause: a subscriber that came after the command would miss it
        order_id = await create(s, cmd)
        await status(s, order_id, "initialized")
        await status(s, order_id, "completed")
        # something after the final is not waited for nor printed (another payment)
        await create(s, cmd.model_copy(update={"order_id": "other", "command_id": "x"}))

    code, out, err = await run_cli(
        pay_argv(redis_server.url, "--wait", "--timeout", "10"), capsys, daemon
    )
    assert subscribers == [1]  # subscribed before the command: the fast answer is not missed
    assert code == 0, err
    sent, *events = [json.loads(line) for line in out]
    assert [e["type"] for e in events] == ["order.created", "order.status", "order.status"]
    assert [e.get("status") for e in events] == [None, "initialized", "completed"]
    assert events[-1]["final"] is True
    assert all(e["order_id"] == sent["order_id"] for e in events)
    stream_ids = [eid for eid, _ in await redis_client.xrange(KEYS.terminal_stream(TERMINAL))]
    assert [e["stream_id"] for e in events] == stream_ids[:3]
    assert err == ""


@pytest.mark.parametrize("ending", ["cancelled", "expired", "order.failed", "command.failed"])
async def test_wait_exits_1_when_the_payment_does_not_complete(
    redis_server, redis_client: Redis, capsys: pytest.CaptureFixture[str], ending: str
) -> None:
    async def daemon() -> None:
        _, cmd = await next_command(redis_client)
        assert isinstance(cmd, PayCommand)
        s = store(redis_client)
        if ending == "order.failed":
            order_id = cmd.order_id or ""
            await s.record(
                order_id,
                lambda st: order_failed(
                    st,
                    order_id=order_id,
                    terminal_id=cmd.terminal_id,
                    command_id=cmd.command_id,
                    amount=cmd.amount,
                    currency=cmd.currency,
                    code=ErrorCode.TERMINAL_BUSY,
                    message="terminal 0000004D is busy",
                    now=now(),
                ),
            )
        elif ending == "command.failed":
            await command_failed(s, cmd, ErrorCode.DUPLICATE_ORDER_ID, "order id o-9 is taken")
        else:
            order_id = await create(s, cmd)
            await status(s, order_id, "declined")  # not final: pay keeps waiting
            await status(s, order_id, ending)

    code, out, err = await run_cli(
        pay_argv(redis_server.url, "--wait", "--order-id", "o-9", "--timeout", "10"), capsys, daemon
    )
    assert code == 1, err
    last = json.loads(out[-1])
    assert last["type"] == (ending if "." in ending else "order.status")
    if ending == "command.failed":
        assert last["error"]["code"] == "duplicate_order_id" and last["final"] is False
    if ending == "order.failed":
        assert last["error"]["code"] == "terminal_busy" and last["final"] is True
    if ending == "cancelled":
        assert [json.loads(x).get("status") for x in out[1:]] == [None, "declined", "cancelled"]


async def test_wait_ignores_other_payments_on_the_same_terminal(
    redis_server, redis_client: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    async def daemon() -> None:
        _, cmd = await next_command(redis_client)
        assert isinstance(cmd, PayCommand)
        s = store(redis_client)
        other = await create(
            s, cmd.model_copy(update={"order_id": "someone-else", "command_id": "c-x"})
        )
        await status(s, other, "completed")
        mine = await create(s, cmd)
        await status(s, mine, "cancelled")

    code, out, _ = await run_cli(
        pay_argv(redis_server.url, "--wait", "--timeout", "10"), capsys, daemon
    )
    assert code == 1
    events = [json.loads(x) for x in out[1:]]
    assert {e["order_id"] for e in events} == {json.loads(out[0])["order_id"]}


async def test_wait_timeout_exits_3_and_says_how_to_follow(
    redis_server, redis_client: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    async def daemon() -> None:
        _, cmd = await next_command(redis_client)
        await create(store(redis_client), cmd)  # created, then nothing more

    code, out, err = await run_cli(
        pay_argv(redis_server.url, "--wait", "--timeout", "0.5", "--prefix", "pos"), capsys, daemon
    )
    assert code == 3
    assert [json.loads(x)["type"] for x in out[1:]] == ["order.created"]
    assert err.count("\n") == 1 and "unknown" in err and "may still complete" in err
    assert f"pos-bridge tail --terminal {TERMINAL.upper()} --since " in err
    assert "--redis-url" in err  # not the default URL: the hint names it


# -- --wait: robustness -------------------------------------------------------------------


async def test_wait_catches_up_from_the_stream_after_the_subscription_drops(
    redis_server, redis_client: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    async def daemon() -> None:
        _, cmd = await next_command(redis_client)
        s = store(redis_client)
        order_id = await create(s, cmd)
        # drop pay's subscription: what is published until it is back reaches nobody
        await redis_client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await status(s, order_id, "initialized")
        await status(s, order_id, "completed")

    code, out, err = await run_cli(
        pay_argv(redis_server.url, "--wait", "--timeout", "10"), capsys, daemon
    )
    assert code == 0, err
    events = [json.loads(x) for x in out[1:]]
    assert [e.get("status") for e in events] == [None, "initialized", "completed"]  # each once
    stream_ids = [eid for eid, _ in await redis_client.xrange(KEYS.terminal_stream(TERMINAL))]
    assert [e["stream_id"] for e in events] == stream_ids


async def test_wait_survives_a_redis_restart(
    redis_server, redis_client: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    async def daemon() -> None:
        _, cmd = await next_command(redis_client)
        redis_server.stop()  # pay is cut off: longer than redis-py's own retries last
        await anyio.sleep(1.5)
        await anyio.to_thread.run_sync(redis_server.start)  # empty: no persistence
        s = store(redis_client)
        order_id = await create(s, cmd)
        await status(s, order_id, "completed")

    code, out, err = await run_cli(
        pay_argv(redis_server.url, "--wait", "--timeout", "10"), capsys, daemon
    )
    assert code == 0, err
    assert [json.loads(x).get("status") for x in out[1:]] == [None, "completed"]
    assert "lost Redis" in err and "Traceback" not in err


async def test_catch_up_prints_what_pubsub_missed_once(redis_client: Redis) -> None:
    out = io.StringIO()
    s = store(redis_client)
    cmd = parse_command(json.dumps(build_pay(terminal=TERMINAL, amount="5", command_id="c-1")))
    assert isinstance(cmd, PayCommand)
    await create(s, cmd.model_copy(update={"order_id": "before", "command_id": "c-0"}))
    start = (await redis_client.xrevrange(KEYS.terminal_stream(TERMINAL), count=1))[0][0]
    watch = CommandWatch(
        keys=KEYS,
        terminal=TERMINAL,
        command_id="c-1",
        order_id=derive_order_id("c-1"),
        printer=Printer(json_lines=True, out=out),
        last_id=start,
    )
    # while "disconnected": the order is created and moves on; one event came by pub/sub
    order_id = await create(s, cmd)
    created = json.loads(await redis_client.get(KEYS.order(order_id)))
    assert watch.handle(created)  # delivered by pub/sub before the drop
    await status(s, order_id, "initialized")
    await status(s, order_id, "declined")
    assert await watch.catch_up(redis_client) == 2
    assert await watch.catch_up(redis_client) == 0  # nothing twice
    assert watch.outcome is None
    again = json.loads(await redis_client.get(KEYS.order(order_id)))
    assert not watch.handle(again)  # the same event arriving late on pub/sub: not printed
    await status(s, order_id, "completed")
    assert await watch.catch_up(redis_client) == 1 and watch.outcome == 0
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [e.get("status") for e in lines] == [None, "initialized", "declined", "completed"]
    assert all(e["order_id"] == order_id for e in lines)  # "before" was not this payment's


async def test_catch_up_reads_the_order_key_when_the_stream_was_trimmed(
    redis_client: Redis,
) -> None:
    s = EventStore(redis_client, KEYS, stream_maxlen=1, order_ttl=3600)
    out = io.StringIO()
    watch = CommandWatch(
        keys=KEYS,
        terminal=TERMINAL,
        command_id="c-1",
        order_id="o-1",
        printer=Printer(json_lines=True, out=out),
        last_id="1-0",
    )
    cmd = parse_command(
        json.dumps(build_pay(terminal=TERMINAL, amount="5", command_id="c-1", order_id="o-1"))
    )
    assert isinstance(cmd, PayCommand)
    order_id = await create(s, cmd)
    await status(s, order_id, "completed")
    # trim hard: the final is gone from the stream, only the order key holds it
    await redis_client.xtrim(KEYS.terminal_stream(TERMINAL), maxlen=0)
    await s.record(
        "o-2",
        lambda _st: order_created(
            order_id="o-2",
            terminal_id=TERMINAL,
            command_id="c-2",
            amount=1,
            currency="EUR",
            session_id=None,
            now=now(),
        ),
    )
    await watch.catch_up(redis_client)
    assert watch.outcome == 0
    assert json.loads(out.getvalue().splitlines()[-1])["status"] == "completed"


# -- cancel -----------------------------------------------------------------------------------


async def test_cancel_finds_the_terminal_from_the_order_key(
    redis_server, redis_client: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    cmd = parse_command(
        json.dumps(
            build_pay(terminal=TERMINAL, amount="5", command_id="c-1", order_id="till7-000123")
        )
    )
    assert isinstance(cmd, PayCommand)
    await create(store(redis_client), cmd)
    code, out, err = await run_cli(
        ["cancel", "--redis-url", redis_server.url, "--order-id", "till7-000123"], capsys
    )
    assert code == 0, err
    printed = json.loads(out[0])
    _, cancel = await next_command(redis_client)
    assert cancel.type == "cancel" and cancel.order_id == "till7-000123"
    assert cancel.terminal_id == "0000004D"  # from the order's latest event
    assert printed["command_id"] == cancel.command_id and printed["type"] == "cancel"


async def test_cancel_with_terminal_needs_no_order_key(
    redis_server, redis_client: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = await run_cli(
        ["cancel", "--redis-url", redis_server.url, "--order-id", "o-7", "--terminal", "T1"], capsys
    )
    _, cancel = await next_command(redis_client)
    assert code == 0 and cancel.terminal_id == "T1" and cancel.order_id == "o-7"


async def test_cancel_of_an_unknown_order_fails_clearly(
    redis_server, redis_client: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run_cli(
        ["cancel", "--redis-url", redis_server.url, "--order-id", "nope"], capsys
    )
    assert code == 2 and out == []
    assert err.count("\n") == 1 and "unknown order ID 'nope'" in err and "pass --terminal" in err
    assert await redis_client.xlen(KEYS.commands) == 0
