"""``pos-bridge receipt`` and ``pay --wait --receipt`` against the daemon, the simulator and a
real redis-server: the command line a till would run, end to end."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from helpers.harness import Till, bridge_config, running_bridge, statuses
from redis.asyncio import Redis

from bridge import logs
from bridge.cli import main
from bridge.simulator.server import SimulatorServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(speed=10) as sim:
        yield sim


@pytest.fixture(autouse=True)
def daemon_logs_aside() -> Iterator[None]:
    """The daemon runs in this process: its log lines must not mix with the CLI's stdout."""
    logs.configure_logging("info", "json", io.StringIO(), environ={})
    try:
        yield
    finally:
        logs.reset_logging()


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``pos-bridge ARGV`` (it runs its own event loop: in a thread), its exit code and output."""
    code = await anyio.to_thread.run_sync(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def paid(till: Till, terminal: str, order_id: str) -> dict[str, Any]:
    command_id = await till.pay(terminal, 1250, order_id=order_id)
    events = await till.until_final(terminal, command_id)
    assert statuses(events)[-1] == "completed"
    return events[-1]


async def test_receipt_printed_as_text_and_as_json(
    redis_server, redis_client: Redis, simulator: SimulatorServer, capsys
) -> None:
    till = Till(redis_client)
    redis = ["--redis-url", redis_server.url]
    async with running_bridge(bridge_config(redis_server.url, simulator.base_url)):
        final = await paid(till, "TILL-A", "cli-r-1")
        capsys.readouterr()
        code, text, _ = await run_cli(
            capsys, "receipt", "--order-id", "cli-r-1", "--text", "--width", "32", *redis
        )
        assert code == 0, text
        code, piped, _ = await run_cli(capsys, "receipt", "--order-id", "cli-r-1", *redis)
        assert code == 0
    lines = text.splitlines()
    assert all(len(line) <= 32 for line in lines)
    assert text.count("*** APPROVED ***") == 2 and "MERCHANT COPY" in text
    assert "TOTAL" + " " * 18 + "EUR 12.50" in lines
    event = json.loads(piped)  # one JSON line: the order.receipt event
    assert event["type"] == "order.receipt" and event["order_id"] == "cli-r-1"
    assert event["transaction_id"] == final["transaction_id"]
    # a stream's final carries no card (it follows as order.details): the receipt's own card
    # is the one the simulator played, and the printed copy shows it
    last4 = event["details"]["card"]["last4"]
    assert re.fullmatch(r"\d{4}", last4), last4
    assert any(line.endswith("**** **** **** " + last4) for line in lines)


async def test_no_receipt_exit_codes(
    redis_server, redis_client: Redis, simulator: SimulatorServer, capsys
) -> None:
    redis = ["--redis-url", redis_server.url]
    async with running_bridge(bridge_config(redis_server.url, simulator.base_url)):
        unknown = await run_cli(
            capsys, "receipt", "--order-id", "nope", "--terminal", "TILL-A", "--text", *redis
        )
        no_terminal = await run_cli(capsys, "receipt", "--order-id", "nope", *redis)
    assert unknown[0] == 1 and "not_found" in unknown[2]
    assert no_terminal[0] == 2 and "pass --terminal" in no_terminal[2]


async def test_pay_wait_receipt(
    redis_server, redis_client: Redis, simulator: SimulatorServer, capsys
) -> None:
    redis = ["--redis-url", redis_server.url]
    async with running_bridge(bridge_config(redis_server.url, simulator.base_url)):
        code, out, err = await run_cli(
            capsys,
            "pay",
            "--terminal",
            "TILL-B",
            "--amount",
            "12,50",
            "--order-id",
            "cli-pay-r",
            "--wait",
            "--receipt",
            "--timeout",
            "30",
            *redis,
        )
        refused = await run_cli(
            capsys, "pay", "--terminal", "TILL-B", "--amount", "1", "--receipt", *redis
        )
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]  # piped: JSON lines
    kinds = [line.get("type") for line in lines]
    assert kinds[-2:] == ["order.status", "order.receipt"], kinds
    assert lines[-2]["status"] == "completed" and lines[-1]["details"]["result"] == "approved"
    assert refused[0] == 2 and "--receipt needs --wait" in refused[2]
