"""Micro-benchmark of the Redis side: what one atomic transition costs against a real Redis.

    python -m bridge.bench.transition [--events N]

Starts a private redis-server, then measures, in one run and on one connection:
- baseline: a PING round trip (the floor for any one-call-per-event design);
- transition: the core's decision plus the Lua compare-and-set (XADD, SET, PUBLISH, HSET),
  one event per call, as the daemon does it for a session it owns (cached state).
Reports microseconds per event and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime
from functools import partial

import anyio

from bridge.core.events import Source
from bridge.core.normalize import Observation
from bridge.core.state import Decision, OrderState, observe, order_created
from bridge.redis.client import connect
from bridge.redis.keys import Keys
from bridge.redis.publisher import EventStore
from bridge.redis.server import RedisServer

FLOW = ["initialized", "declined", "initialized", "completed"]


def new_order(order_id: str, terminal_id: str, now: datetime, _: OrderState | None) -> Decision:
    """The decision for a new bench order (its stored state is not read: there is none)."""
    return order_created(
        order_id=order_id,
        terminal_id=terminal_id,
        command_id=order_id,
        amount=100,
        currency="EUR",
        session_id=None,
        now=now,
    )


async def measure(url: str, events: int) -> dict[str, float]:
    client = connect(url, max_connections=1)
    store = EventStore(client, Keys("bench"), stream_maxlen=10_000, order_ttl=3600)
    try:
        for _ in range(200):  # warm-up: connection, script cache
            await client.ping()
        t0 = time.perf_counter()
        for _ in range(events):
            await client.ping()
        ping = (time.perf_counter() - t0) / events

        orders = max(1, events // (len(FLOW) + 1))
        now = datetime.now(UTC)
        samples = []
        for i in range(orders):
            oid = f"o{i}"
            t = time.perf_counter()
            rec = await store.record(
                oid, partial(new_order, oid, f"T{i % 50}", now), known=None, trust_known=True
            )
            state = rec.decision.state
            for status in FLOW:
                obs = Observation(source=Source.STREAM, order_id=oid, status=status)
                rec = await store.record(
                    oid, partial(observe, obs=obs, now=now), known=state, trust_known=True
                )
                state = rec.decision.state
            samples.append((time.perf_counter() - t) / (len(FLOW) + 1))
        transition = statistics.fmean(samples)
        return {
            "events": orders * (len(FLOW) + 1),
            "ping_us": ping * 1e6,
            "transition_us": transition * 1e6,
            "ratio": transition / ping,
        }
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    with RedisServer() as server:
        r = anyio.run(measure, server.url, args.events)
    print(
        f"events {r['events']:.0f}: PING round trip {r['ping_us']:.1f} us; "
        f"decide + Lua transition {r['transition_us']:.1f} us/event "
        f"({r['ratio']:.2f}x the round trip)"
    )


if __name__ == "__main__":
    main()
