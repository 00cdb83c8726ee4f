"""The README's ACL for a till, in the cluster layout, on every node of a real cluster: the
till pays with it, and cannot read the daemon's keys (sessions hold events tokens)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from helpers.cluster import KEYS, pay_argv, run_cli
from helpers.harness import bridge_config, running_bridge
from redis.asyncio import Redis

from bridge.redis.client import RedisTarget, connect
from bridge.redis.cluster_server import RedisClusterServer
from bridge.simulator.server import SimulatorServer

pytestmark = pytest.mark.anyio

#: As the README prints it (section "Redis Cluster"), with the test's password.
TILL_ACL = (
    "till7 on >till-password resetkeys resetchannels %W~{pos}:commands %R~{pos}:terminal:* "
    "%R~{pos}:order:* &{pos}:terminal:* +xadd +xread +xrange +xrevrange +get +ssubscribe "
    "+ping +xinfo|groups +xinfo|consumers +cluster|slots +command"
)


def test_the_readme_prints_this_acl() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    assert "user " + TILL_ACL.replace("till-password", "TILL-PASSWORD") in readme


async def test_a_till_pays_with_its_acl_and_reads_no_daemon_key(
    redis_cluster: RedisClusterServer,
    cluster_client: Redis,
    simulator: SimulatorServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for port in redis_cluster.ports:  # ACL users are per node
        redis.Redis(host=redis_cluster.host, port=port).execute_command(  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            "ACL", "SETUSER", *TILL_ACL.split()
        )
    config = bridge_config(redis_cluster.url, simulator.base_url, redis={"layout": "cluster"})
    node = redis_cluster.url.removeprefix("redis://")
    till_url = f"redis://till7:till-password@{node}"
    async with running_bridge(config):
        code, out, err = await run_cli(
            pay_argv(till_url, "SIM-APPROVE-01", "--order-id", "till7-a1"), capsys
        )
        assert code == 0, err
        assert out[-1]["status"] == "completed"
    till = connect(RedisTarget(url=till_url, cluster=True))
    try:
        assert await till.get(KEYS.order("till7-a1")) is not None
        assert await cluster_client.exists(KEYS.session("till7-a1")) == 0  # ended: write one
        await cluster_client.set(KEYS.session("till7-a1"), "events token")
        with pytest.raises(redis.exceptions.NoPermissionError):
            await till.get(KEYS.session("till7-a1"))
    finally:
        await till.aclose()
