"""``rediss://`` for real: a private ``redis-server`` serving TLS only, with certificates the
test makes, that asks every client for a certificate; a payment runs through it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from helpers.certs import TestCerts, make_certs
from helpers.harness import Till, bridge_config, running_bridge
from redis.exceptions import ConnectionError as RedisConnectionError

from bridge.cli import main as cli_main
from bridge.redis.client import RedisTarget, connect
from bridge.redis.server import RedisServer, ServerTls
from bridge.simulator.server import SimulatorServer

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TestCerts:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_redis(certs: TestCerts) -> Iterator[RedisServer]:
    tls = ServerTls(str(certs.server_cert), str(certs.server_key), str(certs.ca), "yes")
    with RedisServer(tls=tls) as server:
        yield server


def _target(server: RedisServer, certs: TestCerts, **kw: object) -> RedisTarget:
    files = {
        "tls_ca_file": str(certs.ca),
        "tls_cert_file": str(certs.client_cert),
        "tls_key_file": str(certs.client_key),
    }
    return RedisTarget(url=server.url, **{**files, **kw})  # type: ignore[arg-type]


async def test_tls_with_a_client_certificate(tls_redis: RedisServer, certs: TestCerts) -> None:
    assert tls_redis.url.startswith("rediss://")
    client = connect(_target(tls_redis, certs))
    try:
        assert await client.ping()
        ports = await client.config_get("*port")
        assert ports["port"] == "0" and ports["tls-port"] == str(tls_redis.port)  # TLS only
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "change",
    [
        {"tls_cert_file": None, "tls_key_file": None},  # the server asks for a certificate
        {"tls_ca_file": None},  # the system's CAs do not know the test CA
        {"tls_ca_file": "other"},  # nor does another CA
    ],
)
async def test_tls_refused_without_the_right_files(
    tls_redis: RedisServer, certs: TestCerts, change: dict[str, str | None]
) -> None:
    if change.get("tls_ca_file") == "other":
        change = {"tls_ca_file": str(certs.other_ca)}
    client = connect(_target(tls_redis, certs, **change), socket_timeout=5.0)
    try:
        with pytest.raises(RedisConnectionError):
            await client.ping()
    finally:
        await client.aclose()


async def test_payment_over_tls(tls_redis: RedisServer, certs: TestCerts) -> None:
    target = _target(tls_redis, certs)
    files = {k: getattr(target, k) for k in ("tls_ca_file", "tls_cert_file", "tls_key_file")}
    with SimulatorServer(speed=10) as sim:
        config = bridge_config(tls_redis.url, sim.base_url, redis={**files, "prefix": "tls"})
        assert config.redis.target.tls_kwargs() == target.tls_kwargs()
        client = connect(config.redis.target)
        try:
            till = Till(client, prefix="tls")
            async with running_bridge(config):
                command_id = await till.pay("SIM-APPROVE-01", 1250)
                events = await till.until_final("SIM-APPROVE-01", command_id, timeout=30)
            assert events[-1]["status"] == "completed"
        finally:
            await client.aclose()


def test_till_tool_over_tls(tls_redis: RedisServer, certs: TestCerts, tmp_path: Path) -> None:
    """``pos-bridge pay`` with the TLS flags sends its command over TLS (no daemon: sent only)."""
    argv = [
        "pay", "--redis-url", tls_redis.url, "--prefix", "tlstool", "--terminal", "T1",
        "--amount", "1", "--tls-ca-file", str(certs.ca),
        "--tls-cert-file", str(certs.client_cert), "--tls-key-file", str(certs.client_key),
    ]  # fmt: skip
    assert cli_main(argv) == 0

    async def count() -> int:
        client = connect(_target(tls_redis, certs))
        try:
            return int(await client.xlen("tlstool:commands"))
        finally:
            await client.aclose()

    assert anyio.run(count) == 1
    assert cli_main(argv[:-6]) == 2  # no CA, no certificate: nothing sent, exit 2
