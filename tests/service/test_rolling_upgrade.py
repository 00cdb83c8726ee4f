"""A rolling upgrade on real processes: a daemon of the previous release (built from git history
into its own virtualenv, ``helpers.release``) and one of this checkout run on one private Redis
and one simulator, payments flow through both, the old one is stopped with SIGTERM mid-flow,
and every payment ends with exactly one final event, none lost or doubled. The guarantee and
the rule that keeps it: docs/redis-formats.md."""

from __future__ import annotations

import json
import signal
from typing import Any

import httpx
import pytest
import redis
from helpers.harness import assert_faithful
from helpers.release import NoHistory, release_program

from bridge.redis.keys import Keys
from bridge.redis.server import RedisServer
from bridge.simulator.server import SimulatorServer
from tests.service.conftest import Daemon, pay, wait_until

#: Release N-1: main just before the formats daemons share in Redis were versioned
#: (docs/redis-formats.md). Move it on to the release before when a release is cut, never to
#: make this test pass.
PREVIOUS_RELEASE = "929767a01ae2e884e41f92598f1fcba882df1fd2"

KEYS = Keys("pos")
TERMINALS = [f"SIM-MANUAL-{i:02d}" for i in range(1, 11)]  # each waits for a tap
#: A payment here may stay open through both daemons' starts and the old one's stop.
MAX_PAYMENT_AGE = 120.0
#: Lines that would mean a record was misread, a payment or a command mishandled.
BAD_LOG_EVENTS = {"record.newer_format", "session.crashed", "command.crashed", "session.no_key"}


def events_of(client: redis.Redis, terminal: str, order_id: str) -> list[dict[str, Any]]:
    entries = client.xrange(KEYS.terminal_stream(terminal))
    events = [json.loads(fields["event"]) | {"stream_id": eid} for eid, fields in entries]
    return [e for e in events if e["order_id"] == order_id]


def holder(client: redis.Redis, order_id: str) -> str:
    """The consumer name of the daemon holding the order's lease ("" when none does)."""
    token = client.get(KEYS.lease(order_id)) or ""
    return token.rpartition("@")[2] if "@" in token else ""


def initialized(client: redis.Redis, terminal: str, order_id: str) -> bool:
    """The payment is under way: created, its stream open, its lease held."""
    events = events_of(client, terminal, order_id)
    return any(e.get("status") == "initialized" for e in events) and bool(holder(client, order_id))


def final(client: redis.Redis, terminal: str, order_id: str) -> bool:
    return any(e["final"] for e in events_of(client, terminal, order_id))


def tap(sim: SimulatorServer, terminal: str) -> None:
    answer = httpx.post(sim.url + "_sim/press", json={"terminal_id": terminal, "action": "tap"})
    assert answer.status_code == 200, answer.text


def bad_lines(daemon: Daemon) -> list[dict[str, Any]]:
    return [
        line
        for line in daemon.log_lines()
        if line.get("event") in BAD_LOG_EVENTS or line.get("level") in ("error", "critical")
    ]


def adopted_by(daemon: Daemon) -> set[str]:
    return {
        str(line["order_id"])
        for line in daemon.log_lines()
        if line.get("event") == "session.adopted"
    }


