"""Payments under fire: real daemon processes, a real (persistent) redis-server and the simulator,
while faults are injected; then every terminal's durable stream is audited.

Scenarios (``KINDS``): ``kill`` (SIGKILL the daemon mid-payments, start it again), ``redis``
(stop Redis, start it again), ``drop`` (drop the simulator's streams, again and again),
``takeover`` (two daemons; SIGKILL one); and the network faults of ``NET_KINDS``
(:mod:`bridge.bench.netfaults`: the daemon in a network namespace, packets dropped without a
trace): ``blackhole-redis``, ``loss-upstream``, ``halfopen-upstream``. The audit counts, per
payment: a final event lost, duplicates (an ``event_id`` twice, a status repeated back to
back, a second final), and a final that contradicts what the simulator says happened.

After a ``kill -9`` (``kill``, ``takeover``) it also measures what a customer at the counter
sees: the *silence* of every payment in flight (from the kill to its next event on the
terminal's stream), and *wrongly refused* pays: as soon as MultiSafepay says a terminal's
payment is over, the next pay is sent on it, before the bridge has necessarily caught up; a
``terminal_busy`` for it is a false refusal. The daemons run with the default lease TTL and
consumer names (``hostname-pid``: a restarted daemon is a new consumer), as in production.

Used by the fault tests (a few payments per scenario) and by ``pos-bridge bench --faults``
(many, over several rounds).
"""

from __future__ import annotations

import sys
import time
from functools import partial
from typing import Any

import anyio

from bridge.bench.netfaults import run_net_scenario
from bridge.bench.rig import (
    FaultReport,
    Rig,
    note_logs,
    percentile,
    wait_idle_terminals,
)

#: Faults of processes (any user, any machine).
PROCESS_KINDS = ("kill", "redis", "drop", "takeover")
#: Faults of the network (root, ``ip`` and ``nft``): :mod:`bridge.bench.netfaults`.
NET_KINDS = ("blackhole-redis", "loss-upstream", "halfopen-upstream", "halfopen-bus")
KINDS = PROCESS_KINDS + NET_KINDS


async def run_scenario(
    kind: str, *, rounds: int = 1, terminals: int = 12, speed: float = 2.0, progress: Any = None
) -> FaultReport:
    """Run ``rounds`` rounds of one payment per terminal while injecting ``kind`` faults."""
    if kind not in KINDS:
        raise ValueError(f"unknown fault scenario {kind!r}; one of {', '.join(KINDS)}")
    if kind in NET_KINDS:
        return await run_net_scenario(
            kind, rounds=rounds, terminals=terminals, speed=speed, progress=progress
        )
    report = FaultReport(scenario=kind)
    started = time.monotonic()
    with Rig(speed=speed, terminals=terminals) as rig:
        names = ["d1", "d2"] if kind == "takeover" else ["d1"]
        for name in names:
            rig.daemon(name).start()
        for round_no in range(rounds):
            orders = await rig.pay_all(round_no)
            await rig.wait_answered(orders, within=30)  # the daemons are up and taking pays
            await anyio.sleep(0.8)  # payments under way
            killed_at = time.time()
            report.faults_injected += await _inject(rig, kind)
            if kind in ("kill", "takeover"):
                repaid = await _pay_again_when_over(rig, orders, round_no)
                await rig.wait_finals(orders + repaid, within=90)
                await _measure_kill(rig, report, orders, repaid, killed_at)
                orders += repaid
            await rig.wait_finals(orders, within=90)
            report.audit.add(await rig.audit(orders))
            report.rounds += 1
            if progress is not None:
                progress(report)
            if kind == "takeover":  # bring the killed one back for the next round
                rig.daemon("d1").start()
            await wait_idle_terminals(rig)
        for daemon in rig.daemons.values():
            daemon.stop()
        note_logs(rig, report)
    report.seconds = round(time.monotonic() - started, 1)
    return report


async def _pay_again_when_over(
    rig: Rig, orders: list[tuple[str, str]], round_no: int
) -> list[tuple[str, str]]:
    """The next pay on each terminal as soon as MultiSafepay says its payment is over (not
    waiting for the bridge to say so): what a till does for the next customer."""
    waiting = dict(orders)
    repaid: list[tuple[str, str]] = []
    with anyio.move_on_after(60.0):
        while waiting:
            truth = await rig.truth()
            over = [t for t, o in waiting.items() if truth.get(o) in ("completed", "cancelled")]
            if over:
                repaid += await rig.pay_all(f"{round_no}b", over)
                for terminal in over:
                    del waiting[terminal]
            await anyio.sleep(0.1)
    return repaid


async def _measure_kill(
    rig: Rig,
    report: FaultReport,
    orders: list[tuple[str, str]],
    repaid: list[tuple[str, str]],
    killed_at: float,
) -> None:
    """Silence of every payment in flight at the kill; false refusals of the next pays."""
    events = await rig.stream_events()
    for _terminal, order_id in orders:
        mine = events.get(order_id, [])
        if any(event["final"] for written, event in mine if written < killed_at):
            continue  # over before the kill
        after = [written for written, _event in mine if written >= killed_at]
        if after:
            report.silences.append(max(0.0, min(after) - killed_at))
    report.repaid += len(repaid)
    for _terminal, order_id in repaid:
        codes = [(event.get("error") or {}).get("code") for _w, event in events.get(order_id, [])]
        if "terminal_busy" in codes:
            report.wrongly_refused += 1
            report.audit.problems.append(f"{order_id}: refused terminal_busy after a kill")


