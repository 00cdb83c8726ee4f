"""``pos-bridge bench``: the bridge under load, against a baseline measured in the same run.

Each part runs in its own process: a private ``redis-server``, the simulator
(:mod:`bridge.bench.simproc`), the daemon (``pos-bridge run`` with a generated config), the
tills (:mod:`bridge.bench.tills`, one ``PSUBSCRIBE`` over every terminal channel) and, for the
floor, :mod:`bridge.bench.baseline`. The run:

1. opens N payments on ``SIM-BENCH-*`` terminals (``pay`` commands on Redis, as tills send
   them): N upstream streams held by the daemon, which stay open;
2. drive: the simulator changes M order statuses per second round robin over them for the
   duration (``initialized``, ``declined``, ``initialized``, ...: each a distinct transition),
   recording the monotonic time each is written to its stream;
3. baseline: the same number of orders and rate applied straight into Redis with the same core
   decision and Lua transition, the daemon idle (its streams still open);
4. finish: every payment gets its final ``completed`` at the same rate; the streams close.

Latency is the tills' receipt time minus the send time (``time.monotonic()`` is system-wide on
Linux), joined on (order id, n-th status event of the order). Any event sent and not received
is an error (exit 1).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from bridge.bench.procs import connections_to, cpu_seconds, raise_nofile, rss_bytes, stop_process
from bridge.errors import UserError
from bridge.redis.keys import Keys
from bridge.redis.server import RedisServer

PREFIX = "bench"
API_KEY = "bench-api-key-0123456789"
TERMINAL = "SIM-BENCH-{:05d}"
ORDER = "bench-{:05d}"
# order.created + initialized, declined | initialized, completed: a typical payment
EVENTS_PER_PAYMENT = 3
OPEN_STALL = 60.0  # seconds without a new stream before opening is given up

QUICK = {"streams": 200, "rate": 200.0, "duration": 10.0}
DEFAULTS = {"streams": 1000, "rate": 1000.0, "duration": 30.0}


@dataclass
class Settings:
    transport: str = "sse"
    streams: int = 1000
    rate: float = 1000.0
    duration: float = 30.0
    baseline_duration: float = 30.0
    log_level: str = "info"
    enrich_final: bool = True
    keep: bool = False
    profile: str | None = None
    gc: str = "default"


@dataclass
class Result:
    settings: dict[str, Any]
    ok: bool = True
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    streams_requested: int = 0
    streams_held: int = 0
    streams_by_transport: dict[str, int] = field(default_factory=dict)
    daemon_connections_to_upstream: int = 0
    open_seconds: float = 0.0
    payments_opened_per_s: float = 0.0
    events_sent: int = 0
    events_received: int = 0
    events_lost: int = 0
    drive_events: int = 0
    drive_events_per_s: float = 0.0
    target_rate: float = 0.0
    implied_payments_per_s: float = 0.0
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    ratio: dict[str, float] = field(default_factory=dict)
    baseline_events: int = 0
    baseline_events_per_s: float = 0.0
    final_events: int = 0
    daemon_rss_before_mb: float = 0.0
    daemon_rss_streams_mb: float = 0.0
    daemon_rss_peak_mb: float = 0.0
    daemon_kb_per_stream: float = 0.0
    daemon_cpu_s_per_1000_events: float = 0.0
    daemon_cpu_utilisation: float = 0.0
    #: CPU used while driven, as a share of one core, by every process of the run.
    cpu_while_driven: dict[str, float] = field(default_factory=dict)
    #: Garbage collections of 5 ms or more in the daemon over the whole run: count, longest.
    daemon_gc_pauses: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0


# -- small helpers ------------------------------------------------------------------------------


class Progress:
    """One line on stderr: rewritten in place on a terminal, else printed every few seconds."""

    def __init__(self, quiet: bool = False) -> None:
        self.tty = sys.stderr.isatty()
        self.quiet = quiet
        self._last = 0.0
        self._shown = False

    def __call__(self, text: str, force: bool = False) -> None:
        if self.quiet:
            return
        if self.tty:
            sys.stderr.write("\r\x1b[K" + text)
            sys.stderr.flush()
            self._shown = True
        elif force or time.monotonic() - self._last >= 5.0:
            self._last = time.monotonic()
            print(text, file=sys.stderr, flush=True)

    def done(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            sys.stderr.write("\r\x1b[K" + text + "\n")
            sys.stderr.flush()
        else:
            print(text, file=sys.stderr, flush=True)


def percentiles(values: list[float]) -> dict[str, float]:
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


def _wait_for(pred: Any, timeout: float, what: str, tick: float = 0.1, on_tick: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        if on_tick:
            on_tick()
        time.sleep(tick)


class BenchError(Exception):
    pass


class Child:
    """A child process with line-based stdin/stdout, stderr to a log file."""

    def __init__(self, name: str, argv: list[str], logdir: Path, *, stdin: bool = False) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed below, kept by the child
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        log.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def readline(self, timeout: float) -> str:
        import selectors

        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise BenchError(f"{self.name}: no answer within {timeout:.0f} s ({self.tail()})")
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"{self.name} exited ({self.tail()})")
        return line.strip()

    def ask(self, command: str, timeout: float = 30.0) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.readline(timeout)

    def tail(self, n: int = 600) -> str:
        try:
            text = self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""
        return " ".join(text.split())

    def stop(self, timeout: float = 15.0) -> None:
        stop_process(self.proc, timeout)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def daemon_config(redis_url: str, api_base_url: str, s: Settings) -> str:
    terminals = ",\n  ".join(f'"{TERMINAL.format(i)}"' for i in range(s.streams))
    horizon = max(3600.0, 10 * (s.duration + s.baseline_duration) + s.streams)
    return f"""# generated by pos-bridge bench
