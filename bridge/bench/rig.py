"""The fault runners' rig: a persistent redis-server, the simulator and daemon processes, the
tills' pays and the audit of every terminal's durable stream. Shared by the process faults
(:mod:`bridge.bench.faults`), the network faults (:mod:`bridge.bench.netfaults`), the Sentinel
and Cluster failover runners and the fuzzer, which import it rather than each other.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import anyio
import httpx

from bridge.core.commands import derive_order_id
from bridge.processes import stop_process
from bridge.redis.client import RedisTarget, connect, stream_entries
from bridge.redis.keys import Keys
from bridge.redis.server import RedisServer
from bridge.simulator.server import SimulatorServer

API_KEY = "fault-suite-key-0123456789"
#: The stream idle timeout of every bench daemon (``QUICK_UPSTREAM``).
QUICK_STREAM_IDLE_TIMEOUT = 3.0
#: ``[multisafepay]`` timings of every bench daemon: a local upstream answers at once.
QUICK_UPSTREAM = f"""request_timeout = 2.0
connect_timeout = 2.0
stream_idle_timeout = {QUICK_STREAM_IDLE_TIMEOUT}
reconnect_initial = 0.05
reconnect_cap = 0.5
poll_interval = 0.5"""
# cents -> the simulator's scenario by amount (see README): approve, soft decline then approve,
# retry after decline, customer cancels, stream dropped, soft decline then cancel
AMOUNTS = (1250, 2002, 1507, 804, 906, 703)


@dataclass
class Audit:
    payments: int = 0
    finals_lost: int = 0
    duplicates: int = 0
    wrong_finals: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, other: Audit) -> None:
        self.payments += other.payments
        self.finals_lost += other.finals_lost
        self.duplicates += other.duplicates
        self.wrong_finals += other.wrong_finals
        self.problems += other.problems

    @property
    def clean(self) -> bool:
        return not (self.finals_lost or self.duplicates or self.wrong_finals)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class FaultReport:
    scenario: str
    rounds: int = 0
    faults_injected: int = 0
    seconds: float = 0.0
    audit: Audit = field(default_factory=Audit)
    #: Per payment in flight at a kill -9: seconds from the kill to its next event.
    silences: list[float] = field(default_factory=list)
    #: Pays sent right after MultiSafepay said the terminal's payment was over.
    repaid: int = 0
    #: Of those, refused ``terminal_busy``: false refusals.
    wrongly_refused: int = 0
    #: Network faults: seconds from the fault to the daemon noticing it (its log line), per
    #: fault (a black hole) or per payment whose stream it cut (a half-open stream).
    detections: list[float] = field(default_factory=list)
    #: The bound the configured timeouts put on a detection (seconds; None: not applicable).
    detect_bound_s: float | None = None
    #: Faults the daemon never noticed before the runner gave up waiting.
    undetected: int = 0
    #: Seconds from the path's return to the daemon saying it is back (a black hole).
    recoveries: list[float] = field(default_factory=list)
    #: Seconds from each payment's pay to its final (loss: how much slower the path made it).
    to_final: list[float] = field(default_factory=list)
    #: Network faults: how many times the daemon logged each of the events that say it
    #: noticed something (``stream.lost``, ``redis.unreachable``, ...).
    noticed: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return self.audit.clean and not self.undetected

    def silence(self, q: float) -> float | None:
        value = percentile(self.silences, q)
        return None if value is None else round(value, 2)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["audit"]["problems"] = data["audit"]["problems"][:20]
        data["silences"] = [round(v, 2) for v in self.silences]
        data["silence_p50_s"] = self.silence(0.5)
        data["silence_p99_s"] = self.silence(0.99)
        data["silence_max_s"] = self.silence(1.0)
        for name in ("detections", "recoveries", "to_final"):
            values = getattr(self, name)
            data[name] = [round(v, 2) for v in values]
            for q, label in ((0.5, "p50"), (1.0, "max")):
                value = percentile(values, q)
                data[f"{name}_{label}_s"] = None if value is None else round(value, 2)
        return data


class DaemonProcess:
    """``pos-bridge run`` as a child process (``python -m bridge.cli``), logging to a file."""

    def __init__(self, name: str, config: Path, log: Path, prefix: list[str] | None = None) -> None:
        self.name = name
        self._config = config
        self._log = log
        #: Run through this (``ip netns exec NS``: it execs, so the PID is the daemon's).
        self._prefix = prefix or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "bridge.cli", "run", "--config", str(self._config)]
        with open(self._log, "ab") as log:
            self.proc = subprocess.Popen(
                [*self._prefix, *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 20.0) -> int | None:
        return None if self.proc is None else stop_process(self.proc, timeout)


class Rig:
    """redis-server (persistent), the simulator and daemon processes, in a temporary directory.
    Redis and the simulator listen on ``host``; ``sim_options`` go to the simulator."""

    def __init__(
        self,
        *,
        speed: float = 2.0,
        terminals: int = 12,
        host: str = "127.0.0.1",
        sim_options: dict[str, Any] | None = None,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pos-bridge-faults-"))
        self.redis = RedisServer(host=host, persistent=True)
        self.sim = SimulatorServer(
            host=host, speed=speed, api_keys=[API_KEY], **(sim_options or {})
        )
        self.terminals = [f"F{i:03d}" for i in range(terminals)]
        self.keys = Keys("pos")
        self.daemons: dict[str, DaemonProcess] = {}
        #: ``[multisafepay] transport`` of the daemons ("auto": SSE, as the simulator offers it).
        self.transport = "auto"

    def __enter__(self) -> Self:
        self.redis.start()
        self.sim.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for daemon in self.daemons.values():
            daemon.kill()
        self.sim.stop()
        self.redis.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def daemon(self, name: str) -> DaemonProcess:
        if name not in self.daemons:
            config = self.dir / f"{name}.toml"
            config.write_text(self._config(name))
            self.daemons[name] = DaemonProcess(
                name, config, self.dir / f"{name}.log", self.daemon_prefix()
            )
        return self.daemons[name]

    def daemon_prefix(self) -> list[str]:
        """What a daemon's command line is run through (a subclass's namespace; else nothing)."""
        return []

    def _config(self, name: str) -> str:
        terminals = ", ".join(f'"{t}"' for t in self.terminals)
        return f"""
