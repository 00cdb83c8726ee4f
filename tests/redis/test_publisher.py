"""The atomic transition in a real redis-server: ordering, keys, races between publishers."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import anyio
import anyio.lowlevel
import pytest
from helpers.garbage import cyclic_garbage
from redis.asyncio import Redis

from bridge.core.events import ErrorCode, Event, EventError, EventType, Source, make_event_id
from bridge.core.normalize import Observation
from bridge.core.state import (
    Decision,
    OrderState,
    Verdict,
    observe,
    order_created,
    order_failed,
)
from bridge.redis.client import connect
from bridge.redis.keys import Keys
from bridge.redis.publisher import After, EventStore

pytestmark = pytest.mark.anyio

KEYS = Keys("pos")


def store(client: Redis, **kw: object) -> EventStore:
    return EventStore(
        client, KEYS, stream_maxlen=kw.get("maxlen", 1000), order_ttl=kw.get("ttl", 3600)
    )  # type: ignore[arg-type]


def now() -> datetime:
    return datetime.now(UTC)


def obs(status: str, source: Source = Source.STREAM) -> Observation:
    return Observation(source=source, order_id="o-1", status=status)


def created(st: OrderState | None) -> Decision:
    """Order o-1 created, unless it exists (as a pay decides)."""
    if st is not None:
        return Decision(Verdict.DUPLICATE, st)
    return order_created(
        order_id="o-1",
        terminal_id="0000004d",
        command_id="c-1",
        amount=1250,
        currency="EUR",
        session_id="s",
        now=now(),
    )


async def create(s: EventStore) -> None:
    recorded = await s.record("o-1", lambda _st: created(None))  # whatever is stored
    assert len(recorded.stream_ids) == 1


async def stream_events(client: Redis, terminal: str = "0000004D") -> list[tuple[str, dict]]:
    entries = await client.xrange(KEYS.terminal_stream(terminal))
    return [(eid, json.loads(fields["event"])) for eid, fields in entries]


async def test_transition_writes_stream_order_key_active_and_publishes(redis_client: Redis) -> None:
    s = store(redis_client)
    async with redis_client.pubsub() as pubsub:
        await pubsub.subscribe(KEYS.terminal_channel("0000004D"))
        await pubsub.get_message(timeout=1)  # subscribe confirmation
        await create(s)
        assert await redis_client.get(KEYS.terminal_active("0000004D")) == "o-1"
        for status in ("initialized", "completed"):
            await s.record("o-1", lambda st, status=status: observe(st, obs(status), now()))
        messages = []
        while len(messages) < 3:
            m = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
            assert m is not None, "a published event never arrived"
            messages.append(json.loads(m["data"]))
    entries = await stream_events(redis_client)
    assert [e["type"] for _, e in entries] == ["order.created", "order.status", "order.status"]
    # every published message names its durable stream entry, and matches it
    assert [m["stream_id"] for m in messages] == [eid for eid, _ in entries]
    assert [m["event_id"] for m in messages] == [e["event_id"] for _, e in entries]
    latest = json.loads(await redis_client.get(KEYS.order("o-1")))
    assert (
        latest["status"] == "completed"
        and latest["final"]
        and latest["stream_id"] == entries[-1][0]
    )
    assert await redis_client.get(KEYS.terminal_active("0000004D")) is None  # idle again
    ttl = await redis_client.pttl(KEYS.order("o-1"))
    assert 3_500_000 < ttl <= 3_600_000


async def test_duplicates_and_stale_publish_nothing(redis_client: Redis) -> None:
    s = store(redis_client)
    await create(s)
    first = await s.record("o-1", lambda st: observe(st, obs("initialized"), now()))
    again = await s.record("o-1", lambda st: observe(st, obs("initialized", Source.WEBHOOK), now()))
    assert first.stream_ids and not again.stream_ids and not again.published
    assert len(await stream_events(redis_client)) == 2


async def test_stale_cached_state_is_corrected_by_the_compare_and_set(redis_client: Redis) -> None:
    s = store(redis_client)
    await create(s)
    stale = await s.load("o-1")
    await s.record("o-1", lambda st: observe(st, obs("initialized"), now()))
    # a second daemon still believes the order is only created, and sees the same status
    result = await s.record(
        "o-1",
        lambda st: observe(st, obs("initialized", Source.POLL), now()),
        known=stale,
        trust_known=True,
    )
    assert not result.stream_ids
    assert [e["status"] for _, e in await stream_events(redis_client)] == [None, "initialized"]


async def test_racing_publishers_publish_each_transition_once(redis_server) -> None:
    """Many clients (as many daemons), each seeing every status on its own channel."""
    clients = [connect(redis_server.url) for _ in range(8)]
    try:
        await clients[0].flushall()
        await create(store(clients[0]))
        flow = ["initialized", "declined", "initialized", "completed"]
        sources = [Source.STREAM, Source.WEBSOCKET, Source.WEBHOOK, Source.POLL]

        async def publisher(i: int) -> None:
            s = store(clients[i])
            for status in flow:
                await s.record(
                    "o-1",
                    lambda st, status=status: observe(
                        st, Observation(source=sources[i % 4], order_id="o-1", status=status), now()
                    ),
                )
                await anyio.lowlevel.checkpoint()

        # every racer walks the same true history; each step is done by whoever gets there first
        for _ in range(3):
            async with anyio.create_task_group() as tg:
                for i in range(len(clients)):
                    tg.start_soon(publisher, i)
        events = [e for _, e in await stream_events(clients[0])]
        statuses = [e["status"] for e in events if e["type"] == "order.status"]
        assert statuses[0] == "initialized" and statuses[-1] == "completed"
        assert len({e["event_id"] for e in events}) == len(events)
        assert sum(e["final"] for e in events) == 1
        for a, b in zip(statuses, statuses[1:], strict=False):
            assert a != b
    finally:
        for c in clients:
            await c.aclose()


async def test_racing_on_one_transition_has_one_winner(redis_server) -> None:
    clients = [connect(redis_server.url) for _ in range(10)]
    try:
        await clients[0].flushall()
        await create(store(clients[0]))
        known = await store(clients[0]).load("o-1")
        results = []

        async def racer(c: Redis, source: Source) -> None:
            results.append(
                await store(c).record(
                    "o-1",
                    lambda st: observe(st, obs("completed", source), now()),
                    known=known,
                    trust_known=True,
                )
            )

        async with anyio.create_task_group() as tg:
            for i, c in enumerate(clients):
                tg.start_soon(racer, c, list(Source)[i % 4])
        winners = [r for r in results if r.stream_ids]
        assert len(winners) == 1
        events = [e for _, e in await stream_events(clients[0])]
        assert [e["status"] for e in events] == [None, "completed"]
    finally:
        for c in clients:
            await c.aclose()


async def test_order_failed_and_command_failed(redis_client: Redis) -> None:
    s = store(redis_client)
    failed = await s.record(
        "o-2",
        lambda st: order_failed(
            st,
            order_id="o-2",
            terminal_id="T1",
            command_id="c-2",
            amount=5,
            currency="EUR",
            code=ErrorCode.TERMINAL_BUSY,
            message="terminal T1 is busy",
            now=now(),
        ),
    )
    assert failed.stream_ids
    event = Event(
        event_id=make_event_id("c-3", "command.failed"),
        type=EventType.COMMAND_FAILED,
        terminal_id="T1",
        order_id="o-2",
        command_id="c-3",
        source=Source.BRIDGE,
        received_at=now(),
        error=EventError(code=ErrorCode.DUPLICATE_ORDER_ID, message="reused"),
    )
    once = KEYS.command_record("c-3") + ":failed"
    assert await s.announce(event, once) is not None
    assert await s.announce(event, once) is None  # a replayed command says it once
    types = [e["type"] for _, e in await stream_events(redis_client, "T1")]
    assert types == ["order.failed", "command.failed"]
    # command.failed does not touch the order's key
    assert json.loads(await redis_client.get(KEYS.order("o-2")))["type"] == "order.failed"


async def test_stream_is_trimmed_to_about_maxlen(redis_client: Redis) -> None:
    s = store(redis_client, maxlen=10)
    for i in range(300):
        oid = f"o-{i}"
        await s.record(
            oid,
            lambda st, oid=oid: order_created(
                order_id=oid,
                terminal_id="T9",
                command_id=None,
                amount=1,
                currency="EUR",
                session_id=None,
                now=now(),
            ),
        )
    length = await redis_client.xlen(KEYS.terminal_stream("T9"))
    assert 10 <= length < 300


async def test_scripts_survive_a_redis_restart(redis_server, redis_client: Redis) -> None:
    s = store(redis_client)
    await create(s)
    redis_server.restart()  # Redis forgets loaded scripts (and, here, all data)
    recorded = await s.record(
        "o-1",
        lambda st: observe(st, obs("initialized", Source.POLL), now(), terminal_id="0000004D"),
    )
    assert recorded.stream_ids


async def test_order_details_are_merged_into_the_kept_final(redis_client: Redis) -> None:
    """The order key keeps the final the stream gave; its card details, learned afterwards
    (``order.details``), are merged into it, and a later refund keeps both."""
    s = store(redis_client)
    await create(s)
    for status in ("initialized", "completed"):
        await s.record("o-1", lambda st, status=status: observe(st, obs(status), now()))
    final = json.loads(await redis_client.get(KEYS.order("o-1")))
    assert final["status"] == "completed" and final["details"] == {}
    assert final["transaction_id"] is None

    card = {"card": "VISA", "last4": "1234", "authorization_code": "A1/\u00e9"}
    polled = Observation(
        source=Source.POLL,
        order_id="o-1",
        status="completed",
        transaction_id="890001",
        details=card,
    )
    recorded = await s.record("o-1", lambda st: observe(st, polled, now()))
    assert [e.type for e in recorded.published] == [EventType.ORDER_DETAILS]
    kept = json.loads(await redis_client.get(KEYS.order("o-1")))
    # still the final itself (its event and stream ids, final, status), now with its details
    same = ("event_id", "stream_id", "type", "status", "final", "source", "command_id")
    assert {k: kept[k] for k in same} == {k: final[k] for k in same}
    assert kept["details"] == card and kept["transaction_id"] == "890001"
    # said once: the same details again change nothing
    again = await s.record("o-1", lambda st: observe(st, polled, now()))
    assert not again.published

    refund = Observation(
        source=Source.POLL, order_id="o-1", status="completed", amount_refunded=500
    )
    recorded = await s.record("o-1", lambda st: observe(st, refund, now()))
    assert [e.type for e in recorded.published] == [EventType.ORDER_REFUND]
    kept = json.loads(await redis_client.get(KEYS.order("o-1")))
    assert kept["event_id"] == final["event_id"]
    assert kept["details"] == {**card, "amount_refunded": 500}
    types = [e["type"] for _, e in await stream_events(redis_client)]
    assert types[-3:] == ["order.status", "order.details", "order.refund"]


async def test_commits_share_a_pool_of_one_connection(redis_server) -> None:
    """The transition batcher borrows a pooled connection per batch and gives it back: a
    client with a single connection still serves other commands between commits, and the
    script's reload after a restart (it needs a connection of its own)."""
    client = connect(redis_server.url, max_connections=1, socket_timeout=5.0)
    try:
        s = store(client)
        await create(s)
        assert await client.ping()
        redis_server.restart()  # forgets the script (and the data): the commit loads it again
        await create(s)
        assert await client.get(KEYS.terminal_active("0000004D")) == "o-1"
    finally:
        await client.aclose()


