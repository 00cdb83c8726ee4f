"""Pairing what the bench sent with what the tills received (pure, no I/O).

A send is ``(status, t_send)``: the simulator (or the baseline) wrote that status change of the
order at ``t_send``. A receipt is ``(status, t_recv, event_id, stream_id)``: a till read that
``order.status`` event at ``t_recv``. Both clocks are ``time.monotonic()``, system-wide on Linux.

Each receipt is paired with the send that caused it: the next unpaired send of the same order
with the same status, sent no later than it was received. Nothing is paired by position
("the n-th status of the order"), so an event the bridge published on its own (the ``GET`` after
the first stream opens reports the order's status before anything was driven) is counted apart
instead of shifting every later pair. A receipt whose ``event_id`` (or ``stream_id``) was already
received is a duplicate; sends never received are lost; receipts that match no send are
unexpected.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

#: (status, t_send)
Send = tuple[str, float]
#: (status, t_recv, event_id, stream_id)
Receipt = tuple[str, float, str, str]


@dataclass
class Pairing:
    """The pairs of one or more orders, and what could not be paired."""

    #: order id -> [(status, t_send, t_recv), ...] in send order
    pairs: dict[str, list[tuple[str, float, float]]] = field(default_factory=dict)
    #: receipts before the order's first send: published by the bridge on its own (opening GET)
    unprompted: int = 0
    lost: int = 0
    unexpected: int = 0
    duplicates: int = 0

    def merge(self, other: Pairing) -> None:
        self.pairs.update(other.pairs)
        self.unprompted += other.unprompted
        self.lost += other.lost
        self.unexpected += other.unexpected
        self.duplicates += other.duplicates


def pair_order(order_id: str, sent: Sequence[Send], received: Iterable[Receipt]) -> Pairing:
    """Pair one order's receipts with its sends (see the module docstring)."""
    out = Pairing(pairs={order_id: []})
    pairs = out.pairs[order_id]
    seen: set[str] = set()
    nxt = 0  # the first send not yet paired nor given up as lost
    for status, t_recv, event_id, stream_id in received:
        key = event_id or stream_id
        if key:
            if key in seen:
                out.duplicates += 1
                continue
            seen.add(key)
        match = next(
            (j for j in range(nxt, len(sent)) if sent[j][0] == status and sent[j][1] <= t_recv),
            None,
        )
        if match is not None:
            out.lost += match - nxt  # skipped sends were never received
            pairs.append((status, sent[match][1], t_recv))
            nxt = match + 1
        elif not pairs and (not sent or t_recv < sent[0][1]):
            out.unprompted += 1
        else:
            out.unexpected += 1
    out.lost += len(sent) - nxt
    return out


def pair_all(
    sent: Mapping[str, Sequence[Send]], received: Mapping[str, Sequence[Receipt]]
) -> Pairing:
    """Pair every order that was sent to or received from."""
    total = Pairing()
    for order_id in sorted(set(sent) | set(received)):
        total.merge(pair_order(order_id, sent.get(order_id, ()), received.get(order_id, ())))
    return total


def added_latencies(
    bridge: Mapping[str, list[tuple[str, float, float]]],
    baseline: Mapping[str, list[tuple[str, float, float]]],
    baseline_of: dict[str, str],
) -> list[float]:
    """Per event, the bridge's latency minus the baseline's for the same position: the n-th
    driven event of bench order i against the n-th event of baseline order i (same round
    robin, same rate), in ms. A difference of pairs, never of percentiles."""
    out: list[float] = []
    for order_id, pairs in bridge.items():
        base = baseline.get(baseline_of.get(order_id, ""), [])
        for (_, b_send, b_recv), (_, f_send, f_recv) in zip(pairs, base, strict=False):
            out.append(((b_recv - b_send) - (f_recv - f_send)) * 1000)
    return out


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    v = sorted(values)

    def q(p: float) -> float:
        return v[min(len(v) - 1, max(0, math.ceil(p * len(v)) - 1))]

    return {
        "n": len(v),
        "p50": q(0.50),
        "p90": q(0.90),
        "p99": q(0.99),
        "max": v[-1],
        "mean": sum(v) / len(v),
    }