[multisafepay]
api_base_url = "{self.sim.base_url}"
transport = "{self.transport}"
{QUICK_UPSTREAM}
max_payment_age = 120.0
create_retries = 2

[[multisafepay.terminal_groups]]
name = "faults"
api_key = "{API_KEY}"
terminals = [{terminals}]

[redis]
{self.redis_settings()}
order_ttl = 3600

[daemon]
shutdown_grace = 2.0

[http]
listen = "127.0.0.1:0"

[log]
level = "info"
format = "json"
"""

    def redis_target(self) -> RedisTarget:
        """The Redis the daemon and the audit use (a subclass's deployment, else one node)."""
        return RedisTarget(url=self.redis.url)

    def redis_settings(self) -> str:
        """The ``[redis]`` lines that point a daemon at :meth:`redis_target`."""
        return f'url = "{self.redis.url}"'

    async def send_command(self, client: Any, fields: dict[str, str]) -> None:
        await client.xadd(self.keys.commands, fields)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.dir.glob("*.log")))

    async def pay_all(
        self, round_no: int | str, terminals: list[str] | None = None
    ) -> list[tuple[str, str]]:
        """One payment on every terminal (or on ``terminals``); returns (terminal, order_id)."""
        client = connect(self.redis_target())
        orders = []
        try:
            for terminal in terminals or self.terminals:
                i = self.terminals.index(terminal) + (round_no if isinstance(round_no, int) else 1)
                command_id = f"r{round_no}-{terminal}-{uuid.uuid4().hex[:6]}"
                command = {
                    "type": "pay",
                    "command_id": command_id,
                    "terminal_id": terminal,
                    "amount": AMOUNTS[i % len(AMOUNTS)],
                }
                await self.send_command(client, {"command": json.dumps(command)})
                orders.append((terminal, derive_order_id(command_id)))
        finally:
            await client.aclose()
        return orders

    async def open_orders(self) -> list[str]:
        async with httpx.AsyncClient() as http:
            data = (await http.get(self.sim.url + "_sim/orders")).json()["data"]
        return [o["order_id"] for o in data if o["status"] not in ("completed", "cancelled")]

    async def drop_streams(self) -> int:
        dropped = 0
        async with httpx.AsyncClient() as http:
            for order_id in await self.open_orders():
                await http.post(f"{self.sim.url}_sim/orders/{order_id}/drop")
                dropped += 1
        return dropped

    async def stream_events(self) -> dict[str, list[tuple[float, dict[str, Any]]]]:
        """Every order's events with the time each was written (its stream id, Redis's clock)."""
        client = connect(self.redis_target())
        by_order: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
        try:
            for terminal in self.terminals:
                reply = await client.xrange(self.keys.terminal_stream(terminal))
                for entry_id, fields in stream_entries(reply):
                    event = json.loads(fields["event"])
                    written = int(str(entry_id).split("-")[0]) / 1000
                    by_order[event.get("order_id") or ""].append((written, event))
        finally:
            await client.aclose()
        return by_order

    async def truth(self) -> dict[str, str]:
        async with httpx.AsyncClient() as http:
            data = (await http.get(self.sim.url + "_sim/orders")).json()["data"]
        return {o["order_id"]: o["status"] for o in data}

    async def events(self) -> dict[str, list[dict[str, Any]]]:
        """Every order's events, read from the terminals' durable streams."""
        timed = await self.stream_events()
        return {order_id: [event for _w, event in events] for order_id, events in timed.items()}

    async def wait_answered(self, orders: list[tuple[str, str]], within: float) -> None:
        """Until every order has its first event (or ``within`` seconds have passed)."""
        wanted = {o for _, o in orders}
        with anyio.move_on_after(within):
            while not wanted <= set(await self.events()):  # noqa: ASYNC110 - polls Redis
                await anyio.sleep(0.1)

    async def wait_finals(self, orders: list[tuple[str, str]], within: float) -> None:
        wanted = {o for _, o in orders}
        with anyio.move_on_after(within):
            while True:
                events = await self.events()
                if all(any(e["final"] for e in events.get(o, ())) for o in wanted):
                    return
                await anyio.sleep(0.2)

    async def audit(self, orders: list[tuple[str, str]]) -> Audit:
        events, truth = await self.events(), await self.truth()
        audit = Audit(payments=len(orders))
        for terminal, order_id in orders:
            mine = events.get(order_id, [])
            finals = [e for e in mine if e["final"]]
            if not finals:
                audit.finals_lost += 1
                audit.problems.append(
                    f"{terminal} {order_id}: no final event ({[e['status'] for e in mine]})"
                )
            ids = [e["event_id"] for e in mine]
            statuses = [e["status"] for e in mine if e["type"] == "order.status"]
            repeats = sum(a == b for a, b in zip(statuses, statuses[1:], strict=False))
            dup = (len(ids) - len(set(ids))) + repeats + max(0, len(finals) - 1)
            if dup:
                audit.duplicates += dup
                audit.problems.append(
                    f"{terminal} {order_id}: duplicates in {[e['status'] for e in mine]}"
                )
            if (
                finals
                and finals[0]["type"] == "order.status"
                and truth.get(order_id) != finals[0]["status"]
            ):
                audit.wrong_finals += 1
                audit.problems.append(
                    f"{terminal} {order_id}: final {finals[0]['status']}, "
                    f"upstream says {truth.get(order_id)}"
                )
        return audit


async def wait_idle_terminals(rig: Rig, within: float = 60.0) -> None:
    """Between rounds: every simulated payment over, so the next pay finds its terminal free."""
    with anyio.move_on_after(within):
        while await rig.open_orders():  # noqa: ASYNC110 - polls the simulator
            await anyio.sleep(0.2)


def note_logs(rig: Rig, report: FaultReport) -> None:
    """After a run that lost, repeated or missed something: where the logs are, and their
    first error lines, among the problems."""
    if not report.clean:
        report.audit.problems.append("daemon logs: " + str(rig.dir))
        report.audit.problems += [
            line for line in rig.logs().splitlines() if '"level":"error"' in line
        ][:10]
