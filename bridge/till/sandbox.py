"""``pos-bridge sandbox``: the place a till developer integrates against.

The simulator, a private ``redis-server`` and the daemon, on free ports (or given ones), every
simulated terminal configured (any ``SIM-<SCENARIO>-NN``, see README "The simulator"), left
running until Ctrl-C. It prints where everything is and ready-to-paste ``redis-cli`` and
``pos-bridge pay`` lines. Nothing persists: the Redis data is gone when it stops.
"""

from __future__ import annotations

import argparse
import json
import shlex
import tempfile
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from bridge.config import Config
from bridge.daemon.app import Bridge
from bridge.logs import configure_logging
from bridge.redis.keys import Keys
from bridge.redis.server import RedisServer
from bridge.simulator.scenarios import BY_TERMINAL
from bridge.simulator.server import SimulatorServer
from bridge.till.options import DEFAULT_PREFIX

SANDBOX_KEY = "sandbox-group-key-not-secret"
#: Terminals that follow no scenario by name (the amount's last two digits choose it).
PLAIN_TERMINALS = ("0000004D", "TILL-1", "TILL-2")


def simulated_terminals() -> list[str]:
    """Every simulated terminal ID: each scenario's prefix with every two-digit suffix."""
    return [f"{prefix}-{n:02d}" for prefix in BY_TERMINAL for n in range(100)]


def local_config(
    redis: str | Mapping[str, Any],
    api_base_url: str,
    prefix: str,
    *,
    group: tuple[str, str, list[str]],
    **upstream: Any,
) -> Config:
    """A daemon's config for the local simulator: one terminal group (name, key, terminals),
    ``upstream`` overriding ``[multisafepay]`` defaults; ``redis``: a URL or the ``[redis]``
    table (Sentinel, TLS). Used by the sandbox and the demo."""
    name, key, terminals = group
    return Config.from_mapping(
        {
            "multisafepay": {
                "api_base_url": api_base_url,
                "connect_timeout": 2.0,
                **upstream,
                "terminal_groups": [{"name": name, "api_key": key, "terminals": terminals}],
            },
            "redis": {**({"url": redis} if isinstance(redis, str) else redis), "prefix": prefix},
            "http": {"listen": "127.0.0.1:0"},  # never collide with an installed service
        }
    )


def sandbox_config(redis_url: str, api_base_url: str, prefix: str) -> Config:
    terminals = simulated_terminals() + list(PLAIN_TERMINALS)
    return local_config(
        redis_url,
        api_base_url,
        prefix,
        group=("sandbox", SANDBOX_KEY, terminals),
        request_timeout=5.0,
    )


@dataclass(frozen=True)
class SandboxInfo:
    """Where the sandbox's parts are: what it prints (and what other tools may add to)."""

    redis_url: str
    redis_port: int
    prefix: str
    simulator_url: str
    api_base_url: str
    log_path: Path

    def lines(self) -> list[str]:
        keys = Keys(self.prefix)
        terminal = "SIM-APPROVE-01"
        pay = {
            "type": "pay",
            "command_id": "till-c-1",
            "terminal_id": terminal,
            "amount": 1250,
            "currency": "EUR",
        }
        redis_cli = ["redis-cli", "-p", str(self.redis_port)]
        tool_options = ["--redis-url", self.redis_url]
        if self.prefix != DEFAULT_PREFIX:
            tool_options += ["--prefix", self.prefix]
        return [
            "pos-bridge sandbox: running until Ctrl-C",
            f"  Redis:      {self.redis_url}  (prefix {self.prefix})",
            f"  simulator:  {self.api_base_url}  (the API)",
            f"  terminals:  {self.simulator_url}  (the page: play the customer on a terminal)",
            f"  daemon log: {self.log_path}",
            "  terminal IDs: any SIM-<SCENARIO>-NN (e.g. SIM-APPROVE-07, SIM-DECLINE-42), and "
            f"{', '.join(PLAIN_TERMINALS)} (scenario by the amount's last two digits)",
            "",
            "Subscribe, then send (in two shells):",
            "  " + shlex.join([*redis_cli, "SUBSCRIBE", keys.terminal_channel(terminal)]),
            "  " + shlex.join([*redis_cli, "XADD", keys.commands, "*", "command", json.dumps(pay)]),
            "or, as a till does:",
            "  "
            + shlex.join(
                ["pos-bridge", "pay", *tool_options, "--terminal", terminal]
                + ["--amount", "12,50", "--wait"]
            ),
            "  " + shlex.join(["pos-bridge", "tail", *tool_options]),
        ]


async def _serve(config: Config, info: SandboxInfo) -> None:
    bridge = Bridge(config)  # stops on SIGINT/SIGTERM (Ctrl-C) and hands payments over
    async with anyio.create_task_group() as tg:
        await tg.start(bridge.run)
        print("\n".join(info.lines()), flush=True)


def sandbox_command(args: argparse.Namespace) -> int:
    log_path = (
        Path(tempfile.gettempdir()) / f"pos-bridge-sandbox-{time.strftime('%Y%m%d-%H%M%S')}.log"
    )
    with ExitStack() as stack:
        log_file = stack.enter_context(open(log_path, "w"))  # noqa: SIM115
        configure_logging(args.log_level, "json", log_file)
        redis = stack.enter_context(RedisServer(port=args.redis_port))
        sim = stack.enter_context(SimulatorServer(port=args.simulator_port, speed=args.speed))
        info = SandboxInfo(
            redis_url=redis.url,
            redis_port=redis.port,
            prefix=args.prefix,
            simulator_url=sim.url,
            api_base_url=sim.base_url,
            log_path=log_path,
        )
        try:
            anyio.run(_serve, sandbox_config(redis.url, sim.base_url, args.prefix), info)
        except KeyboardInterrupt:
            pass
    print("pos-bridge sandbox: stopped", flush=True)
    return 0
