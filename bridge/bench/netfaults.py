"""The fault runner's network faults: the daemon runs in a network namespace
(:mod:`bridge.bench.netns`), Redis and the simulator on the host's end of its veth pair, and
nftables rules in the namespace drop packets silently (no FIN, no RST, no ICMP):

* ``blackhole-redis``: every packet between the daemon and Redis, for longer than the daemon's
  configured Redis timeouts allow it to take to notice (``redis.unreachable`` in its log), then
  the path returns (``redis.reachable``);
* ``loss-upstream``: 30 % of the packets between the daemon and the simulator, each way, at
  random (nftables' ``numgen random``; ``tc netem`` is not needed), from before the pays until
  every payment has its final;
* ``halfopen-upstream``: every TCP connection the daemon has open to the simulator at the moment
  (its event streams, its pooled REST connections) goes silent both ways, as when a NAT or a
  firewall between them forgets its connections; new connections pass. Each payment's session
  must notice by its stream idle timeout (``stream.lost``) or end by its polls;
* ``halfopen-bus``: the same with the daemons on the WebSocket message bus (``transport =
  "websocket"``) instead of SSE: silence there is noticed by the bus's idle timeout, which
  the daemon's heartbeats keep from firing on a healthy quiet connection.

Each round pays on every terminal and is audited as the other scenarios are (one final per
payment, nothing twice, the final upstream's). Reported besides: detection times (fault to the
daemon's log line) against the bound the configuration puts on them, recovery times, and each
payment's time from pay to final. The simulator sends its keep-alives every
``KEEPALIVE_REAL_S`` real seconds here, well inside the daemon's idle timeout, so a stream
declared silent is one the fault cut, not one that was quiet.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import anyio

from bridge.bench.netns import NetNamespace
from bridge.bench.rig import (
    QUICK_STREAM_IDLE_TIMEOUT,
    FaultReport,
    Rig,
    note_logs,
    wait_idle_terminals,
)
from bridge.redis.client import outage_detection_bound

#: 30 %: the share of packets ``loss-upstream`` drops, each way.
LOSS_PERCENT = 30
#: Real seconds between the simulator's stream keep-alives in these scenarios.
KEEPALIVE_REAL_S = 1.0
#: After the daemon noticed the black hole, how long it stays (work queues up meanwhile).
HOLD_AFTER_DETECTION = 2.0
#: ``halfopen-upstream`` runs the simulator at this speed (not faster), so that payments last
#: well past their stream's idle timeout after the cut (at the fault runner's 2.0 most end by
#: a poll first, and the streams' detection is not seen).
HALFOPEN_SPEED = 0.5
#: The daemon's log events that say it noticed something; counted per scenario.
NOTICED = ("redis.unreachable", "redis.reachable", "stream.lost", "upstream.poll_failed")


class NetRig(Rig):
    """A :class:`Rig` whose daemons run in ``ns``; Redis and the simulator listen on the host's
    end of the pair (``ns.host_ip``), where the audit reaches them without crossing the rules."""

    def __init__(self, ns: NetNamespace, *, speed: float, terminals: int) -> None:
        super().__init__(
            speed=speed,
            terminals=terminals,
            host=ns.host_ip,
            sim_options={"keepalive_interval": KEEPALIVE_REAL_S * speed},
        )
        self.ns = ns
        # without a password Redis refuses clients from other addresses than loopback; this
        # one listens only on the pair's private /30, for the daemon in the namespace
        self.redis.extra_args += ["--protected-mode", "no"]

    def daemon_prefix(self) -> list[str]:
        return self.ns.argv([])

    def log_events(self, *names: str) -> list[tuple[float, dict[str, Any]]]:
        """The daemons' log lines of these events, with their time (epoch seconds)."""
        out = []
        for line in self.logs().splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("event") in names and "timestamp" in entry:
                stamp = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
                out.append((stamp.timestamp(), entry))
        return out

    def first_after(self, event: str, since: float) -> float | None:
        times = [t for t, _entry in self.log_events(event) if t >= since]
        return min(times) if times else None

    # -- the faults ---------------------------------------------------------------------------

    def blackhole_redis(self) -> None:
        host, port = self.ns.host_ip, self.redis.port
        self.ns.drop(
            "blackhole-redis",
            out=[f"ip daddr {host} tcp dport {port} drop"],
            into=[f"ip saddr {host} tcp sport {port} drop"],
        )

    def loss_upstream(self, percent: int | None = None) -> None:
        host, port = self.ns.host_ip, self.sim.port
        chance = f"numgen random mod 100 < {LOSS_PERCENT if percent is None else percent} drop"
        self.ns.drop(
            "loss-upstream",
            out=[f"ip daddr {host} tcp dport {port} {chance}"],
            into=[f"ip saddr {host} tcp sport {port} {chance}"],
        )

    def halfopen_upstream(self) -> int:
        """Silence the connections open to the simulator now; returns how many."""
        host, port = self.ns.host_ip, self.sim.port
        local = self.ns.connections_to(host, port)
        if local:
            ports = "{ " + ", ".join(str(p) for p in sorted(local)) + " }"
            self.ns.drop(
                "halfopen-upstream",
                out=[f"ip daddr {host} tcp dport {port} tcp sport {ports} drop"],
                into=[f"ip saddr {host} tcp sport {port} tcp dport {ports} drop"],
            )
        return len(local)


