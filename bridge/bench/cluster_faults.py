"""Payments while Redis Cluster masters are lost: the fault run of the cluster layout.

``pos-bridge bench --cluster-failover [--rounds N] [--terminals T]``, or
``python -m bridge.bench.cluster_faults [ROUNDS] [TERMINALS]`` (not in the tests: minutes).
A 3-master, 3-replica cluster, the simulator and one ``pos-bridge run`` process with
``[redis] layout = "cluster"``. Each round sends one payment per terminal, waits until they
are under way, SIGKILLs the master that serves the bridge's slot, waits for its replica to
take over, starts the killed node again (it rejoins as a replica, so the next round has one),
waits for every final and audits every terminal's durable stream as the other fault scenarios
do (:mod:`bridge.bench.faults`): finals lost, duplicate transitions, finals that contradict
the simulator, and the *silence* of each payment in flight (from the kill to its next event).

The daemon runs with the cluster layout's default ``wait_replicas = 1``: a commit is
acknowledged once the slot's replica holds it, so the master killed takes none of them along;
what the wait costs shows in the silence of the payments in flight.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from bridge.bench.faults import table
from bridge.bench.rig import API_KEY, DaemonProcess, FaultReport, Rig
from bridge.redis.client import RedisTarget
from bridge.redis.cluster_server import RedisClusterServer
from bridge.redis.keys import Keys
from bridge.simulator.server import SimulatorServer

SCENARIO = "cluster"
#: The slot every name of the bridge is in (prefix "pos", cluster layout).
TAG = "{pos}"


class ClusterRig(Rig):
    """:class:`Rig` on a Redis Cluster: the same daemons, payments, waits and audit."""

    def __init__(self, *, speed: float = 2.0, terminals: int = 12) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pos-bridge-cluster-faults-"))
        self.cluster = RedisClusterServer(masters=3, replicas_per_master=1)
        self.sim = SimulatorServer(speed=speed, api_keys=[API_KEY])
        self.terminals = [f"F{i:03d}" for i in range(terminals)]
        self.keys = Keys("pos", "cluster")
        self.daemons: dict[str, DaemonProcess] = {}
        self.transport = "auto"  # as Rig's: its __init__ (one redis-server) is not run

    def __enter__(self) -> ClusterRig:
        self.cluster.start()
        self.sim.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for daemon in self.daemons.values():
            daemon.kill()
        self.sim.stop()
        self.cluster.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def redis_target(self) -> RedisTarget:
        return RedisTarget(url=self.cluster.url, cluster=True)

    def redis_settings(self) -> str:
        return f'url = "{self.cluster.url}"\nlayout = "cluster"'


async def run_cluster_faults(
    *, rounds: int = 3, terminals: int = 12, speed: float = 2.0, out: Any = sys.stderr
) -> FaultReport:
    report = FaultReport(scenario=SCENARIO)
    started = time.monotonic()
    with ClusterRig(speed=speed, terminals=terminals) as rig:
        rig.daemon("d1").start()
        for round_no in range(rounds):
            orders = await rig.pay_all(round_no)
            await rig.wait_answered(orders, within=60)
            await anyio.sleep(0.8)  # payments under way
            master = rig.cluster.master_of(TAG)
            killed_at = time.time()
            rig.cluster.kill(master)
            await anyio.to_thread.run_sync(rig.cluster.wait_failover, TAG, master)
            report.faults_injected += 1
            await rig.wait_finals(orders, within=120)
            await _measure_silence(rig, report, orders, killed_at)
            report.audit.add(await rig.audit(orders))
            report.rounds += 1
            await anyio.to_thread.run_sync(rig.cluster.restart, master)
            a = report.audit
            print(
                f"cluster faults: round {report.rounds}/{rounds}: {a.payments} payments, "
                f"{report.faults_injected} failovers, lost {a.finals_lost}, duplicates "
                f"{a.duplicates}, wrong {a.wrong_finals}, longest silence "
                f"{report.silence(1.0)} s",
                file=out,
                flush=True,
            )
            with anyio.move_on_after(60):  # the next round finds every terminal free
                while await rig.open_orders():  # noqa: ASYNC110 - polls the simulator
                    await anyio.sleep(0.2)
        rig.daemons["d1"].stop()
        if not report.audit.clean:
            kept = Path(tempfile.mkdtemp(prefix="pos-bridge-cluster-faults-logs-"))
            for log in rig.dir.glob("*.log"):
                shutil.copy(log, kept)
            report.audit.problems.append(f"daemon logs kept in {kept}")
            report.audit.problems += [
                line for line in rig.logs().splitlines() if '"level":"error"' in line
            ][:10]
    report.seconds = round(time.monotonic() - started, 1)
    return report


async def _measure_silence(
    rig: Rig, report: FaultReport, orders: list[tuple[str, str]], killed_at: float
) -> None:
    """Per payment in flight at the kill: seconds until its next event reached its stream."""
    events = await rig.stream_events()
    for _terminal, order_id in orders:
        mine = events.get(order_id, [])
        if any(event["final"] for written, event in mine if written < killed_at):
            continue  # over before the kill
        after = [written for written, _event in mine if written >= killed_at]
        if after:
            report.silences.append(max(0.0, min(after) - killed_at))


def cluster_failover_command(args: Any) -> int:
    """``bench --cluster-failover [--rounds N] [--terminals T]``: exit 0 only if nothing was
    lost, duplicated or contradicted."""
    from bridge.errors import UserError

    if args.rounds < 1 or args.terminals < 1:
        raise UserError("bench --cluster-failover: --rounds and --terminals must be at least 1")
    result = anyio.run(
        lambda: run_cluster_faults(rounds=args.rounds, terminals=args.terminals, out=sys.stderr)
    )
    print(table([result]))
    for problem in result.audit.problems[:20]:
        print(problem)
    return 0 if result.audit.clean else 1