async def _inject(rig: Rig, kind: str) -> int:
    if kind == "kill":
        rig.daemon("d1").kill()
        await anyio.sleep(0.5)
        rig.daemon("d1").start()
        return 1
    if kind == "redis":
        await anyio.to_thread.run_sync(rig.redis.stop)
        await anyio.sleep(2.0)
        await anyio.to_thread.run_sync(rig.redis.start)
        return 1
    if kind == "drop":
        injected = 0
        for _ in range(6):
            injected += await rig.drop_streams()
            await anyio.sleep(0.4)
        return injected
    rig.daemon("d1").kill()  # takeover: d2 carries on with d1's payments and commands
    return 1


def default_kinds(out: Any = sys.stderr) -> tuple[str, ...]:
    """Every scenario this machine can run: the network faults need root, ``ip`` and ``nft``
    (without them they are left out, saying why)."""
    from bridge.bench.netns import unavailable

    why = unavailable()
    if why is None:
        return KINDS
    print(f"faults: leaving out {', '.join(NET_KINDS)}: {why}", file=out, flush=True)
    return PROCESS_KINDS


def run_all(
    kinds: tuple[str, ...], rounds: int, terminals: int, *, out: Any = sys.stderr
) -> list[FaultReport]:
    """Every scenario in turn, a progress line per round; the reports, for a table or JSON."""

    def progress(report: FaultReport) -> None:
        a = report.audit
        after_kill = (
            f", longest silence {report.silence(1.0)} s, wrongly refused {report.wrongly_refused}"
            if report.silences
            else ""
        )
        if report.detect_bound_s is not None:
            longest = percentile(report.detections, 1.0)
            after_kill += (
                f", noticed within {_seconds(longest)} s (bound {report.detect_bound_s:g} s)"
                f", not noticed {report.undetected}"
            )
        print(
            f"faults: {report.scenario} round {report.rounds}/{rounds}: {a.payments} payments, "
            f"{report.faults_injected} faults, lost {a.finals_lost}, duplicates {a.duplicates}, "
            f"wrong {a.wrong_finals}{after_kill}",
            file=out,
            flush=True,
        )

    return [
        anyio.run(
            partial(run_scenario, kind, rounds=rounds, terminals=terminals, progress=progress)
        )
        for kind in kinds
    ]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(reports: list[FaultReport]) -> str:
    """The audit per scenario; then, for the network faults, what the daemon noticed."""
    rows = [
        f"{'scenario':<17} {'rounds':>6} {'payments':>8} {'faults':>7} {'finals lost':>11} "
        f"{'duplicates':>10} {'wrong final':>11} {'silence p50/p99/max s':>22} "
        f"{'refused/repaid':>14} {'seconds':>8}"
    ]
    for r in reports:
        a = r.audit
        silence = "/".join(_seconds(r.silence(q)) for q in (0.5, 0.99, 1.0))
        refused = f"{r.wrongly_refused}/{r.repaid}" if r.repaid else "-"
        rows.append(
            f"{r.scenario:<17} {r.rounds:>6} {a.payments:>8} {r.faults_injected:>7} "
            f"{a.finals_lost:>11} {a.duplicates:>10} {a.wrong_finals:>11} {silence:>22} "
            f"{refused:>14} {r.seconds:>8}"
        )
    net = [r for r in reports if r.scenario in NET_KINDS]
    if net:
        rows += ["", net_table(net)]
    return "\n".join(rows)


def net_table(reports: list[FaultReport]) -> str:
    """Detection (fault to the daemon's log line) against its configured bound, recovery and
    time from pay to final, and how often the daemon logged each sign of trouble."""
    rows = [
        f"{'network fault':<17} {'noticed p50/max s':>17} {'bound s':>7} {'not noticed':>11} "
        f"{'back max s':>10} {'pay to final p50/max s':>22}  daemon logged"
    ]
    for r in reports:
        noticed = "/".join(_seconds(percentile(r.detections, q)) for q in (0.5, 1.0))
        bound = "-" if r.detect_bound_s is None else f"{r.detect_bound_s:g}"
        final = "/".join(_seconds(percentile(r.to_final, q)) for q in (0.5, 1.0))
        logged = ", ".join(f"{name} {n}" for name, n in r.noticed.items() if n)
        rows.append(
            f"{r.scenario:<17} {noticed:>17} {bound:>7} {r.undetected:>11} "
            f"{_seconds(percentile(r.recoveries, 1.0)):>10} {final:>22}  {logged or '-'}"
        )
    return "\n".join(rows)


if __name__ == "__main__":  # python -m bridge.bench.faults [ROUNDS] [TERMINALS]
    reports = run_all(
        default_kinds(),
        int(sys.argv[1]) if len(sys.argv) > 1 else 3,
        int(sys.argv[2]) if len(sys.argv) > 2 else 12,
    )
    print(table(reports))
    sys.exit(0 if all(r.clean for r in reports) else 1)
