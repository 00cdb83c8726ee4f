"""``pos-bridge bench --redis-failover``: payments while the Redis master is failed over.

A Sentinel deployment (a master, a replica, three ``redis-server --sentinel``:
``bridge.redis.deployment``), the simulator and a daemon process configured with the
sentinels. Each round pays on every terminal and, with the payments under way, fails the
master over twice: ``SENTINEL FAILOVER`` (a planned switch), then ``kill -9`` of the new
master (a host lost; the sentinels promote the replica), and brings the killed node back as a
replica. Then every terminal's durable stream is audited as ``bench --faults`` does (a final
lost, an event twice, a final upstream contradicts).

Reported besides: failovers made and failovers the daemon logged (``redis.failover``); the
longest *silence* of a payment in flight at a failover (from the failover's start to the
payment's next event on its stream; it includes the payment's own quiet, e.g. a customer
reading the screen), and the longest time a till could not send (a till-like writer ``XADD``s
through the sentinels every 50 ms, waiting for the replica like a till does: the longest gap
between two sends that got through).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bridge.bench.rig import Audit, Rig, percentile
from bridge.redis.client import RedisTarget, connect
from bridge.redis.deployment import SentinelDeployment

#: The till-like writer's interval (seconds).
PROBE_EVERY = 0.05


@dataclass
class FailoverReport:
    rounds: int = 0
    failovers: int = 0
    failovers_seen: int = 0  # redis.failover lines in the daemon's log
    seconds: float = 0.0
    audit: Audit = field(default_factory=Audit)
    silences: list[float] = field(default_factory=list)
    #: Longest gap between two till writes that got through (seconds).
    till_blind_max_s: float = 0.0
    till_writes: int = 0
    till_write_errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["audit"]["problems"] = data["audit"]["problems"][:20]
        data["silences"] = [round(v, 2) for v in self.silences]
        for name, q in (("p50", 0.5), ("max", 1.0)):
            value = percentile(self.silences, q)
            data[f"silence_{name}_s"] = None if value is None else round(value, 2)
        data["till_blind_max_s"] = round(self.till_blind_max_s, 2)
        return data


class FailoverRig(Rig):
    """``bench --faults``' rig with a Sentinel deployment in place of its one redis-server."""

    def __init__(self, *, speed: float, terminals: int) -> None:
        super().__init__(speed=speed, terminals=terminals)
        self.redis.close()  # the single node of the base rig is never started
        self.deployment = SentinelDeployment(replicas=1, sentinels=3)
        self.target = self.deployment.target(wait_replicas=1)
        self.keep = False  # the daemon's log, kept when the audit found a problem

    def __enter__(self) -> FailoverRig:
        self.deployment.start()
        self.sim.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for daemon in self.daemons.values():
            daemon.kill()
        self.sim.stop()
        self.deployment.close()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def redis_target(self) -> RedisTarget:
        return self.target

    def redis_settings(self) -> str:
        sentinels = ", ".join(f'"{s}"' for s in self.deployment.sentinel_addresses)
        return (
            'url = "redis://127.0.0.1:6379/0"\n'
            f"sentinels = [{sentinels}]\n"
            f'master_name = "{self.deployment.master_name}"'
        )

    async def send_command(self, client: Any, fields: dict[str, str]) -> None:
        await _until_sent(client, self.keys.commands, fields)

    def failovers_logged(self) -> int:
        return sum('"redis.failover"' in line for line in self.logs().splitlines())


async def _until_sent(client: Any, stream: str, fields: dict[str, str]) -> None:
    """``XADD`` until it gets through a failover (a till retries a command it could not send;
    the daemon de-duplicates by ``command_id``)."""
    with anyio.fail_after(60):
        while True:
            try:
                await client.xadd(stream, fields)
                return
            except (RedisConnectionError, RedisTimeoutError):
                await anyio.sleep(0.1)


class TillWriter:
    """Writes through the sentinels every ``PROBE_EVERY`` s; the longest gap between writes
    that got through is how long a till could not send."""

    def __init__(self, rig: FailoverRig, report: FailoverReport) -> None:
        self._rig = rig
        self._report = report

    async def run(self) -> None:
        client = connect(self._rig.target, socket_timeout=2.0)
        key = f"{self._rig.keys.prefix}:bench:till-writer"
        last_ok = time.monotonic()
        try:
            while True:
                try:
                    await client.xadd(key, {"t": str(time.time())}, maxlen=1000)
                except (RedisConnectionError, RedisTimeoutError):
                    self._report.till_write_errors += 1
                else:
                    now = time.monotonic()
                    self._report.till_blind_max_s = max(
                        self._report.till_blind_max_s, now - last_ok
                    )
                    self._report.till_writes += 1
                    last_ok = now
                await anyio.sleep(PROBE_EVERY)
        finally:
            with anyio.CancelScope(shield=True):
                await client.aclose()