async def run_net_scenario(
    kind: str, *, rounds: int, terminals: int, speed: float, progress: Any = None
) -> FaultReport:
    report = FaultReport(scenario=kind)
    started = time.monotonic()
    halfopen = kind in ("halfopen-upstream", "halfopen-bus")
    if halfopen:
        speed = min(speed, HALFOPEN_SPEED)
    with NetNamespace() as ns, NetRig(ns, speed=speed, terminals=terminals) as rig:
        if kind == "blackhole-redis":
            report.detect_bound_s = outage_detection_bound(rig.redis_target())
        elif halfopen:
            report.detect_bound_s = QUICK_STREAM_IDLE_TIMEOUT
        if kind == "halfopen-bus":
            rig.transport = "websocket"
        rig.daemon("d1").start()
        for round_no in range(rounds):
            if kind == "loss-upstream":
                rig.loss_upstream()
                report.faults_injected += 1
            orders = await rig.pay_all(round_no)
            paid_at = time.time()
            await rig.wait_answered(orders, within=60)
            await anyio.sleep(0.8)  # payments under way, their streams open
            if kind == "blackhole-redis":
                await _blackhole_round(rig, report)
            elif halfopen:
                await _halfopen_round(rig, report, orders)
            await rig.wait_finals(orders, within=180)
            rig.ns.clear()
            report.audit.add(await rig.audit(orders))
            await _time_to_final(rig, report, orders, paid_at)
            report.rounds += 1
            if progress is not None:
                progress(report)
            await wait_idle_terminals(rig)
        for daemon in rig.daemons.values():
            daemon.stop()
        report.noticed = {name: len(rig.log_events(name)) for name in NOTICED}
        note_logs(rig, report)
    report.seconds = round(time.monotonic() - started, 1)
    return report


async def _blackhole_round(rig: NetRig, report: FaultReport) -> None:
    """Black-hole Redis until the daemon says it is unreachable (and a little longer), or until
    well past the bound its timeouts set (then it did not notice: counted); lift it and wait
    for the daemon to say Redis is back."""
    bound = report.detect_bound_s or 30.0
    cut_at = time.time()
    rig.blackhole_redis()
    report.faults_injected += 1
    detected: float | None = None
    with anyio.move_on_after(2 * bound + 10):
        while detected is None:
            await anyio.sleep(0.2)
            detected = rig.first_after("redis.unreachable", cut_at)
    if detected is None:
        report.undetected += 1
        report.audit.problems.append(f"black hole not noticed within {2 * bound + 10:.0f} s")
    else:
        report.detections.append(detected - cut_at)
        await anyio.sleep(HOLD_AFTER_DETECTION)
    back_at = time.time()
    rig.ns.clear()
    back: float | None = None
    with anyio.move_on_after(bound + 30):
        while back is None:
            await anyio.sleep(0.2)
            back = rig.first_after("redis.reachable", back_at)
    if back is not None:
        report.recoveries.append(back - back_at)
    elif detected is not None:
        report.audit.problems.append("the daemon never said Redis was reachable again")


async def _halfopen_round(rig: NetRig, report: FaultReport, orders: list[tuple[str, str]]) -> None:
    """Silence every open connection to the simulator; then, per payment not over by then,
    when its session declared its stream lost (its idle timeout). One that ends by a poll
    before its stream times out needs no detection and is not counted."""
    final_before = await _finals_by(rig, orders)
    cut_at = time.time()
    cut = rig.halfopen_upstream()
    report.faults_injected += cut
    if not cut:
        report.audit.problems.append("halfopen-upstream: no connection to the simulator to cut")
        return
    await rig.wait_finals(orders, within=180)
    lost: dict[str, float] = {}
    for at, entry in rig.log_events("stream.lost"):
        order_id = entry.get("order_id", "")
        if at >= cut_at and order_id not in lost:
            lost[order_id] = at
    for _terminal, order_id in orders:
        if order_id in final_before:
            continue
        if order_id in lost:
            report.detections.append(lost[order_id] - cut_at)


async def _finals_by(rig: Rig, orders: list[tuple[str, str]]) -> set[str]:
    """The orders that have their final event on their stream now."""
    events = await rig.events()
    return {o for _t, o in orders if any(e["final"] for e in events.get(o, ()))}


async def _time_to_final(
    rig: Rig, report: FaultReport, orders: list[tuple[str, str]], paid_at: float
) -> None:
    events = await rig.stream_events()
    for _terminal, order_id in orders:
        finals = [written for written, e in events.get(order_id, []) if e["final"]]
        if finals:
            report.to_final.append(max(0.0, min(finals) - paid_at))