async def test_commands_after_a_commit_run_just_after_it_once(redis_server, redis_client) -> None:
    """``After``: in the commit's round trip, run by Redis after the script (they see what it
    wrote), whether it applied or not, and once, also when the script is reloaded."""
    s = store(redis_client)

    after = After([("HGET", KEYS.order_state("o-1"), "seq"), ("INCR", "n")])
    recorded = await s.record("o-1", created, known=None, trust_known=True, after=after)
    assert recorded.stream_ids and after.replies == ["1", 1]  # after the script's write

    # the compare-and-set fails (the order exists): run all the same, and not again
    lost = After([("INCR", "n")])
    recorded = await s.record("o-1", created, known=None, trust_known=True, after=lost)
    assert not recorded.stream_ids and lost.replies == [2]
    assert await redis_client.get("n") == "2"

    # nothing to commit: sent on their own
    nothing = After([("INCR", "n"), ("GET", "missing")])
    await s.record("o-1", created, after=nothing)
    assert nothing.replies == [3, None]

    redis_server.restart()  # the script is gone: the commit reloads it and is sent again
    again = After([("INCR", "n")])
    recorded = await s.record("o-1", created, known=None, trust_known=True, after=again)
    assert recorded.stream_ids and again.replies == [1]
    assert await redis_client.get("n") == "1"


async def test_a_script_redis_lost_leaves_no_reference_cycle(redis_client: Redis) -> None:
    """The transition script's NOSCRIPT reply is read as a value: an error whose traceback
    held the frame that holds the list of replies that holds the error (a cycle, collected
    only by a full collection, which the daemon's thresholds make rare)."""
    s = store(redis_client)
    await create(s)
    await redis_client.script_flush()  # as after a Redis restart: NOSCRIPT, load, again
    with cyclic_garbage() as garbage:
        recorded = await s.record(
            "o-1",
            lambda st: observe(st, obs("initialized", Source.POLL), now(), terminal_id="0000004D"),
        )
    assert recorded.stream_ids
    assert "NoScriptError" not in garbage
