"""``pos-bridge bench --soak MINUTES``: does the daemon's memory stay flat for as long as it runs?

A private ``redis-server``, the simulator (:mod:`bridge.bench.simproc`) and one daemon
(``pos-bridge run``, as the bench starts it), each its own process. For ``MINUTES`` minutes,
every second: ``PAYS_PER_S`` payments on ``SIM-APPROVE-*`` terminals, ``HOSTILE_PER_S``
hostile commands (the fuzz's, :func:`bridge.bench.fuzz.hostile_command`, and well-formed ones
naming a new unknown terminal, order and command id each time) and ``HOOKS_PER_S`` hostile
webhook requests (:func:`bridge.bench.fuzz.hostile_requests`).

Every minute it prints a progress line; it samples the daemon's RSS (``/proc``) six times a
minute and its Python object counts (``GET /memory``, :mod:`bridge.daemon.memory`) once, and
counts the ``session.lease_lost`` lines of its log. After the warm-up (a third of the run, at
most 5 minutes) the RSS slope is fitted by least squares, in MB per hour. Exit non-zero if a
payment was lost (no final event, within ``DRAIN_S`` of the last one sent) or the daemon died.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from bridge.bench.child import BenchError, Child, Progress, wait_for
from bridge.bench.fuzz import daemon_config, exchange, hostile_command, hostile_requests
from bridge.bench.procs import raise_nofile, rss_bytes
from bridge.bench.settings import Settings, daemon_argv
from bridge.errors import UserError
from bridge.redis.keys import Keys
from bridge.redis.server import RedisServer, free_port

PAYS_PER_S = 1
HOSTILE_PER_S = 20
HOOKS_PER_S = 5
TERMINALS = [f"SIM-APPROVE-{i:02d}" for i in range(20)]
#: RSS samples per minute (the slope's points); object counts and the progress line: one.
SAMPLES_PER_MINUTE = 6
#: Seconds the last payments get to end after the load stops.
DRAIN_S = 60.0
WARMUP_MAX_MINUTES = 5.0
LEASE_LOST = "session.lease_lost"


@dataclass
class SoakReport:
    minutes: float
    warmup_minutes: float
    payments_sent: int = 0
    payments_completed: int = 0
    payments_other_final: int = 0  # ended, not completed (e.g. expired on a loaded host)
    payments_lost: int = 0
    hostile_commands: int = 0
    hostile_webhooks: int = 0
    daemon_exited: bool = False
    #: (minute, RSS MB) every 1/SAMPLES_PER_MINUTE minute.
    rss_mb: list[tuple[float, float]] = field(default_factory=list)
    #: (minute, Python objects the collector tracks), once a minute.
    gc_objects: list[tuple[float, int]] = field(default_factory=list)
    top_types_start: list[list[Any]] = field(default_factory=list)
    top_types_end: list[list[Any]] = field(default_factory=list)
    sizes_start: dict[str, int] = field(default_factory=dict)
    sizes_end: dict[str, int] = field(default_factory=dict)
    leases_lost_per_10_min: list[int] = field(default_factory=list)
    rss_slope_mb_per_hour: float | None = None
    #: With ``$POS_BRIDGE_TRACEMALLOC`` set (the daemon inherits it): (minute, MB Python holds)
    #: once a minute, its slope after the warm-up, and the source lines that grew most.
    traced_mb: list[tuple[float, float]] = field(default_factory=list)
    traced_slope_mb_per_hour: float | None = None
    top_growth_end: list[list[Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.payments_lost == 0 and not self.daemon_exited and self.payments_sent > 0


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (minute, MB) points, in MB per hour; None under two minutes."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return sxy / sxx * 60


def per_window(times: list[float], minutes: float, window: float = 10.0) -> list[int]:
    """How many of ``times`` (minutes since the start) fall in each ``window`` of the run."""
    counts = [0] * max(1, int(-(-minutes // window)))
    for t in times:
        counts[min(len(counts) - 1, int(t // window))] += 1
    return counts


def unknown_terminal_command(rng: random.Random, n: int) -> dict[bytes, bytes]:
    """A well-formed command naming a terminal, order and command id never seen before."""
    command = {
        "type": rng.choice(["pay", "watch", "refund", "receipt"]),
        "command_id": f"sk-u-{n}",
        "terminal_id": f"UNKNOWN-{n}",
        "order_id": f"sk-o-{n}",
        "amount": 100,
        "events_token": "t",
    }
    return {b"command": json.dumps(command).encode()}


class Soak:
    def __init__(self, minutes: float, unit: float, seed: int, progress: Progress) -> None:
        self.unit = unit  # seconds per "minute" (60; the tests make it shorter)
        self.report = SoakReport(minutes, min(WARMUP_MAX_MINUTES, minutes / 3))
        self.rng = random.Random(seed)
        self.progress = progress
        self.tmp = Path(tempfile.mkdtemp(prefix="pos-bridge-soak-"))
        self.keys = Keys("pos")
        self.pending: dict[str, float] = {}  # pay command id -> minute sent
        self.last_ids: dict[str, str] = {self.keys.terminal_stream(t): "0" for t in TERMINALS}
        self.lease_lost_at: list[float] = []
        self._log_offset = 0
        self._sent = 0

    def run(self) -> SoakReport:
        raise_nofile()
        failed = True
        try:
            with ExitStack() as stack:
                self._start(stack)
                self._load()
                self._drain()
            failed = False
        finally:
            if failed or not self.report.ok:
                print(f"pos-bridge bench --soak: logs kept in {self.tmp}", file=sys.stderr)
            else:
                shutil.rmtree(self.tmp, True)
        return self.report

    # -- the rig ----------------------------------------------------------------------------

    def _start(self, stack: ExitStack) -> None:
        py = sys.executable
        rs = RedisServer()
        rs.start()
        stack.callback(rs.close)
        self.r = redis.Redis.from_url(rs.url, decode_responses=True)
        stack.callback(self.r.close)
        sim = Child("simulator", [py, "-m", "bridge.bench.simproc"], self.tmp)
        stack.callback(sim.stop)
        base_url = sim.readline(30)
        self.hook_port, self.http_port = free_port(), free_port()
        cfg = self.tmp / "config.toml"
        cfg.write_text(
            daemon_config(
                base_url, rs.url, TERMINALS, self.hook_port, self.http_port, max_payment_age=120
            )
        )
        self.daemon = Child("daemon", daemon_argv(py, cfg, Settings(log_level="warning")), self.tmp)
        stack.callback(self.daemon.stop)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.http_port}", timeout=30)
        stack.callback(self.http.close)
        wait_for(self._ready, 60, "the daemon to be ready", tick=0.3, on_tick=self._check_alive)

    def _ready(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def _check_alive(self) -> None:
        if not self.daemon.alive():
            self.report.daemon_exited = True
            raise BenchError(f"the daemon exited: {self.daemon.tail()}")

    # -- the load ---------------------------------------------------------------------------

    def _load(self) -> None:
        rep, t0 = self.report, time.monotonic()
        tick = self.unit / SAMPLES_PER_MINUTE
        next_sample = 0.0
        samples = 0
        while (elapsed := time.monotonic() - t0) < rep.minutes * self.unit:
            if elapsed >= next_sample:
                self._sample(next_sample / self.unit, minute_mark=samples % SAMPLES_PER_MINUTE == 0)
                samples += 1
                next_sample += tick
            self._send_pays()
            self._send_hostile()
            self._send_hooks()
            self._read_finals()
            self._check_alive()
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0 - elapsed)))
        self._sample(rep.minutes, minute_mark=True)
        warm = [(t, mb) for t, mb in rep.rss_mb if t >= rep.warmup_minutes]
        rep.rss_slope_mb_per_hour = slope_per_hour(warm)
        traced = [(t, mb) for t, mb in rep.traced_mb if t >= rep.warmup_minutes]
        rep.traced_slope_mb_per_hour = slope_per_hour(traced)

    def _send_pays(self) -> None:
        pipe = self.r.pipeline(transaction=False)
        for _ in range(PAYS_PER_S):
            n = self._sent
            self._sent += 1
            command = {
                "type": "pay",
                "command_id": f"sk-pay-{n}",
                "terminal_id": TERMINALS[n % len(TERMINALS)],
                "amount": 1250,
                "currency": "EUR",
                "description": "soak",
            }
            pipe.xadd(self.keys.commands, {"command": json.dumps(command)})
            self.pending[str(command["command_id"])] = time.monotonic()
        pipe.execute()
        self.report.payments_sent += PAYS_PER_S

    def _send_hostile(self) -> None:
        pipe = self.r.pipeline(transaction=False)
        for _ in range(HOSTILE_PER_S):
            n = self.report.hostile_commands
            self.report.hostile_commands += 1
            fields = (
                unknown_terminal_command(self.rng, n)
                if n % 4 == 0
                else hostile_command(self.rng, f"sk-h-{n}")
            )
            pipe.xadd(self.keys.commands, fields)  # type: ignore[arg-type]
        pipe.execute()

    def _send_hooks(self) -> None:
        for _ in range(HOOKS_PER_S):
            n = self.report.hostile_webhooks
            for request in hostile_requests(self.rng, self.hook_port, n):
                exchange(self.hook_port, request)
            self.report.hostile_webhooks += 1

    def _read_finals(self) -> None:
        rows: Any = self.r.xread(self.last_ids, count=1000)  # type: ignore[arg-type]
        for stream, entries in rows or []:
            for entry_id, fields in entries:
                self.last_ids[stream] = entry_id
                event = json.loads(fields["event"])
                if event.get("final") and event.get("command_id") in self.pending:
                    del self.pending[event["command_id"]]
                    if event.get("status") == "completed":
                        self.report.payments_completed += 1
                    else:
                        self.report.payments_other_final += 1

    def _drain(self) -> None:
        deadline = time.monotonic() + DRAIN_S
        while self.pending and time.monotonic() < deadline:
            self._read_finals()
            self._check_alive()
            time.sleep(0.5)
        self._count_lease_lost(self.report.minutes)
        self.report.payments_lost = len(self.pending)
        self.report.leases_lost_per_10_min = per_window(self.lease_lost_at, self.report.minutes)

    # -- samples ----------------------------------------------------------------------------

    def _count_lease_lost(self, minute: float) -> int:
        with open(self.daemon.log_path, "rb") as f:
            f.seek(self._log_offset)
            new = f.read()
        # whole lines only: the rest is read next time
        cut = new.rfind(b"\n") + 1
        self._log_offset += cut
        found = new[:cut].count(LEASE_LOST.encode())
        self.lease_lost_at += [minute] * found
        return found

    def _sample(self, minute: float, *, minute_mark: bool) -> None:
        rep = self.report
        rss = rss_bytes(self.daemon.pid) / 2**20
        rep.rss_mb.append((round(minute, 3), round(rss, 2)))
        if not minute_mark:
            return
        memory: dict[str, Any] = self.http.get("/memory").json()
        rep.gc_objects.append((round(minute, 3), int(memory["gc_objects"])))
        if not rep.top_types_start:
            rep.top_types_start, rep.sizes_start = memory["top_types"], memory["sizes"]
        rep.top_types_end, rep.sizes_end = memory["top_types"], memory["sizes"]
        traced = memory.get("tracemalloc")
        if traced is not None:
            rep.traced_mb.append((round(minute, 3), round(traced["traced_bytes"] / 2**20, 2)))
            rep.top_growth_end = traced["top_growth"]
        lost = self._count_lease_lost(minute)
        self.progress.done(
            f"soak {minute:5.1f}/{rep.minutes:g} min  RSS {rss:6.1f} MB  "
            f"objects {memory['gc_objects']}  pays {rep.payments_sent} sent, "
            f"{rep.payments_completed} completed, {len(self.pending)} in flight  "
            f"hostile {rep.hostile_commands} commands, {rep.hostile_webhooks} webhooks  "
            f"leases lost {len(self.lease_lost_at)} (+{lost})"
        )


def table(rep: SoakReport) -> str:
    slope = rep.rss_slope_mb_per_hour
    start = rep.gc_objects[0][1] if rep.gc_objects else 0
    end = rep.gc_objects[-1][1] if rep.gc_objects else 0
    first = rep.rss_mb[0][1] if rep.rss_mb else 0.0
    last = rep.rss_mb[-1][1] if rep.rss_mb else 0.0
    warm = next((mb for t, mb in rep.rss_mb if t >= rep.warmup_minutes), last)
    lines = [
        f"soak: {rep.minutes:g} minutes (warm-up {rep.warmup_minutes:g})",
        f"  payments          {rep.payments_sent} sent, {rep.payments_completed} completed, "
        f"{rep.payments_other_final} other finals, {rep.payments_lost} lost",
        f"  hostile input     {rep.hostile_commands} commands, {rep.hostile_webhooks} webhooks",
        f"  RSS (MB)          start {first:.1f}, after warm-up {warm:.1f}, end {last:.1f}",
        "  RSS slope         "
        + ("n/a (too short)" if slope is None else f"{slope:+.2f} MB/hour after the warm-up"),
        f"  Python objects    start {start}, end {end}",
        f"  leases lost       {rep.leases_lost_per_10_min} per 10 minutes",
        *traced_lines(rep),
        f"  sizes at the end  {rep.sizes_end}",
        "  top types (end)   " + ", ".join(f"{name} {n}" for name, n in rep.top_types_end[:8]),
        "  OK" if rep.ok else "  PROBLEMS" + (" (the daemon exited)" if rep.daemon_exited else ""),
    ]
    return "\n".join(lines)


def traced_lines(rep: SoakReport) -> list[str]:
    """The tracemalloc lines of the table, when the daemon traced."""
    if not rep.traced_mb:
        return []
    slope = rep.traced_slope_mb_per_hour
    lines = [
        f"  traced (MB)       start {rep.traced_mb[0][1]:.1f}, end {rep.traced_mb[-1][1]:.1f}, "
        + ("slope n/a" if slope is None else f"slope {slope:+.2f} MB/hour after the warm-up"),
        "  grew most         (source line, KB grown, blocks grown)",
    ]
    lines += [
        f"    {where}  {size / 1024:+.1f} KB  {count:+d}"
        for where, size, count, _ in rep.top_growth_end[:10]
    ]
    return lines


def run_soak(
    minutes: float, *, unit: float = 60.0, seed: int = 1, quiet: bool = False
) -> SoakReport:
    return Soak(minutes, unit, seed, Progress(quiet=quiet)).run()


def soak_command(args: argparse.Namespace) -> int:
    minutes, unit = float(args.soak), float(getattr(args, "soak_unit", None) or 60.0)
    if minutes <= 0 or unit <= 0:
        raise UserError("bench --soak: MINUTES must be > 0")
    try:
        rep = run_soak(minutes, unit=unit, seed=args.seed)
    except BenchError as exc:
        raise UserError(f"bench --soak: {exc}", 1) from None
    if getattr(args, "json", False):
        print(json.dumps(asdict(rep) | {"ok": rep.ok}, indent=2))
    else:
        print(table(rep))
    return 0 if rep.ok else 1
