"""``refund`` and ``cancel --wait`` against a real daemon (in-process), the simulator and a
private redis-server; ``pay --wait`` with no daemon reading; ``--help`` defaults; hints that
work as printed."""

from __future__ import annotations

import argparse
import json

import anyio
import pytest
from helpers.harness import Till, bridge_config, running_bridge, statuses
from redis.asyncio import Redis

from bridge.cli import build_parser, main
from bridge.simulator.server import SimulatorServer
from bridge.till.daemons import describe_readers

pytestmark = pytest.mark.anyio


async def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list, str]:
    code = await anyio.to_thread.run_sync(main, argv)
    out, err = capsys.readouterr()
    # the in-process daemon's log lines may share stdout: the tool prints JSON objects
    return code, [json.loads(line) for line in out.splitlines() if line.startswith("{")], err


async def test_refund_and_cancel_wait_for_their_own_answer(
    redis_server, redis_client: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    till = Till(redis_client)
    url = ["--redis-url", redis_server.url]
    with SimulatorServer(speed=10) as sim:
        async with running_bridge(bridge_config(redis_server.url, sim.base_url)):
            paid = await till.pay("SIM-APPROVE-01", 1250, order_id="cli-refund")
            await till.until_final("SIM-APPROVE-01", paid)
            # the terminal is read from the order key
            code, out, err = await run_cli(
                ["refund", *url, "--order-id", "cli-refund", "--amount", "3,00", "--wait"], capsys
            )
            assert code == 0, err
            sent, *events = out
            assert sent["type"] == "refund" and sent["amount"] == 300
            assert events[-1]["type"] == "order.refund"
            assert events[-1]["command_id"] == sent["command_id"]
            code, out, err = await run_cli(
                ["refund", *url, "--order-id", "cli-refund", "--amount", "20", "--wait"], capsys
            )
            assert code == 1  # more than remains
            assert out[-1]["error"]["code"] == "not_refundable"

            await till.pay("SIM-TIMEOUT-01", 500, order_id="cli-cancel")
            await till.wait_for(
                "SIM-TIMEOUT-01", lambda ev: any(e["status"] == "initialized" for e in ev)
            )
            code, out, err = await run_cli(
                ["cancel", *url, "--order-id", "cli-cancel", "--wait", "--timeout", "30"], capsys
            )
            assert code == 0, err
            assert statuses(out[1:])[-1] == "cancelled" and out[-1]["final"] is True
            code, out, err = await run_cli(
                ["cancel", *url, "--order-id", "cli-cancel", "--wait", "--timeout", "30"], capsys
            )
            assert code == 1 and out[-1]["error"]["code"] == "not_cancellable"


async def test_pay_wait_says_when_no_daemon_reads(
    redis_server, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["pay", "--redis-url", redis_server.url, "--prefix", "lonely", "--terminal", "T1"]
    code, out, err = await run_cli([*argv, "--amount", "1", "--wait", "--timeout", "4"], capsys)
    assert code == 3
    lines = err.splitlines()
    assert "no daemon has ever read lonely:commands" in lines[0]
    # the hint works as printed: it names the Redis and the prefix given
    assert f"--redis-url {redis_server.url}" in lines[-1] and "--prefix lonely" in lines[-1]
    assert "pos-bridge tail --terminal T1" in lines[-1]


def test_readers_from_the_consumer_group() -> None:
    assert describe_readers(None, [], "pos:commands") is not None
    group = {"name": "pos-bridge", "lag": 3}
    assert describe_readers(group, [{"name": "d1", "idle": 400}], "s") is None
    stale = describe_readers(group, [{"name": "d1", "idle": 90_000}], "s")
    assert stale is not None and "90 s ago" in stale and "3 command(s) wait" in stale
    assert "no consumers" in (describe_readers(group, [], "s") or "")


def test_help_shows_every_default() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("pay", "cancel", "refund", "tail"):
        for action in sub.choices[name]._actions:
            if action.option_strings and action.help and action.dest != "help":
                assert not action.required or action.default is None
                if not action.required:
                    assert "default" in action.help, f"{name} {action.option_strings}"
