"""Owner leases against a real Redis: exclusive, renewable only by the owner, fencing commits."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from helpers.garbage import cyclic_garbage
from redis.asyncio import Redis

from bridge.core.events import Source
from bridge.core.normalize import Observation
from bridge.core.state import observe, order_created
from bridge.daemon.intake import CommandIntake
from bridge.redis.keys import COMMANDS_GROUP, Keys
from bridge.redis.leases import Leases
from bridge.redis.outage import RedisWaiters
from bridge.redis.presence import Presence
from bridge.redis.publisher import EventStore, LeaseLost

pytestmark = pytest.mark.anyio
KEYS = Keys("pos")


async def test_one_owner_at_a_time_and_only_the_owner_renews(redis_client: Redis) -> None:
    # a TTL no stall on a loaded machine outlasts; the lapse is then brought forward in Redis
    a, b = Leases(redis_client, KEYS, 30.0, "a"), Leases(redis_client, KEYS, 30.0, "b")
    token = await a.acquire("o1")
    assert token is not None and token.endswith("@a")
    assert await b.acquire("o1") is None
    assert await a.renew("o1", token)
    assert not await b.renew("o1", "1:b")
    await redis_client.pexpire(KEYS.lease("o1"), 1)  # lapsed: Redis's clock decides
    with anyio.fail_after(5):
        while await redis_client.exists(KEYS.lease("o1")):  # noqa: ASYNC110  # Redis state
            await anyio.sleep(0.01)
    token_b = await b.acquire("o1")
    assert token_b is not None and token_b != token
    assert not await a.renew("o1", token)  # the old owner cannot extend the new owner's lease
    await a.release("o1", token)  # nor release it
    assert await b.holder("o1") == token_b
    await b.release("o1", token_b)
    assert await b.holder("o1") is None


async def test_commits_are_fenced_by_the_lease(redis_client: Redis) -> None:
    store = EventStore(redis_client, KEYS, stream_maxlen=100, order_ttl=600)
    leases_a, leases_b = Leases(redis_client, KEYS, 10, "a"), Leases(redis_client, KEYS, 10, "b")
    now = datetime.now(UTC)
    token_a = await leases_a.acquire("o1")
    assert token_a
    await store.record(
        "o1",
        lambda st: order_created(
            order_id="o1",
            terminal_id="T",
            command_id="c",
            amount=1,
            currency="EUR",
            session_id=None,
            now=now,
        ),
        fence=token_a,
    )
    await redis_client.delete(KEYS.lease("o1"))  # a lapses (say it stalled) ...
    token_b = await leases_b.acquire("o1")  # ... and b takes the order over
    assert token_b
    obs = Observation(source=Source.STREAM, order_id="o1", status="initialized")
    with pytest.raises(LeaseLost):
        await store.record("o1", lambda st: observe(st, obs, now), fence=token_a)
    done = await store.record("o1", lambda st: observe(st, obs, now), fence=token_b)
    assert done.stream_ids
    assert await redis_client.xlen(KEYS.terminal_stream("T")) == 2


async def test_a_commit_fenced_out_by_a_lapse_revives_the_lease(redis_client: Redis) -> None:
    """A lease that lapsed with nobody taking it (the daemon stalled past its TTL) does not
    refuse its holder's next commit: the lease is set again and the commit applies. Taken by
    another daemon meanwhile, it still refuses."""
    store = EventStore(redis_client, KEYS, stream_maxlen=100, order_ttl=600)
    leases_a, leases_b = Leases(redis_client, KEYS, 10, "a"), Leases(redis_client, KEYS, 10, "b")
    store.revive = leases_a.revive
    now = datetime.now(UTC)
    token_a = await leases_a.acquire("o2")
    assert token_a
    await store.record(
        "o2",
        lambda st: order_created(
            order_id="o2",
            terminal_id="T2",
            command_id="c",
            amount=1,
            currency="EUR",
            session_id=None,
            now=now,
        ),
        fence=token_a,
    )
    await redis_client.delete(KEYS.lease("o2"))  # lapsed; nobody took it
    obs = Observation(source=Source.STREAM, order_id="o2", status="initialized")
    done = await store.record("o2", lambda st: observe(st, obs, now), fence=token_a)
    assert done.stream_ids  # applied
    assert await redis_client.get(KEYS.lease("o2")) == token_a
    assert 0 < await redis_client.pttl(KEYS.lease("o2")) <= 10_000
    await redis_client.delete(KEYS.lease("o2"))  # lapsed again, and b takes it this time
    assert await leases_b.acquire("o2")
    later = Observation(source=Source.STREAM, order_id="o2", status="completed")
    with pytest.raises(LeaseLost):
        await store.record("o2", lambda st: observe(st, later, now), fence=token_a)
    assert await redis_client.xlen(KEYS.terminal_stream("T2")) == 2


async def test_renewing_all_leases_at_once_reports_the_lost(redis_client: Redis) -> None:
    leases = Leases(redis_client, KEYS, 5.0, "a")
    held = {f"o{i}": await leases.acquire(f"o{i}") for i in range(1200)}
    await redis_client.delete(KEYS.lease("o7"), KEYS.lease("o1100"))  # lapsed...
    await redis_client.set(KEYS.lease("o1100"), "999:b")  # ... and one taken over
    lost, revived = await leases.renew_all(held)  # type: ignore[arg-type]
    assert lost == {"o1100"}  # another token holds it: lost
    assert revived == {"o7"}  # lapsed with nobody taking it: set again, with its token
    assert await redis_client.get(KEYS.lease("o7")) == held["o7"]
    await redis_client.pexpire(KEYS.lease("o0"), 50)
    assert await leases.renew_all(held) == ({"o1100"}, set())  # type: ignore[arg-type]
    assert await redis_client.pttl(KEYS.lease("o0")) > 4000  # renewed to the full TTL
    assert await redis_client.pttl(KEYS.lease("o7")) > 4000


async def test_a_pays_first_look_grants_the_lease_only_when_the_way_is_clear(
    redis_client: Redis,
) -> None:
    """``Leases.open``: the claim of the command id and the reads always; the lease (with the
    intent saved) only when the id is free or this command's, the order has no state and no
    lease, and the terminal is free or busy with this very order."""
    leases = Leases(redis_client, KEYS, 30.0, "a")

    def intent(order: str) -> tuple[list[str], list[str | int]]:
        return [KEYS.session(order), KEYS.sessions_index], [f'{{"o": "{order}"}}', 60, order]

    async def open_(order: str, command: str = "c", fingerprint: str = "f") -> Any:
        return await leases.open(order, (command, fingerprint, 600), "t1", intent(order))

    clear = await open_("o1", "c1")
    assert (clear.previous, clear.state, clear.active, clear.lease) == (None, None, None, None)
    assert clear.token is not None and clear.token.endswith(":" + leases.presence.owner)
    assert await redis_client.get(KEYS.lease("o1")) == clear.token
    assert leases.held["o1"][0] == clear.token
    assert await redis_client.get(KEYS.session("o1")) == '{"o": "o1"}'
    assert 0 < await redis_client.ttl(KEYS.session("o1")) <= 60
    assert await redis_client.smembers(KEYS.sessions_index) == {"o1"}
    assert await redis_client.get(KEYS.command_record("c1")) == "f"
    assert 0 < await redis_client.ttl(KEYS.command_record("c1")) <= 600

    # the same command again: the lease is held now, so it is read and not granted
    again = await open_("o1", "c1")
    assert (again.previous, again.lease, again.token) == ("f", clear.token, None)

    # the command id of another command: read, never granted
    await redis_client.set(KEYS.command_record("c2"), "other")
    other = await open_("o2", "c2")
    assert (other.previous, other.token) == ("other", None)
    assert await redis_client.get(KEYS.command_record("c2")) == "other"  # not overwritten

    # the order has a state: not granted
    await redis_client.hset(KEYS.order_state("o3"), "state", "{}")
    known = await open_("o3", "c3")
    assert (known.state, known.token) == ("{}", None)

    # the terminal is busy with another order: not granted; with this very order: granted
    await redis_client.set(KEYS.terminal_active("t1"), "o9")
    busy = await open_("o4", "c4")
    assert (busy.active, busy.token) == ("o9", None)
    await redis_client.set(KEYS.terminal_active("t1"), "o5")
    own = await open_("o5", "c5")
    assert own.active == "o5" and own.token is not None
    assert await redis_client.smembers(KEYS.sessions_index) == {"o1", "o5"}
    for order in ("o2", "o3", "o4"):
        assert not await redis_client.exists(KEYS.lease(order), KEYS.session(order))
        assert order not in leases.held


async def test_a_daemon_knows_which_leases_it_holds(redis_client: Redis) -> None:
    """What the renewal loop renews: every grant not yet released or forgotten."""
    a, b = Leases(redis_client, KEYS, 30.0, "a"), Leases(redis_client, KEYS, 30.0, "b")
    first = await a.acquire("o1")
    second = await a.acquire("o2")
    assert first and second and await a.acquire("o1") is None
    assert {o: t for o, (t, _) in a.held.items()} == {"o1": first, "o2": second}
    await a.release("o1", first)
    a.forget("o2", "not-the-token")  # another grant's token forgets nothing
    assert set(a.held) == {"o2"} and not b.held
    taken = await b.take_over("o2", second)
    assert taken and b.held["o2"][0] == taken
    a.forget("o2", second)
    assert not a.held


def dead_pid() -> int:
    """A process id that ran on this host and no longer does."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


