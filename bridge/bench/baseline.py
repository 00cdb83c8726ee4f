"""The floor of ``pos-bridge bench``: the same transitions applied straight into Redis.

    python -m bridge.bench.baseline --redis-url URL --prefix P --orders N --rate M
        --duration S --out FILE

Opens ``N`` orders (``order.created``, not timed), then applies ``M`` status changes per second
round robin over them for ``S`` seconds (``initialized``, ``declined``, ``initialized``, ...),
each exactly as a payment session does it: the core's decision from the cached state and the
Lua compare-and-set through :class:`~bridge.redis.publisher.EventStore`, one task per change,
on the daemon's kind of connection pool. ``time.monotonic()`` is taken just before the
decision; the tills process takes it on receipt. Writes ``{order_id: [[status, t], ...]}`` to
FILE.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial

import anyio

from bridge.bench.procs import raise_nofile
from bridge.bench.transition import new_order
from bridge.core.events import Source
from bridge.core.normalize import Observation
from bridge.core.state import OrderState, observe, utcnow
from bridge.redis.client import connect
from bridge.redis.keys import Keys
from bridge.redis.publisher import EventStore
from bridge.simulator.bench import pace

ORDER_PREFIX = "base-"


async def run(
    url: str, prefix: str, orders: int, rate: float, duration: float
) -> dict[str, list[tuple[str, float]]]:
    client = connect(url)
    store = EventStore(client, Keys(prefix), stream_maxlen=10_000, order_ttl=3600)
    ids = [f"{ORDER_PREFIX}{i:05d}" for i in range(orders)]
    states: dict[str, OrderState] = {}
    sent: dict[str, list[tuple[str, float]]] = {oid: [] for oid in ids}
    locks = {oid: anyio.Lock() for oid in ids}
    try:
        now = utcnow()
        for i, oid in enumerate(ids):
            rec = await store.record(
                oid, partial(new_order, oid, f"BASE-{i:05d}", now), known=None, trust_known=True
            )
            assert rec.decision.state is not None
            states[oid] = rec.decision.state

        async def change(oid: str) -> None:
            async with locks[oid]:  # one order's changes in order, as a session does
                state = states[oid]
                status = "declined" if state.status == "initialized" else "initialized"
                times = sent[oid]
                times.append((status, time.monotonic()))
                obs = Observation(source=Source.STREAM, order_id=oid, status=status)
                rec = await store.record(
                    oid,
                    lambda st: observe(st, obs, utcnow(), terminal_id=state.terminal_id),
                    known=state,
                    trust_known=True,
                )
                if not rec.stream_ids:
                    times.pop()  # nothing published (cannot happen: statuses alternate)
                states[oid] = rec.decision.state or state

        async with anyio.create_task_group() as tg:
            await pace(rate, None, duration, lambda i: tg.start_soon(change, ids[i % len(ids)]))
    finally:
        await client.aclose()
    return sent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--prefix", default="pos")
    ap.add_argument("--orders", type=int, required=True)
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    raise_nofile()
    sent = anyio.run(run, args.redis_url, args.prefix, args.orders, args.rate, args.duration)
    with open(args.out, "w") as f:
        json.dump(sent, f)


if __name__ == "__main__":
    main()