async def run_failovers(
    *, rounds: int = 3, terminals: int = 8, speed: float = 1.0, progress: Any = None
) -> FailoverReport:
    report = FailoverReport()
    started = time.monotonic()
    with FailoverRig(speed=speed, terminals=terminals) as rig:
        rig.daemon("d1").start()
        async with anyio.create_task_group() as tg:
            tg.start_soon(TillWriter(rig, report).run)
            for round_no in range(rounds):
                await _round(rig, report, round_no)
                if progress is not None:
                    progress(report)
            tg.cancel_scope.cancel()
        rig.daemon("d1").stop()
        report.failovers_seen = rig.failovers_logged()
        if not report.audit.clean:
            rig.keep = True
            report.audit.problems.append("daemon logs: " + str(rig.dir))
            report.audit.problems += [
                line for line in rig.logs().splitlines() if '"level":"error"' in line
            ][:10]
    report.seconds = round(time.monotonic() - started, 1)
    return report


async def _round(rig: FailoverRig, report: FailoverReport, round_no: int) -> None:
    orders = await rig.pay_all(round_no)
    await rig.wait_answered(orders, within=60)  # the daemon took them: payments under way
    deployment = rig.deployment
    failed_over_at = time.time()
    await anyio.to_thread.run_sync(deployment.failover)
    killed, _now = await anyio.to_thread.run_sync(deployment.kill_master)
    report.failovers += 2
    await anyio.to_thread.run_sync(deployment.revive, killed)
    await rig.wait_finals(orders, within=120)
    events = await rig.stream_events()
    for _terminal, order_id in orders:
        mine = events.get(order_id, [])
        if any(event["final"] for written, event in mine if written < failed_over_at):
            continue  # over before the failover
        after = [written for written, _event in mine if written >= failed_over_at]
        if after:
            report.silences.append(max(0.0, min(after) - failed_over_at))
    report.audit.add(await rig.audit(orders))
    report.rounds += 1
    with anyio.move_on_after(60):  # the next round's pays find their terminals free
        while await rig.open_orders():  # noqa: ASYNC110 - polls the simulator
            await anyio.sleep(0.2)


def table(report: FailoverReport) -> str:
    a = report.audit
    data = report.as_dict()
    return "\n".join(
        [
            f"rounds {report.rounds}, payments {a.payments}, failovers {report.failovers} "
            f"(daemon logged {report.failovers_seen}), {report.seconds} s",
            f"finals lost {a.finals_lost}, duplicate transitions {a.duplicates}, "
            f"wrong finals {a.wrong_finals}",
            f"longest time a till could not send: {data['till_blind_max_s']} s "
            f"({report.till_writes} writes, {report.till_write_errors} failed)",
            f"silence of payments in flight at a failover: p50 {data['silence_p50_s']} s, "
            f"max {data['silence_max_s']} s",
        ]
    )


def redis_failover_command(args: Any) -> int:
    """``bench --redis-failover [--rounds N] [--terminals T] [--json]``: exit 0 only if nothing
    was lost, duplicated or contradicted."""
    from bridge.errors import UserError

    if args.rounds < 1 or args.terminals < 1:
        raise UserError("bench --redis-failover: --rounds and --terminals must be at least 1")

    def progress(report: FailoverReport) -> None:
        a = report.audit
        print(
            f"redis-failover: round {report.rounds}/{args.rounds}: {a.payments} payments, "
            f"{report.failovers} failovers, lost {a.finals_lost}, duplicates {a.duplicates}, "
            f"till blind max {report.till_blind_max_s:.2f} s",
            file=sys.stderr,
            flush=True,
        )

    report = anyio.run(
        lambda: run_failovers(rounds=args.rounds, terminals=args.terminals, progress=progress)
    )
    if getattr(args, "json", False):
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(table(report))
        for problem in report.audit.problems[:10]:
            print(f"  {problem}")
    return 0 if report.audit.clean else 1