async def test_a_gone_daemon_is_known_and_its_leases_taken_over_fenced(
    redis_client: Redis,
) -> None:
    """A daemon is gone when its presence lapsed, when its process is dead on this host, or
    when its consumer name runs a newer process; its leases are then taken over at once, and
    its old token can no longer commit."""
    dead = Leases(redis_client, KEYS, 10, "d1")
    await dead.presence.announce()
    token = await dead.acquire("o-gone")
    assert token is not None
    alive = Leases(redis_client, KEYS, 10, "d2")
    await alive.presence.announce()
    assert await alive.orphaned("o-gone") is None  # d1 is alive (this very process)
    assert await alive.claim("o-gone") is None

    # d1 was killed: its presence says a process that no longer exists on this host
    record = json.loads(await redis_client.get(KEYS.daemon("d1")))
    await redis_client.set(KEYS.daemon("d1"), json.dumps({**record, "pid": dead_pid()}))
    assert await alive.presence.consumer_gone("d1")
    assert await alive.orphaned("o-gone") == token
    assert await alive.orphans(["o-gone", "o-free"]) == {"o-gone": token, "o-free": ""}
    new = await alive.claim("o-gone")
    assert new is not None and new != token and alive.held_here(new)
    assert not await dead.renew("o-gone", token)  # fenced out
    assert await alive.claim("o-gone") is None  # ours now: not an orphan

    # restarted under the same name: the old incarnation's leases are orphans at once
    restarted = Leases(redis_client, KEYS, 10, "d2")
    await restarted.presence.announce()
    assert await restarted.orphaned("o-gone") == new
    assert not await restarted.presence.consumer_gone("d2")
    await redis_client.delete(KEYS.daemon("d2"))  # and a presence that lapsed
    assert await dead.presence.consumer_gone("d2")


