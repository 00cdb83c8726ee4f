"""``pos-bridge demo``: the whole product on one machine, with no account and no setup.

A private ``redis-server`` (unless ``--redis-url``), the simulator and the daemon, then one
payment per scenario on simulated terminals, printing each event as a till receives it. Exits
0 only when every payment reached the final status its scenario promises.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bridge.config import Config
from bridge.daemon.app import Bridge
from bridge.errors import UserError
from bridge.logs import configure_logging
from bridge.redis.client import connect
from bridge.redis.keys import Keys
from bridge.redis.server import RedisServer
from bridge.simulator.server import SimulatorServer
from bridge.till.options import redis_section
from bridge.till.output import format_event, format_money
from bridge.till.sandbox import local_config

DEMO_KEY = "demo-group-key-not-secret"


@dataclass(frozen=True)
class DemoPayment:
    terminal: str
    amount: int
    expect: str  # the final status, or "failed" for order.failed
    story: str


PAYMENTS = [
    DemoPayment("SIM-APPROVE-01", 1250, "completed", "card approved"),
    DemoPayment(
        "SIM-SOFTDECLINE-APPROVE-01", 2000, "completed", "soft decline (PIN asked), then approved"
    ),
    DemoPayment("SIM-RETRY-01", 1500, "completed", "card declined, customer retries, approved"),
    DemoPayment("SIM-DROP-01", 999, "completed", "event stream dropped mid-payment"),
    DemoPayment("SIM-SLOW-01", 450, "completed", "MultiSafepay answers slowly"),
    DemoPayment(
        "SIM-CREATE-TIMEOUT-01", 3000, "completed", "create timed out after the order was made"
    ),
    DemoPayment("SIM-SOFTDECLINE-CANCEL-01", 800, "cancelled", "soft decline, then cancelled"),
    DemoPayment("SIM-CUSTOMER-CANCEL-01", 650, "cancelled", "customer cancels on the terminal"),
    DemoPayment("SIM-DECLINE-01", 700, "cancelled", "declined, not retried: expires"),
    DemoPayment("SIM-TIMEOUT-01", 1100, "cancelled", "nobody presents a card: expires"),
    DemoPayment("SIM-FAIL-01", 1000, "failed", "MultiSafepay fails: no payment made"),
    DemoPayment("SIM-UNKNOWN-01", 1000, "failed", "terminal unknown to MultiSafepay"),
]


def demo_config(redis: str | Mapping[str, Any], api_base_url: str, prefix: str) -> Config:
    # short timeouts so the create-timeout scenario resolves within the demo
    return local_config(
        redis,
        api_base_url,
        prefix,
        group=("demo-shop", DEMO_KEY, [p.terminal for p in PAYMENTS]),
        request_timeout=3.0,
        poll_interval=2.0,
        reconnect_initial=0.1,
        reconnect_cap=2.0,
        create_retries=1,
    )


def outcome(event: dict[str, Any]) -> str:
    return "failed" if event["type"] == "order.failed" else str(event["status"])


async def run_demo(config: Config, out: TextIO = sys.stdout, within: float = 180.0) -> int:
    keys = Keys(config.redis.prefix)
    redis: Redis = connect(config.redis.target)
    by_command = {f"demo-{uuid.uuid4().hex[:8]}-{i}": p for i, p in enumerate(PAYMENTS)}
    finals: dict[str, dict[str, Any]] = {}
    try:
        async with anyio.create_task_group() as tg, redis.pubsub() as pubsub:
            bridge = Bridge(config)
            await tg.start(bridge.run)
            # A till subscribes before it sends, so it cannot miss a fast answer.
            await pubsub.psubscribe(keys.terminal_channel_pattern)
            for command_id, p in by_command.items():
                await redis.xadd(
                    keys.commands,
                    {
                        "command": json.dumps(
                            {
                                "type": "pay",
                                "command_id": command_id,
                                "terminal_id": p.terminal,
                                "amount": p.amount,
                                "currency": "EUR",
                                "description": p.story,
                            }
                        )
                    },
                )
                print(
                    f"till -> pay {format_money(p.amount, 'EUR')} on {p.terminal}: {p.story}",
                    file=out,
                )
            print(file=out)
            with anyio.move_on_after(within):
                while len(finals) < len(by_command):
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        continue
                    event = json.loads(message["data"])
                    print(format_event(event), file=out)
                    if event["final"] and event.get("command_id") in by_command:
                        finals[event["command_id"]] = event
            bridge.request_stop()
    except RedisError as exc:
        raise UserError(f"cannot use Redis at {config.redis.masked_url}: {exc}") from exc
    finally:
        await redis.aclose()
    return report(by_command, finals, out)


def report(
    by_command: dict[str, DemoPayment], finals: dict[str, dict[str, Any]], out: TextIO
) -> int:
    print("\nscenario                      expected   got        ", file=out)
    failures = 0
    for command_id, p in by_command.items():
        event = finals.get(command_id)
        got = outcome(event) if event else "(no final event)"
        ok = got == p.expect
        failures += not ok
        print(f"{p.terminal:<29} {p.expect:<10} {got:<10} {'ok' if ok else 'WRONG'}", file=out)
    verdict = (
        "every payment reached its expected final status"
        if not failures
        else f"{failures} payment(s) did not"
    )
    print(f"\ndemo: {len(by_command) - failures}/{len(by_command)} ok: {verdict}", file=out)
    return 0 if not failures else 1


def demo_command(args: argparse.Namespace) -> int:
    log_path = Path(tempfile.gettempdir()) / f"pos-bridge-demo-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with ExitStack() as stack:
        log_file = stack.enter_context(open(log_path, "w"))  # noqa: SIM115
        configure_logging("info", "json", log_file)
        redis_url = args.redis_url
        if redis_url is None and not args.sentinel:
            redis_url = stack.enter_context(RedisServer()).url
        sim = stack.enter_context(SimulatorServer(speed=args.speed))
        print(
            f"pos-bridge demo: simulator at {sim.base_url} (speed x{args.speed:g}), "
            f"Redis at {redis_url}, daemon logs in {log_path}\n"
            f"watch the terminals at {sim.url}\n"
        )
        redis = redis_section(args, redis_url)
        code = anyio.run(run_demo, demo_config(redis, sim.base_url, args.prefix))
    return code
