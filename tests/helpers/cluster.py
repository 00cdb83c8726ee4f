"""A till on a Redis Cluster, for the cluster tests: the tools run as a till runs them."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from helpers.harness import Till
from redis.asyncio import Redis

from bridge.cli import main
from bridge.redis.cluster_server import RedisClusterServer
from bridge.redis.keys import Keys

KEYS = Keys("pos", "cluster")


def cluster_till(client: Redis) -> Till:
    till = Till(client)
    till.keys = KEYS
    return till


async def run_cli(
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    beside: Callable[[], Awaitable[None]] | None = None,
) -> tuple[int, list[dict[str, Any]], str]:
    """``pos-bridge ARGV`` in a worker thread (it runs its own event loop), with ``beside``
    running meanwhile. Returns (exit code, the JSON objects it printed, stderr)."""
    result: list[int] = []

    async def cli() -> None:
        result.append(await anyio.to_thread.run_sync(main, argv))

    async with anyio.create_task_group() as tg:
        tg.start_soon(cli)
        if beside is not None:
            await beside()
    out, err = capsys.readouterr()
    # an in-process daemon's log lines, unless a test sends them elsewhere, share stdout
    printed = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return result[0], printed, err


def pay_argv(url: str, terminal: str, *extra: str) -> list[str]:
    return [
        "pay", "--redis-url", url, "--cluster", "--terminal", terminal,
        "--amount", "12,50", "--wait", "--timeout", "120", *extra,
    ]  # fmt: skip


def other_node(cluster: RedisClusterServer, than: int) -> str:
    """The URL of a node that does not serve the bridge's slot: a till seeded there reaches
    the keys only through the cluster's redirections."""
    port = next(p for p in cluster.ports if p != than and p not in cluster.replicas_of(than))
    return f"redis://{cluster.host}:{port}"