async def test_commands_of_a_gone_consumer_are_claimed_at_once(redis_client: Redis) -> None:
    keys = Keys("claim")
    presence = Presence(redis_client, keys, "d-new", 10)
    handled: list[str] = []
    done = anyio.Event()

    async def handle(entry_id: str, fields: dict[str, str]) -> None:
        handled.append(fields["command"])
        done.set()

    intake = CommandIntake(
        redis_client,
        keys,
        "d-new",
        handle,
        claim_idle=3600,  # never by idle time: only because its daemon is gone
        waiters=RedisWaiters(),
        consumer_gone=presence.consumer_gone,
        claim_every=0.1,
    )
    await intake.ensure_group()
    await redis_client.xadd(keys.commands, {"command": "read-by-the-dead"})
    await redis_client.xreadgroup(COMMANDS_GROUP, "d-old", {keys.commands: ">"})  # then killed
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(intake.run, stop)
        with anyio.fail_after(10):
            await done.wait()
        stop.set()
    assert handled == ["read-by-the-dead"]
    consumers = await redis_client.xinfo_consumers(keys.commands, COMMANDS_GROUP)
    assert [c["name"] for c in consumers] == ["d-new"]  # the gone one left the group
    assert (await redis_client.xpending(keys.commands, COMMANDS_GROUP))["pending"] == 0


async def test_a_presence_of_a_newer_format_is_a_live_daemon(redis_client: Redis) -> None:
    """A newer release's presence cannot be judged by its fields: its daemon is alive while
    its key lives, even if it names a process that does not exist here; version 1 is still
    judged, and what this release writes says its version."""
    mine = Leases(redis_client, KEYS, 10, "n1")
    await mine.presence.announce()
    assert json.loads(await redis_client.get(KEYS.daemon("n1")))["format"] == 1
    newer = {"format": 2, "host": socket.gethostname(), "pid": dead_pid(), "incarnation": "i9"}
    await redis_client.set(KEYS.daemon("n2"), json.dumps(newer))
    await redis_client.set(KEYS.lease("o-n2"), "41:i9@n2")
    assert not await mine.presence.consumer_gone("n2")
    assert await mine.orphaned("o-n2") is None
    assert await mine.orphans(["o-n2"]) == {}
    # the same presence in version 1 (no format) names a dead process: gone
    await redis_client.set(
        KEYS.daemon("n2"), json.dumps({k: v for k, v in newer.items() if k != "format"})
    )
    assert await mine.presence.consumer_gone("n2")
    assert await mine.orphaned("o-n2") == "41:i9@n2"


async def test_renewing_after_redis_lost_the_script_leaves_no_reference_cycle(
    redis_client: Redis,
) -> None:
    """The pipeline's NOSCRIPT reply comes back as a value; its traceback held redis-py's frame
    that holds the list of replies that holds the error: a cycle, until a full collection."""
    leases = Leases(redis_client, KEYS, 5.0, "a")
    held = {"o1": await leases.acquire("o1")}
    await leases.renew_all(held)  # type: ignore[arg-type]
    await redis_client.script_flush()
    with cyclic_garbage() as garbage:
        assert await leases.renew_all(held) == (set(), set())  # type: ignore[arg-type]
    assert "NoScriptError" not in garbage
