"""MultiSafepay over TLS for real: the simulator serving HTTPS and WSS only, with a throwaway CA
the test makes; the daemon trusts it through ``[multisafepay] ca_file`` (REST, SSE and the
message bus, one context), and a daemon that does not trust it fails at once, saying why."""

from __future__ import annotations

import io
import json
import ssl
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

import anyio
import httpx
import pytest
from helpers.harness import API_KEY, Till, bridge_config, running_bridge, statuses
from redis.asyncio import Redis

from bridge.core.events import Source
from bridge.multisafepay.sse import StreamError, sse_messages
from bridge.multisafepay.tls import client_context
from bridge.multisafepay.websocket import bus_messages
from bridge.redis.server import RedisServer
from bridge.simulator.certs import LocalCa, make_local_ca
from bridge.simulator.server import SimulatorServer

pytestmark = pytest.mark.anyio

VERIFY_FAILED = "CERTIFICATE_VERIFY_FAILED"


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalCa, LocalCa]:
    """The simulator's CA, and another that signed nothing the simulator serves."""
    d = tmp_path_factory.mktemp("upstream-tls")
    return make_local_ca(d, "ca"), make_local_ca(d, "other")


@pytest.fixture
def tls_sim(cas: tuple[LocalCa, LocalCa]) -> Iterator[SimulatorServer]:
    with SimulatorServer(speed=10, tls=cas[0].server) as sim:
        yield sim


def _create_order(sim: SimulatorServer, ca_file: Path, terminal: str) -> dict[str, str]:
    """An order made straight on the simulator (its events URLs and token), trusting its CA."""
    trust = ssl.create_default_context(cafile=str(ca_file))
    body = {"type": "redirect", "order_id": f"tls-{terminal}", "currency": "EUR", "amount": 100}
    body |= {"description": "tls", "gateway_info": {"terminal_id": terminal}}
    with httpx.Client(verify=trust) as http:
        answer = http.post(sim.base_url + "orders", headers={"api_key": API_KEY}, json=body)
    data: dict[str, str] = answer.json()["data"]
    return data


@pytest.mark.parametrize("transport", ["sse", "websocket"])
async def test_a_payment_over_https_and_wss_with_the_ca_trusted(
    redis_server: RedisServer,
    redis_client: Redis,
    tls_sim: SimulatorServer,
    cas: tuple[LocalCa, LocalCa],
    transport: str,
) -> None:
    assert tls_sim.base_url.startswith("https://")
    upstream = {"ca_file": str(cas[0].ca_file), "transport": transport}
    config = bridge_config(redis_server.url, tls_sim.base_url, multisafepay=upstream)
    till = Till(redis_client)
    async with running_bridge(config) as bridge:
        command_id = await till.pay("SIM-APPROVE-01", 1250)
        events = await till.until_final("SIM-APPROVE-01", command_id, timeout=30)
        assert bridge.sessions is not None
    assert statuses(events) == ["order.created", "initialized", "completed"]
    # the stream itself spoke (over TLS), not only the polls
    stream = Source.STREAM if transport == "sse" else Source.WEBSOCKET
    assert stream in {e["source"] for e in events}


async def test_an_untrusted_certificate_fails_the_payment_at_once_naming_the_verification(
    redis_server: RedisServer,
    redis_client: Redis,
    tls_sim: SimulatorServer,
    cas: tuple[LocalCa, LocalCa],
    daemon_log: io.StringIO,
) -> None:
    upstream = {"ca_file": str(cas[1].ca_file)}  # a CA that did not sign the simulator's
    config = bridge_config(redis_server.url, tls_sim.base_url, multisafepay=upstream)
    till = Till(redis_client)
    async with running_bridge(config):
        command_id = await till.pay("SIM-APPROVE-01", 1250)
        # create_retries 1, nothing sent upstream: the final is not the request timeout's
        with anyio.fail_after(10):
            events = await till.until_final("SIM-APPROVE-01", command_id, timeout=10)
    final = events[-1]
    assert final["type"] == "order.failed" and final["error"]["code"] == "upstream_unavailable"
    assert VERIFY_FAILED in final["error"]["message"]
    lines = [json.loads(line) for line in daemon_log.getvalue().splitlines()]
    failed = [line for line in lines if line["event"] == "order.failed"]
    assert failed and VERIFY_FAILED in json.dumps(failed[0])


async def test_the_stream_readers_verify_against_the_context_they_are_given(
    tls_sim: SimulatorServer, cas: tuple[LocalCa, LocalCa]
) -> None:
    """SSE and the bus: refused with the default trust store (certificate verification named),
    read with the context of ``ca_file``."""
    order = _create_order(tls_sim, cas[0].ca_file, "SIM-APPROVE-02")
    token = order["events_token"]
    sse_url, bus_url = order["events_stream_url"], order["events_url"]
    assert sse_url.startswith("https://") and bus_url.startswith("wss://")
    for default in (sse_messages(sse_url, token), bus_messages(bus_url, token)):
        with pytest.raises(StreamError, match=VERIFY_FAILED):
            async with aclosing(default) as messages:
                await anext(messages)
    trusting = client_context(str(cas[0].ca_file))
    assert client_context(str(cas[0].ca_file)) is trusting  # one context per trust setting
    readers = [
        (sse_messages, "events_stream_url", "SIM-APPROVE-03"),
        (bus_messages, "events_url", "SIM-APPROVE-04"),
    ]
    for read, field, terminal in readers:
        order = _create_order(tls_sim, cas[0].ca_file, terminal)  # a new one: its first status
        with anyio.fail_after(15):
            reader = read(order[field], order["events_token"], tls=trusting)
            async with aclosing(reader) as messages:
                message = await anext(messages)
        assert json.loads(message.data)["status"] in {"initialized", "completed"}
