"""The README's ACL example ("Redis access for tills"), loaded into a private redis-server and
used for real: the daemon runs as its user, a till's own tools (``pos-bridge pay``/``cancel``
processes) as the till user. The till user does what a till does and cannot read the daemon's
keys: the sessions hold MultiSafepay events tokens."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers.harness import bridge_config, running_bridge
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError

from bridge.redis.client import connect
from bridge.redis.keys import Keys
from bridge.redis.server import RedisServer
from bridge.simulator.server import SimulatorServer

pytestmark = pytest.mark.anyio

README = Path(__file__).resolve().parents[2] / "README.md"
DAEMON_PW, TILL_PW = "daemon-pw-7Yq2", "till-pw-Xk81"
TERMINAL = "SIM-MANUAL-01"  # waits for a person: the session (and its token) stays in Redis
READ_BY_TYPE = {
    "string": ("GET",),
    "hash": ("HGETALL",),
    "set": ("SMEMBERS",),
    "zset": ("ZRANGE", "0", "-1"),
    "list": ("LRANGE", "0", "-1"),
    "stream": ("XRANGE", "-", "+"),
}


def readme_acl() -> list[list[str]]:
    """The ``user ...`` lines of the README's ACL example, as ``ACL SETUSER`` arguments."""
    text = README.read_text()
    section = text[text.index("### Redis access for tills") :]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block is not None, "the README's ACL example is gone"
    lines = [line.split() for line in block.group(1).splitlines() if line.startswith("user ")]
    assert [line[1] for line in lines] == ["pos-bridge", "till7"]
    pw = {"pos-bridge": DAEMON_PW, "till7": TILL_PW}
    return [
        [line[1], *(f">{pw[line[1]]}" if t.startswith(">") else t for t in line[2:])]
        for line in lines
    ]


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def admin(acl_redis: RedisServer) -> AsyncIterator[Redis]:
    client = connect(acl_redis.url)
    await client.flushall()
    for rules in readme_acl():
        await client.execute_command("ACL", "SETUSER", *rules)
    try:
        yield client
    finally:
        await client.aclose()


def user_url(server: RedisServer, user: str, password: str) -> str:
    return f"redis://{user}:{password}@{server.host}:{server.port}/0"


async def tool(*argv: str) -> tuple[int, list[dict[str, Any]], str]:
    """A till tool in its own process, as a till runs it: exit code, JSON lines, stderr."""
    done = await anyio.run_process(
        [sys.executable, "-m", "bridge.cli", *argv], check=False, stdin=None
    )
    out = [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]
    return done.returncode, out, done.stderr.decode()


async def refused(client: Redis, *command: str) -> bool:
    try:
        await client.execute_command(*command)
    except NoPermissionError:
        return True
    return False


async def test_readme_acl_daemon_and_till_users(acl_redis: RedisServer, admin: Redis) -> None:
    keys = Keys("pos")
    till_url = user_url(acl_redis, "till7", TILL_PW)
    till = connect(till_url)
    with SimulatorServer(speed=10) as sim:
        config = bridge_config(user_url(acl_redis, "pos-bridge", DAEMON_PW), sim.base_url)
        assert config.redis.prefix == "pos"  # the example's prefix
        async with running_bridge(config):
            redis = ["--redis-url", till_url]
            code, out, err = await tool(
                "pay", *redis, "--terminal", TERMINAL, "--amount", "9.95", "--order-id", "acl-1"
            )
            assert code == 0, err
            # the daemon (as its user) made the order and follows it: its session is stored
            with anyio.fail_after(30):
                while not await admin.exists(keys.session("acl-1")):  # noqa: ASYNC110 # Redis state
                    await anyio.sleep(0.05)
            session = await admin.get(keys.session("acl-1"))
            assert session is not None and "events_token" in session

            # what a till may do
            async with till.pubsub() as pubsub:
                await pubsub.subscribe(keys.terminal_channel(TERMINAL))
            assert json.loads(await till.get(keys.order("acl-1")))["order_id"] == "acl-1"
            assert await till.xrange(keys.terminal_stream(TERMINAL))

            # what it may not: every daemon key there is now, and the classes the README names
            daemon_keys = [
                k
                for k in await admin.keys("pos:*")
                if not re.match(r"pos:(terminal:|order:|commands$)", k)
            ]
            assert keys.session("acl-1") in daemon_keys
            for key in daemon_keys:
                read = READ_BY_TYPE[await admin.type(key)]
                assert await refused(till, read[0], key, *read[1:]), key
            for key in ("pos:session:x", "pos:state:x", "pos:lease:x", "pos:cmd:x"):
                assert await refused(till, "GET", key), key
            assert await refused(till, "XRANGE", keys.commands, "-", "+")  # others' commands
            assert await refused(till, "XADD", keys.terminal_stream(TERMINAL), "*", "event", "{}")
            assert await refused(till, "PUBLISH", keys.terminal_channel(TERMINAL), "{}")
            assert await refused(till, "SET", keys.order("acl-1"), "{}")
            assert await refused(till, "KEYS", "*")

            # and the till ends its payment with its own tool
            code, out, err = await tool(
                "cancel", *redis, "--order-id", "acl-1", "--wait", "--timeout", "60"
            )
            assert code == 0, err
            assert out[-1]["status"] == "cancelled" and out[-1]["final"]
    await till.aclose()
