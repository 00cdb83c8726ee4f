"""``pos-bridge bench --peer``: the bridge and a naive SDK bridge, same load, side by side.

The bench runs twice with the same settings: first the bridge (``pos-bridge run``, or
``--workers N``), then the peer, :mod:`bridge.bench.sdk_peer`: a bridge written the obvious way
on MultiSafepay's official Python SDK (a thread per payment reading its event stream, orders
created through the SDK, events published with redis-py), in the SDK's own virtualenv
(:mod:`bridge.bench.sdkvenv`, installed from PyPI on first use). Both get the same private
Redis setup, simulator, tills, pay commands and driven status changes; the peer's run has no
baseline phase (the baseline measures Redis, not the bridge). The peer does less than the
bridge (no durable stream, leases, polling, webhooks: see its docstring), so where the bridge
is lighter, it is so while doing more.

Compared: memory per held stream (resident size with the streams open minus before, per
stream), streams per GB (its inverse; the bridge's as a multiple of the peer's), CPU per
payment (open, hold, event, close: the same phases for both) and the events/s reached.
"""

from __future__ import annotations

import argparse
import json
import signal
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bridge.bench.child import BenchError, Child, Progress
from bridge.bench.main import Bench
from bridge.bench.profiler import phase_path
from bridge.bench.report import Result, over_tls, table
from bridge.bench.sdkvenv import SdkVenvError, sdk_python
from bridge.bench.settings import API_KEY, PREFIX, Settings, settings_from_args
from bridge.errors import UserError

PEER_SCRIPT = Path(__file__).with_name("sdk_peer.py")
READY_KEY = f"{PREFIX}:peer:ready"
KB_PER_GB = 1024 * 1024


class PeerBench(Bench):
    """The bench with the naive SDK bridge in the daemon's place."""

    def __init__(self, s: Settings, progress: Progress, python: Path) -> None:
        # its recordings beside the bridge's, not over them: out-peer.svg, out-peer-open.svg...
        if s.profile:
            s = replace(s, profile=phase_path(s.profile, "peer"))
        super().__init__(s, progress)
        self.sdk_python = python

    def _start_daemon(self, cfg: Path) -> Child:
        argv = [str(self.sdk_python), str(PEER_SCRIPT), "--redis-url", self.redis_url]
        argv += ["--prefix", PREFIX, "--api-key", API_KEY]
        argv += ["--api-base-url", self.api_base_url.removesuffix("json/")]
        return Child("peer", argv, self.tmp, env=self.trust_env())

    def _daemon_reading(self) -> bool:
        return bool(self.r.exists(READY_KEY))

    def _baseline(self) -> None:
        self.baseline_sent = {}
        self.progress.done("baseline: not run for the peer")


def streams_per_gb(kb_per_stream: float) -> float:
    return KB_PER_GB / kb_per_stream if kb_per_stream > 0 else float("inf")


def comparison(ours: Result, peer: Result) -> dict[str, Any]:
    """The figures side by side, with the bridge's streams per GB as a multiple of the peer's."""
    ours_gb, peer_gb = (
        streams_per_gb(ours.daemon_kb_per_stream),
        streams_per_gb(peer.daemon_kb_per_stream),
    )
    rows: dict[str, Any] = {
        "memory per held stream (KB)": (ours.daemon_kb_per_stream, peer.daemon_kb_per_stream),
        "streams per GB": (ours_gb, peer_gb),
        "resident with the streams (MB)": (ours.daemon_rss_streams_mb, peer.daemon_rss_streams_mb),
    }
    for phase in ("open", "hold_per_minute", "event", "close", "payment"):
        rows[f"CPU per payment, {phase} (ms)"] = (
            ours.cpu_ms_per_payment.get(phase, 0.0),
            peer.cpu_ms_per_payment.get(phase, 0.0),
        )
    rows["payments opened per s"] = (ours.payments_opened_per_s, peer.payments_opened_per_s)
    rows["events/s reached"] = (ours.drive_events_per_s, peer.drive_events_per_s)
    rows["latency p50 / p99 (ms)"] = tuple(
        f"{r.latency_ms.get('bridge', {}).get('p50', 0):.2f} / "
        f"{r.latency_ms.get('bridge', {}).get('p99', 0):.2f}"
        for r in (ours, peer)
    )
    rows["events lost / duplicated"] = tuple(
        f"{r.events_lost} / {r.events_duplicated}" for r in (ours, peer)
    )
    ratio = ours_gb / peer_gb if peer_gb not in (0, float("inf")) else float("nan")
    return {"rows": rows, "streams_per_gb_ratio": ratio, "tls": bool(ours.settings.get("tls"))}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "inf" if value == float("inf") else f"{value:,.2f}"
    return str(value)


def side_by_side(ours: Result, peer: Result) -> str:
    cmp = comparison(ours, peer)
    workers = ours.settings.get("workers", 1)
    us = "pos-bridge" + (f" ({workers} workers)" if workers > 1 else "")
    lines = [
        *([f"  both{over_tls(ours.settings)}"] if over_tls(ours.settings) else []),
        f"  {'':<38}{us:>24}{'SDK peer':>20}",
        *(f"  {name:<38}{_cell(a):>24}{_cell(b):>20}" for name, (a, b) in cmp["rows"].items()),
        f"  streams per GB: pos-bridge holds {cmp['streams_per_gb_ratio']:.2f}x the peer's",
    ]
    return "\n".join(lines)


def peer_command(args: argparse.Namespace) -> int:
    s = settings_from_args(args)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    progress = Progress()
    try:
        python = sdk_python(lambda text: progress.done(text))
    except SdkVenvError as exc:
        raise UserError(f"bench --peer: {exc}", 1) from None
    try:
        progress.done("-- pos-bridge")
        ours = Bench(s, progress).run()
        progress.done("-- the SDK peer (a thread per payment)")
        peer = PeerBench(s, progress, python).run()
    except BenchError as exc:
        progress.done("")
        raise UserError(f"bench: {exc}", 1) from None
    if getattr(args, "json", False):
        both = {"bridge": asdict(ours), "peer": asdict(peer), "comparison": comparison(ours, peer)}
        print(json.dumps(both, indent=2))
    else:
        print(table(ours))
        print()
        text = table(peer).replace("pos-bridge bench:", "SDK peer:", 1)
        print(text.replace("polling every", "the peer never polls; the bridge polls every"))
        print()
        print(side_by_side(ours, peer))
    # The peer falling behind (or failing) is one of its figures, shown in its table; the
    # exit status is the bridge's.
    return 0 if ours.ok else 1