def test_a_daemon_of_the_previous_release_runs_beside_this_one(start_daemon) -> None:
    """Both ways: the new daemon restarted while the old one runs (the old one takes its
    payments over, reading what the new one wrote), then the old one stopped for good (the new
    one takes everything over)."""
    try:
        old_program = release_program(PREVIOUS_RELEASE)
    except NoHistory as exc:
        pytest.skip(f"no previous release to run beside this one: {exc}")
    with RedisServer() as server, SimulatorServer(speed=10) as sim:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        settings = {"terminals": TERMINALS, "max_payment_age": MAX_PAYMENT_AGE}
        old = start_daemon(
            server.url, sim.base_url, program=str(old_program), consumer_name="old", **settings
        )
        old.wait_http("/readyz", 200)
        terminal_of: dict[str, str] = {}
        ended: list[str] = []

        def start_payment(terminal: str) -> str:
            order_id = pay(client, terminal, "ru-")
            terminal_of[order_id] = terminal
            wait_until(lambda: initialized(client, terminal, order_id), f"{order_id} under way")
            return order_id

        def finish(order_ids: list[str]) -> None:
            for order_id in order_ids:
                tap(sim, terminal_of[order_id])
            for order_id in order_ids:
                terminal = terminal_of[order_id]
                wait_until(lambda o=order_id, t=terminal: final(client, t, o), f"{order_id} final")
            ended.extend(order_ids)

        def open_payments() -> list[str]:
            return [o for o in terminal_of if o not in ended]

        def taken_over_by(name: str) -> None:
            for order_id in open_payments():
                wait_until(lambda o=order_id: holder(client, o) == name, f"{order_id} to {name}")

        # the old release alone: its payments are under way when the new one starts
        first = [start_payment(t) for t in TERMINALS[:3]]
        assert {holder(client, o) for o in first} == {"old"}
        new = start_daemon(server.url, sim.base_url, consumer_name="new", **settings)
        new.wait_http("/readyz", 200)

        # both: commands go to either (one consumer group), each follows what it took
        second = [start_payment(t) for t in TERMINALS[3:7]]
        owners = {o: holder(client, o) for o in second}
        # Redis hands each command to the reader that has waited longest: they alternate
        assert set(owners.values()) == {"old", "new"}, owners
        finish([first[0], second[0], second[1]])  # ended while both run, by either

        # the new one restarted mid-flow (SIGTERM, a pay arriving): the old one takes over
        # what the new one followed, from the records the new one wrote
        new_held = [o for o in open_payments() if holder(client, o) == "new"]
        new.proc.send_signal(signal.SIGTERM)
        during = pay(client, TERMINALS[0], "ru-")
        terminal_of[during] = TERMINALS[0]
        assert new.proc.wait(60) == 0, new.log()[-4000:]
        wait_until(lambda: initialized(client, TERMINALS[0], during), f"{during} under way")
        taken_over_by("old")
        newer = start_daemon(server.url, sim.base_url, consumer_name="new", **settings)
        newer.wait_http("/readyz", 200)

        # the rolling upgrade proper: SIGTERM to the old one mid-flow, pays arriving meanwhile
        old_held = open_payments()
        old.proc.send_signal(signal.SIGTERM)
        third = [pay(client, t, "ru-") for t in TERMINALS[7:10]]
        terminal_of.update(zip(third, TERMINALS[7:10], strict=True))
        assert old.proc.wait(60) == 0, old.log()[-4000:]
        for order_id in third:
            terminal = terminal_of[order_id]
            wait_until(lambda o=order_id, t=terminal: initialized(client, t, o), order_id)
        taken_over_by("new")
        finish(open_payments())
        upstream = httpx.get(sim.url + "_sim/orders", timeout=5).json()["data"]
        assert newer.terminate() == 0, newer.log()[-4000:]

        assert new_held  # the old one took payments over from the new one ...
        assert set(new_held) <= adopted_by(old)
        assert old_held and set(old_held) <= adopted_by(newer)  # ... and the new one from it
        # every payment: exactly one final, what MultiSafepay says, no transition twice
        by_order = {o["order_id"]: o for o in upstream}
        for order_id, terminal in terminal_of.items():
            events = events_of(client, terminal, order_id)
            assert_faithful(events, ["order.created", "initialized", "completed"])
            assert [e["status"] for e in events if e["final"]] == [by_order[order_id]["status"]]
            assert len({e["stream_id"] for e in events}) == len(events)
        # each pay created one order upstream, and nothing else was created
        assert sorted(o["order_id"] for o in upstream) == sorted(terminal_of)
        for daemon in (old, new, newer):
            assert not bad_lines(daemon), bad_lines(daemon)
