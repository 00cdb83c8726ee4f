"""A MultiSafepay that answers the create, then garbage (``bridge/bench/hostile.py``): every
accepted pay still ends with exactly one final event, and no session crashes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers.harness import Till, bridge_config, running_bridge, statuses
from redis.asyncio import Redis

from bridge.bench.hostile import MODES, HostileUpstream

pytestmark = pytest.mark.anyio


@pytest.fixture
def hostile() -> Iterator[HostileUpstream]:
    with HostileUpstream() as upstream:
        yield upstream


async def test_every_hostile_payment_ends_with_one_final(
    redis_server, redis_client: Redis, hostile: HostileUpstream
) -> None:
    terminals = [f"HOSTILE-{mode}-01" for mode in MODES]
    config = bridge_config(
        redis_server.url,
        hostile.base_url,
        multisafepay={
            "max_payment_age": 20.0,  # ample for three GETs on a busy machine
            "terminal_groups": [{"name": "shop", "api_key": "k" * 20, "terminals": terminals}],
        },
    )
    till = Till(redis_client)
    async with running_bridge(config):
        sent = {terminal: await till.pay(terminal, 1250) for terminal in terminals}
        ended = {t: await till.until_final(t, c, timeout=60) for t, c in sent.items()}
        for events in ended.values():  # the session leaves the registry after its final
            await till.finished(events[-1]["order_id"], timeout=30)
        sessions = await redis_client.smembers(till.keys.sessions_index)
    for terminal, events in ended.items():
        assert sum(e["final"] for e in events) == 1, (terminal, statuses(events))
        assert events[0]["type"] == "order.created", (terminal, statuses(events))
    by_mode = {t.split("-")[1]: statuses(e) for t, e in ended.items()}
    assert by_mode["DEEPJSON"][-1] == "completed", by_mode
    assert by_mode["ABSURDEXP"][-1] == "completed", by_mode
    assert by_mode["DEEPTOKEN"][-1] == "completed", by_mode
    # an undocumented status word is not published: the till sees only what it can act on
    assert "pending_weird" not in by_mode["UNKNOWNSTATUS"]
    assert by_mode["UNKNOWNSTATUS"][-1] == "completed", by_mode
    # a lone surrogate in the card type (from GET orders) is published, made "?"
    surrogate = ended["HOSTILE-SURROGATE-01"]
    assert statuses(surrogate)[-1] == "completed", by_mode
    assert surrogate[-1]["details"]["card"] == "VI?SA"
    # nothing could be learned and the cancel failed: the deadline ends it, outcome unknown
    malformed = ended["HOSTILE-MALFORMED-01"]
    assert malformed[-1]["type"] == "order.failed", by_mode
    assert malformed[-1]["error"]["code"] == "upstream_unavailable"
    assert "outcome unknown" in malformed[-1]["error"]["message"]
    assert not sessions
