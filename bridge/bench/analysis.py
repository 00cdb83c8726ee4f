"""From what was sent and received to the figures of :class:`~bridge.bench.report.Result`."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bridge.bench.pairing import Pairing, Receipt, Send, added_latencies, pair_all, percentiles
from bridge.bench.report import EVENTS_PER_PAYMENT, Result

FINAL = "completed"


def _as_sends(data: Mapping[str, Sequence[Sequence[Any]]]) -> dict[str, list[Send]]:
    return {oid: [(str(s), float(t)) for s, t in v] for oid, v in data.items()}


def _as_receipts(data: Mapping[str, Sequence[Sequence[Any]]]) -> dict[str, list[Receipt]]:
    return {
        oid: [(str(s), float(t), str(e), str(i)) for s, t, e, i in v] for oid, v in data.items()
    }


def _latencies(pairing: Pairing, final: bool | None) -> list[float]:
    return [
        (t_recv - t_send) * 1000
        for pairs in pairing.pairs.values()
        for status, t_send, t_recv in pairs
        if final is None or (status == FINAL) == final
    ]


def analyse(
    res: Result,
    rate: float,
    sim_sent: Mapping[str, Sequence[Sequence[Any]]],
    baseline_sent: Mapping[str, Sequence[Sequence[Any]]],
    received: Mapping[str, Sequence[Sequence[Any]]],
) -> None:
    """Pair every event and fill the event counts, rates and latencies of ``res``."""
    receipts = _as_receipts(received)
    sends, base_sends = _as_sends(sim_sent), _as_sends(baseline_sent)
    bridge = pair_all(sends, _of(receipts, "bench-"))
    base = pair_all(base_sends, _of(receipts, "base-"))
    res.events_sent = _total(sends) + _total(base_sends)
    res.events_received = _total(receipts)
    res.events_lost = bridge.lost + base.lost
    res.events_unprompted = bridge.unprompted + base.unprompted
    res.events_duplicated = bridge.duplicates + base.duplicates
    res.events_unexpected = bridge.unexpected + base.unexpected
    _rates(res, rate, bridge, base_sends)
    _latencies_into(res, bridge, base)
    _errors(res)


def _of(receipts: dict[str, list[Receipt]], prefix: str) -> dict[str, list[Receipt]]:
    return {k: v for k, v in receipts.items() if k.startswith(prefix)}


def _total(by_order: Mapping[str, Sequence[Any]]) -> int:
    return sum(map(len, by_order.values()))


def _rates(res: Result, rate: float, bridge: Pairing, base_sends: dict[str, list[Send]]) -> None:
    res.target_rate = rate
    drive_pairs = [p for v in bridge.pairs.values() for p in v if p[0] != FINAL]
    if drive_pairs:
        window = max(p[2] for p in drive_pairs) - min(p[1] for p in drive_pairs)
        res.drive_events_per_s = len(drive_pairs) / max(window, 1e-9)
        res.implied_payments_per_s = res.drive_events_per_s / EVENTS_PER_PAYMENT
    base_times = [t for v in base_sends.values() for _, t in v]
    if base_times:
        span = max(base_times) - min(base_times) + 1 / rate
        res.baseline_events_per_s = len(base_times) / max(1e-9, span)


def _latencies_into(res: Result, bridge: Pairing, base: Pairing) -> None:
    drive_lat, final_lat = _latencies(bridge, False), _latencies(bridge, True)
    base_lat = _latencies(base, None)
    res.drive_events, res.final_events = len(drive_lat), len(final_lat)
    res.baseline_events = len(base_lat)
    drive_only = {k: [p for p in v if p[0] != FINAL] for k, v in bridge.pairs.items()}
    baseline_of = {k: "base-" + k.removeprefix("bench-") for k in drive_only}
    res.latency_ms = {
        "bridge": percentiles(drive_lat),
        "baseline": percentiles(base_lat),
        "added": percentiles(added_latencies(drive_only, base.pairs, baseline_of)),
        "final (bridge)": percentiles(final_lat),
    }


def _errors(res: Result) -> None:
    if res.events_lost:
        res.errors.append(f"{res.events_lost} events sent and never received")
    if res.events_duplicated:
        res.errors.append(f"{res.events_duplicated} events received twice (same event_id)")
    if res.events_unexpected:
        res.errors.append(f"{res.events_unexpected} events received that match no send")


def gc_pauses(log_path: Path) -> dict[str, float]:
    """The daemon's garbage-collection pauses of 5 ms or more (``bench.gc_pause`` lines)."""
    pauses: list[float] = []
    try:
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith('{"event": "bench.gc_pause"'):
                pauses.append(float(json.loads(line)["ms"]))
    except (OSError, ValueError) as exc:  # a run without the log: reported as no pauses
        print(f"bench: GC pauses unreadable: {exc}", file=sys.stderr)
    return {
        "count": len(pauses),
        "max_ms": max(pauses, default=0.0),
        "total_ms": round(sum(pauses), 1),
    }