[multisafepay]
api_base_url = "{api_base_url}"
transport = "{s.transport}"
# Nothing but the stream may speak during the measurement: no polling, no deadline.
poll_interval = {horizon}
max_payment_age = {horizon}
enrich_final = {str(s.enrich_final).lower()}

[[multisafepay.terminal_groups]]
name = "bench"
api_key = "{API_KEY}"
terminals = [
  {terminals}
]

[redis]
url = "{redis_url}"
prefix = "{PREFIX}"
order_ttl = 3600

[http]
enabled = false

[log]
level = "{s.log_level}"
format = "json"
"""


# -- the run ------------------------------------------------------------------------------------


class Bench:
    def __init__(self, s: Settings, progress: Progress) -> None:
        self.s = s
        self.progress = progress
        self.result = Result(settings=asdict(s))
        self.tmp = Path(tempfile.mkdtemp(prefix="pos-bridge-bench-"))
        self.py = sys.executable

    def run(self) -> Result:
        t_start = time.monotonic()
        raise_nofile()  # inherited by every child
        with ExitStack() as stack:
            if not self.s.keep:
                stack.callback(shutil.rmtree, self.tmp, True)
            else:
                self.result.notes.append(f"logs and data kept in {self.tmp}")
            rs = RedisServer()
            rs.start()
            stack.callback(rs.close)
            assert rs._proc is not None
            self.redis_pid = rs._proc.pid
            self.redis_url = rs.url
            self.r = redis.Redis.from_url(rs.url, decode_responses=True)
            stack.callback(self.r.close)

            self.tills = Child(
                "tills",
                [self.py, "-m", "bridge.bench.tills", "--redis-url", rs.url, "--prefix", PREFIX],
                self.tmp,
                stdin=True,
            )
            stack.callback(self.tills.stop)
            if self.tills.readline(15) != "ready":
                raise BenchError("tills did not subscribe")

            self.sim = Child("simulator", [self.py, "-m", "bridge.bench.simproc"], self.tmp)
            stack.callback(self.sim.stop)
            base_url = self.sim.readline(30)
            self.sim_root = base_url.removesuffix("v1/json/")
            self.sim_port = int(base_url.split(":")[2].split("/")[0])
            self.http = httpx.Client(base_url=self.sim_root, timeout=60)
            stack.callback(self.http.close)
            _wait_for(self._sim_up, 30, "the simulator")

            cfg = self.tmp / "config.toml"
            cfg.write_text(daemon_config(rs.url, base_url, self.s))
            self.daemon = Child(
                "daemon",
                [
                    self.py,
                    "-m",
                    "bridge.bench.daemonproc",
                    "--gc",
                    self.s.gc,
                    "--",
                    "run",
                    "--config",
                    str(cfg),
                ],
                self.tmp,
            )
            stack.callback(self.daemon.stop)
            _wait_for(
                lambda: self._daemon_log_has('"daemon.started"'),
                60,
                "the daemon to start",
                on_tick=self._check_alive,
            )
            time.sleep(0.5)
            self.result.daemon_rss_before_mb = rss_bytes(self.daemon.pid) / 2**20

            self._open_streams()
            self._drive()
            self._baseline()
            self._finish()
            self._collect()
        self.result.wall_seconds = time.monotonic() - t_start
        return self.result

    # -- plumbing ---------------------------------------------------------------------------
    def _sim_up(self) -> bool:
        try:
            return self.http.get("_sim/bench/status").status_code == 200
        except httpx.HTTPError:
            return False

    def _sim_status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.http.get("_sim/bench/status").json()["data"]
        return status

    def _daemon_log_has(self, text: str) -> bool:
        try:
            return text in self.daemon.log_path.read_text(errors="replace")
        except OSError:
            return False

    def _check_alive(self) -> None:
        for child in (self.daemon, self.sim, self.tills):
            if not child.alive():
                raise BenchError(f"{child.name} exited: {child.tail()}")

    def _counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = json.loads(self.tills.ask("count"))
        return counts

    def _received(self, prefix: str, typ: str = "order.status") -> int:
        return self._counts().get(prefix, {}).get(typ, 0)

    def _sample_daemon(self) -> None:
        pid = self.daemon.pid
        res = self.result
        res.daemon_rss_peak_mb = max(res.daemon_rss_peak_mb, rss_bytes(pid) / 2**20)

    # -- phases -----------------------------------------------------------------------------
    def _open_streams(self) -> None:
        n = self.s.streams
        keys = Keys(PREFIX)
        t0 = time.monotonic()
        pipe = self.r.pipeline(transaction=False)
        for i in range(n):
            command = {
                "type": "pay",
                "command_id": f"bench-c-{i:05d}",
                "terminal_id": TERMINAL.format(i),
                "amount": 100,
                "currency": "EUR",
                "order_id": ORDER.format(i),
                "description": "bench",
            }
            pipe.xadd(keys.commands, {"command": json.dumps(command)})
            if len(pipe) >= 1000:
                pipe.execute()
        pipe.execute()

        seen = {"held": -1, "at": t0}

        def opened() -> bool:
            st = self._sim_status()
            held = sum(st["streams"].values())
            created = self._received("bench", "order.created")
            now = time.monotonic()
            self.progress(
                f"opening streams: {held}/{n} held, {created} orders created ({now - t0:.0f} s)"
            )
            if held != seen["held"]:
                seen.update(held=held, at=now)
            elif now - seen["at"] > OPEN_STALL:
                raise BenchError(f"no stream opened for {OPEN_STALL:.0f} s ({held} of {n} held)")
            return bool(held >= n)

        _wait_for(opened, 3600, f"{n} streams to open", tick=0.5, on_tick=self._check_alive)
        res = self.result
        res.open_seconds = time.monotonic() - t0
        res.payments_opened_per_s = n / res.open_seconds
        self.progress.done(
            f"opened {n} payments and their streams in {res.open_seconds:.1f} s "
            f"({res.payments_opened_per_s:.0f} payments/s)"
        )
        time.sleep(1.0)  # let the last sessions settle before measuring memory
        res.daemon_rss_streams_mb = rss_bytes(self.daemon.pid) / 2**20
        res.daemon_rss_peak_mb = res.daemon_rss_streams_mb
        res.streams_requested = n
        st = self._sim_status()
        res.streams_by_transport = {k: v for k, v in st["streams"].items() if v}
        res.streams_held = sum(st["streams"].values())
        res.daemon_connections_to_upstream = connections_to(self.daemon.pid, self.sim_port)
        res.daemon_kb_per_stream = (
            (res.daemon_rss_streams_mb - res.daemon_rss_before_mb) * 1024 / max(1, res.streams_held)
        )
        if self.s.transport not in res.streams_by_transport:
            res.notes.append(
                f"asked for {self.s.transport} but the daemon opened "
                f"{', '.join(res.streams_by_transport) or 'no'} streams"
            )

    def _drive(self) -> None:
        s, res = self.s, self.result
        profiler = self._start_profiler()
        pids = {
            "daemon": self.daemon.pid,
            "simulator": self.sim.pid,
            "redis": self.redis_pid,
            "tills": self.tills.pid,
        }
        cpus0 = {k: cpu_seconds(p) for k, p in pids.items()}
        cpu0 = cpus0["daemon"]
        r = self.http.post("_sim/bench/drive", json={"rate": s.rate, "duration": s.duration})
        if r.status_code != 200:
            raise BenchError(f"simulator refused to drive: {r.text}")
        t0 = time.monotonic()
        last_sample = 0.0
        while True:
            time.sleep(0.5)
            st = self._sim_status()
            got = self._received("bench")
            el = time.monotonic() - t0
            if el - last_sample >= 2.0:
                last_sample = el
                self._sample_daemon()
                res.streams_held = max(res.streams_held, sum(st["streams"].values()))
            self.progress(
                f"bridge: {el:4.0f}/{s.duration:.0f} s  sent {st['sent']}  "
                f"received {got}  ({st['sent'] / max(el, 1e-9):.0f}/s)  "
                f"streams {sum(st['streams'].values())}"
            )
            self._check_alive()
            if not st["driving"]:
                break
        sent = st["sent"]
        _wait_for(lambda: self._received("bench") >= sent, 30, "the last bridge events")
        res.daemon_cpu_s_per_1000_events = (
            (cpu_seconds(self.daemon.pid) - cpu0) * 1000 / max(1, sent)
        )
        el = max(1e-9, time.monotonic() - t0)
        res.daemon_cpu_utilisation = (cpu_seconds(self.daemon.pid) - cpu0) / el
        res.cpu_while_driven = {
            k: round((cpu_seconds(p) - cpus0[k]) / el, 3) for k, p in pids.items()
        }
        self._stop_profiler(profiler)
        self._sample_daemon()
        res.daemon_connections_to_upstream = max(
            res.daemon_connections_to_upstream, connections_to(self.daemon.pid, self.sim_port)
        )
        self.progress.done(f"bridge: sent {sent}, received {self._received('bench')}")

    def _baseline(self) -> None:
        s = self.s
        out = self.tmp / "baseline.json"
        base = Child(
            "baseline",
            [
                self.py,
                "-m",
                "bridge.bench.baseline",
                "--redis-url",
                self.redis_url,
                "--prefix",
                PREFIX,
                "--orders",
                str(s.streams),
                "--rate",
                str(s.rate),
                "--duration",
                str(s.baseline_duration),
                "--out",
                str(out),
            ],
            self.tmp,
        )
        t0 = time.monotonic()
        try:
            while base.alive():
                time.sleep(0.5)
                got = self._received("base")
                self.progress(f"baseline: {time.monotonic() - t0:4.0f} s  received {got}")
            if base.proc.returncode != 0:
                raise BenchError(f"baseline failed: {base.tail()}")
        finally:
            base.stop()
        self.baseline_sent = json.loads(out.read_text())
        total = sum(len(v) for v in self.baseline_sent.values())
        _wait_for(lambda: self._received("base") >= total, 30, "the last baseline events")
        self.progress.done(f"baseline: sent {total}, received {self._received('base')}")

    def _finish(self) -> None:
        s = self.s
        r = self.http.post("_sim/bench/drive", json={"rate": s.rate, "finish": True})
        if r.status_code != 200:
            raise BenchError(f"simulator refused to finish: {r.text}")
        t0 = time.monotonic()

        def finished() -> bool:
            st = self._sim_status()
            self.progress(
                f"finish: {st['sent']} sent, {self._received('bench')} received, "
                f"{sum(st['streams'].values())} streams open"
            )
            return not st["driving"] and self._received("bench") >= st["sent"]

        _wait_for(
            finished,
            60 + 3 * s.streams / s.rate,
            "the final events",
            tick=0.5,
            on_tick=self._check_alive,
        )
        try:
            _wait_for(
                lambda: sum(self._sim_status()["streams"].values()) == 0, 30, "the streams to close"
            )
        except BenchError as exc:
            self.result.notes.append(str(exc))
        self.progress.done(f"finish: every payment completed ({time.monotonic() - t0:.1f} s)")

    def _collect(self) -> None:
        res = self.result
        dump = self.tmp / "received.json"
        if self.tills.ask(f"dump {dump}", timeout=120) != "ok":
            raise BenchError("tills could not write what they received")
        received: dict[str, list[list[Any]]] = json.loads(dump.read_text())
        sim_sent: dict[str, list[float]] = self.http.get("_sim/bench/sent").json()["data"]
        if self.s.keep:
            (self.tmp / "sent.json").write_text(json.dumps(sim_sent))

        bridge_lat: list[float] = []
        final_lat: list[float] = []
        base_lat: list[float] = []
        lost = unexpected = 0
        recv_times = []
        send_times = []
        for sent_map, into in ((sim_sent, None), (self.baseline_sent, base_lat)):
            for oid, sent in sent_map.items():
                got = received.get(oid, [])
                lost += max(0, len(sent) - len(got))
                unexpected += max(0, len(got) - len(sent))
                for t_send, (status, t_recv) in zip(sent, got, strict=False):
                    ms = (t_recv - t_send) * 1000
                    if into is not None:
                        into.append(ms)
                    elif status == "completed":
                        final_lat.append(ms)
                    else:
                        bridge_lat.append(ms)
                        send_times.append(t_send)
                        recv_times.append(t_recv)
        sent_total = sum(len(v) for v in sim_sent.values()) + sum(
            len(v) for v in self.baseline_sent.values()
        )
        recv_total = sum(len(v) for v in received.values())
        res.events_sent, res.events_received, res.events_lost = sent_total, recv_total, lost
        res.drive_events = len(bridge_lat)
        res.final_events = len(final_lat)
        res.baseline_events = len(base_lat)
        res.target_rate = self.s.rate
        if send_times:
            window = max(recv_times) - min(send_times)
            res.drive_events_per_s = len(bridge_lat) / max(window, 1e-9)
            res.implied_payments_per_s = res.drive_events_per_s / EVENTS_PER_PAYMENT
        base_window = [t for v in self.baseline_sent.values() for t in v]
        if base_window:
            res.baseline_events_per_s = len(base_window) / max(
                1e-9, max(base_window) - min(base_window) + 1 / self.s.rate
            )
        bridge, base = percentiles(bridge_lat), percentiles(base_lat)
        res.latency_ms = {
            "bridge": bridge,
            "baseline": base,
            "added": {
                k: bridge[k] - base[k]
                for k in ("p50", "p90", "p99", "max")
                if k in bridge and k in base
            },
            "final (bridge)": percentiles(final_lat),
        }
        res.ratio = {
            k: bridge[k] / base[k]
            for k in ("p50", "p90", "p99", "max")
            if k in bridge and k in base and base[k] > 0
        }
        if lost:
            res.errors.append(f"{lost} events sent and never received")
        if unexpected:
            res.errors.append(
                f"{unexpected} events received that were never sent (republished or duplicated)"
            )
        if res.streams_held < self.s.streams:
            res.errors.append(f"only {res.streams_held} of {self.s.streams} streams held")
        for err in ("Traceback", '"level": "error"', '"level":"error"'):
            if self._daemon_log_has(err):
                res.errors.append(f"the daemon logged errors (see {self.daemon.log_path})")
                break
        pauses = []
        try:
            for line in self.daemon.log_path.read_text(errors="replace").splitlines():
                if line.startswith('{"event": "bench.gc_pause"'):
                    pauses.append(json.loads(line)["ms"])
        except (OSError, ValueError):
            pass
        res.daemon_gc_pauses = {
            "count": len(pauses),
            "max_ms": max(pauses, default=0.0),
            "total_ms": round(sum(pauses), 1),
        }
        res.ok = not res.errors

    # -- profiling (optional) ---------------------------------------------------------------
    def _start_profiler(self) -> subprocess.Popen[bytes] | None:
        if not self.s.profile:
            return None
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not os.path.exists(spy):
            self.result.notes.append("--profile: py-spy not found (pip install py-spy)")
            return None
        fmt = (
            "speedscope"
            if self.s.profile.endswith(".json")
            else ("raw" if self.s.profile.endswith(".txt") else "flamegraph")
        )
        return subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(self.daemon.pid),
                "--output",
                self.s.profile,
                "--format",
                fmt,
                "--rate",
                "250",
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _stop_profiler(self, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            self.result.notes.append(f"daemon profile (drive phase): {self.s.profile}")


# -- output -------------------------------------------------------------------------------------


def table(res: Result) -> str:
    s = res.settings
    lat = res.latency_ms
    lines = [
        (
            f"pos-bridge bench: {s['transport']}, {s['streams']} streams, {s['rate']:g} events/s "
            f"for {s['duration']:g} s (baseline {s['baseline_duration']:g} s)"
        ),
        "",
        (
            f"  streams held           {res.streams_held} of {res.streams_requested}"
            f"  ({', '.join(f'{k} {v}' for k, v in res.streams_by_transport.items())}; "
            f"daemon TCP connections upstream {res.daemon_connections_to_upstream})"
        ),
        f"  payments opened        {res.payments_opened_per_s:.0f}/s  ({res.open_seconds:.1f} s)",
        (
            f"  events sent/received   {res.events_sent} / {res.events_received}  "
            f"(lost {res.events_lost}; bridge {res.drive_events} + finals {res.final_events}, "
            f"baseline {res.baseline_events})"
        ),
        (
            f"  events/s achieved      {res.drive_events_per_s:.0f}  (target {res.target_rate:g}; "
            f"baseline {res.baseline_events_per_s:.0f}) "
            f"= {res.implied_payments_per_s:.0f} payments/s "
            f"at {EVENTS_PER_PAYMENT} events each"
        ),
        "",
        "  latency ms             p50      p90      p99      max",
    ]
    for name in ("bridge", "baseline", "added", "final (bridge)"):
        row = lat.get(name, {})
        if "p50" in row:
            lines.append(
                f"  {name:<20}" + "".join(f"{row[k]:>9.2f}" for k in ("p50", "p90", "p99", "max"))
            )
    if res.ratio:
        lines.append(
            f"  {'ratio bridge/base':<20}"
            + "".join(
                f"{res.ratio.get(k, float('nan')):>9.2f}" for k in ("p50", "p90", "p99", "max")
            )
        )
    lines += [
        "",
        (
            f"  daemon RSS             {res.daemon_rss_before_mb:.1f} MB idle, "
            f"{res.daemon_rss_streams_mb:.1f} MB with the streams, "
            f"peak {res.daemon_rss_peak_mb:.1f} MB"
            f"  -> {res.daemon_kb_per_stream:.1f} KB per stream"
        ),
        (
            f"  daemon CPU             {res.daemon_cpu_s_per_1000_events:.3f} s per 1000 events "
            f"({res.daemon_cpu_utilisation * 100:.0f}% of a core while driven)"
        ),
        "  CPU while driven       "
        + ", ".join(f"{k} {v * 100:.0f}%" for k, v in res.cpu_while_driven.items())
        + " of a core",
        (
            f"  daemon GC pauses       {res.daemon_gc_pauses.get('count', 0):.0f} of 5 ms or more, "
            f"longest {res.daemon_gc_pauses.get('max_ms', 0):.0f} ms (gc: {s['gc']})"
        ),
        f"  wall time              {res.wall_seconds:.0f} s",
    ]
    for note in res.notes:
        lines.append(f"  note: {note}")
    for err in res.errors:
        lines.append(f"  ERROR: {err}")
    lines.append("  result: " + ("OK" if res.ok else "FAILED"))
    return "\n".join(lines)


def settings_from_args(args: argparse.Namespace) -> Settings:
    preset = QUICK if getattr(args, "quick", False) else DEFAULTS
    streams = args.streams if getattr(args, "streams", None) is not None else preset["streams"]
    rate = args.rate if getattr(args, "rate", None) is not None else preset["rate"]
    duration = args.duration if getattr(args, "duration", None) is not None else preset["duration"]
    base = getattr(args, "baseline_duration", None)
    s = Settings(
        transport=getattr(args, "transport", None) or "sse",
        streams=int(streams),
        rate=float(rate),
        duration=float(duration),
        baseline_duration=float(base) if base is not None else min(float(duration), 30.0),
        log_level=getattr(args, "log_level", None) or "info",
        enrich_final=not getattr(args, "no_enrich", False),
        keep=bool(getattr(args, "keep", False)),
        profile=getattr(args, "profile", None),
        gc=getattr(args, "daemon_gc", None) or "default",
    )
    if s.streams < 1 or s.streams > 99_999:
        raise UserError("--streams must be 1..99999")
    if s.rate <= 0 or s.duration <= 0 or s.baseline_duration <= 0:
        raise UserError("--rate, --duration and --baseline-duration must be > 0")
    if s.transport not in ("sse", "websocket"):
        raise UserError("--transport must be sse or websocket")
    return s


def bench_command(args: argparse.Namespace) -> int:
    if getattr(args, "faults", False):
        return faults_command(args)
    if getattr(args, "fuzz", False):
        from bridge.bench.fuzz import fuzz_command

        return fuzz_command(args)
    s = settings_from_args(args)
    progress = Progress()
    bench = Bench(s, progress)
    try:
        res = bench.run()
    except BenchError as exc:
        progress.done("")
        raise UserError(f"bench: {exc}", 1) from None
    if getattr(args, "json", False):
        print(json.dumps(asdict(res), indent=2))
    else:
        print(table(res))
    return 0 if res.ok else 1


def faults_command(args: argparse.Namespace) -> int:
    """``bench --faults``: the fault suite's scenarios, longer; exit 0 only if nothing was lost,
    duplicated or contradicted."""
    from bridge.bench import faults

    if args.rounds < 1 or args.terminals < 1:
        raise UserError("bench --faults: --rounds and --terminals must be at least 1")
    kinds = tuple(args.scenario or faults.KINDS)
    reports = faults.run_all(kinds, args.rounds, args.terminals)
    if getattr(args, "json", False):
        print(json.dumps([r.as_dict() for r in reports], indent=2))
    else:
        print(faults.table(reports))
        for r in reports:
            for problem in r.audit.problems[:10]:
                print(f"  {r.scenario}: {problem}")
    return 0 if all(r.audit.clean for r in reports) else 1
