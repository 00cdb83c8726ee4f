"""``pos-bridge bench``: the bridge under load, against a baseline measured in the same run.

Each part runs in its own process: a private ``redis-server``, the simulator
(:mod:`bridge.bench.simproc`), the daemon (``pos-bridge run`` with a generated config), the
tills (:mod:`bridge.bench.tills`, one ``PSUBSCRIBE`` over every terminal channel) and, for the
floor, :mod:`bridge.bench.baseline`. The run:

1. opens N payments on ``SIM-BENCH-*`` terminals (``pay`` commands on Redis, as tills send
   them): N upstream streams held by the daemon, which stay open;
1b. hold: nothing happens for a while (the daemon polls quiet orders at its defaults): what
   holding a payment costs;
2. drive: the simulator changes M order statuses per second round robin over them for the
   duration (``initialized``, ``declined``, ``initialized``, ...: each a distinct transition),
   recording the monotonic time each is written to its stream;
3. baseline: the same number of orders and rate applied straight into Redis with the same core
   decision and Lua transition, the daemon idle (its streams still open);
4. finish: every payment gets its final ``completed`` at the same rate; the streams close.

Latency is the tills' receipt time minus the send time (``time.monotonic()`` is system-wide on
Linux); each received event is paired with the send that caused it (:mod:`bridge.bench.pairing`).
Any event sent and not received, or received twice, is an error (exit 1).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import redis

from bridge.bench.analysis import analyse, gc_pauses
from bridge.bench.child import BenchError, Child, Progress, wait_for
from bridge.bench.procs import connections_to, cpu_seconds, raise_nofile, rss_bytes
from bridge.bench.profiler import profiling
from bridge.bench.report import Result, cpu_per_payment, table
from bridge.bench.settings import (
    OPEN_AHEAD,
    OPEN_STALL,
    ORDER,
    PREFIX,
    TERMINAL,
    Settings,
    daemon_argv,
    daemon_config,
    settings_from_args,
)
from bridge.errors import UserError
from bridge.redis.keys import Keys
from bridge.redis.server import RedisServer
from bridge.simulator.certs import LocalCa, make_local_ca

#: Seconds a bridge has, once the driven changes are sent, to publish the last of them.
DRAIN_WAIT = 30.0


class Bench:
    def __init__(self, s: Settings, progress: Progress) -> None:
        self.s = s
        self.progress = progress
        self.result = Result(settings=asdict(s))
        self.tmp = Path(tempfile.mkdtemp(prefix="pos-bridge-bench-"))
        self.py = sys.executable
        self.open_failed = 0
        self.ca: LocalCa | None = None  # with --tls: the run's CA (_local_ca)

    def _remove_tmp_unless_failed(self, exc_type: type[BaseException] | None, *_: object) -> None:
        """The logs of a failed run (its errors name ``daemon.log``) stay to be read."""
        if exc_type is None and self.result.ok and not self.result.errors:
            shutil.rmtree(self.tmp, True)
        else:
            print(f"pos-bridge bench: logs kept in {self.tmp}", file=sys.stderr)

    def run(self) -> Result:
        t_start = time.monotonic()
        raise_nofile()  # inherited by every child
        with ExitStack() as stack:
            if not self.s.keep:
                stack.push(self._remove_tmp_unless_failed)
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

            self.ca = self._local_ca()
            sim_argv = [self.py, "-m", "bridge.bench.simproc"]
            if self.ca is not None:
                server = self.ca.server
                sim_argv += ["--tls-cert", str(server.cert_file), "--tls-key", str(server.key_file)]
            self.sim = Child("simulator", sim_argv, self.tmp)
            stack.callback(self.sim.stop)
            base_url = self.sim.readline(30)
            self.sim_root = base_url.removesuffix("v1/json/")
            self.sim_port = int(base_url.split(":")[2].split("/")[0])
            trust = ssl.create_default_context(cafile=str(self.ca.ca_file)) if self.ca else True
            self.http = httpx.Client(base_url=self.sim_root, timeout=60, verify=trust)
            stack.callback(self.http.close)
            wait_for(self._sim_up, 30, "the simulator")

            cfg = self.tmp / "config.toml"
            ca_file = self.ca.ca_file if self.ca is not None else None
            cfg.write_text(daemon_config(rs.url, base_url, self.s, ca_file))
            self.api_base_url = base_url
            self.daemon = self._start_daemon(cfg)
            stack.callback(self.daemon.stop)
            # Ready once its intake reads the commands stream: a marker in Redis, not a log
            # line, so any --log-level works.
            wait_for(self._daemon_reading, 60, "the daemon to start", on_tick=self._check_alive)
            time.sleep(0.5)
            self.result.daemon_rss_before_mb = rss_bytes(self.daemon.pid) / 2**20

            pid, notes = self.daemon.pid, self.result.notes
            with profiling(self.s.profile, "open", pid, notes):
                self._open_streams()
            with profiling(self.s.profile, "hold", pid, notes):
                self._hold()
            with profiling(self.s.profile, "drive", pid, notes):
                self._drive()
            self._baseline()
            with profiling(self.s.profile, "close", pid, notes):
                self._finish()
            self._collect()
        self.result.wall_seconds = time.monotonic() - t_start
        return self.result

    # -- plumbing ---------------------------------------------------------------------------
    def _local_ca(self) -> LocalCa | None:
        """With ``--tls``, the run's throwaway CA and the simulator's certificate, in its tmp."""
        if not self.s.tls:
            return None
        try:
            return make_local_ca(self.tmp)
        except RuntimeError as exc:
            raise BenchError(f"--tls: {exc}") from None

    def trust_env(self) -> dict[str, str]:
        """The environment that makes a child trust the run's CA (for the SDK peer: Python's
        ``ssl`` defaults, and requests, which otherwise trusts only certifi's bundle)."""
        if self.ca is None:
            return {}
        return {"SSL_CERT_FILE": str(self.ca.ca_file), "REQUESTS_CA_BUNDLE": str(self.ca.ca_file)}

    def _start_daemon(self, cfg: Path) -> Child:
        return Child("daemon", daemon_argv(self.py, cfg, self.s), self.tmp)

    def _sim_up(self) -> bool:
        try:
            return self.http.get("_sim/bench/status").status_code == 200
        except httpx.HTTPError:
            return False

    def _sim_status(self) -> dict[str, Any]:
        data: dict[str, Any] = self.http.get("_sim/bench/status").json()["data"]
        return data

    def _daemon_reading(self) -> bool:
        try:
            groups = self.r.xinfo_groups(Keys(PREFIX).commands)
        except redis.ResponseError:  # no such key yet
            return False
        return any(g.get("consumers", 0) >= self.s.workers for g in groups)

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
    def _send_pays(self, start: int, stop: int) -> None:
        keys = Keys(PREFIX)
        pipe = self.r.pipeline(transaction=False)
        for i in range(start, stop):
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
        pipe.execute()

    def _open_streams(self) -> None:
        n = self.s.streams
        cpu0 = cpu_seconds(self.daemon.pid)
        t0 = time.monotonic()
        # Pays are sent as the daemon takes them, at most OPEN_AHEAD unanswered: all at once,
        # the last would wait in the stream longer than a till's customer does (a pay older
        # than 5 minutes is refused, as the contract says) whenever opening takes that long.
        # Up to OPEN_AHEAD go in one pipelined write: the daemon, not the tills, sets the pace.
        sent = min(n, OPEN_AHEAD)
        self._send_pays(0, sent)
        seen = {"held": -1, "at": t0}
        last: dict[str, Any] = {}

        def opened() -> bool:
            nonlocal sent
            st = last["st"] = self._sim_status()
            held = sum(st["streams"].values())
            counts = self._counts().get("bench", {})
            created, failed = counts.get("order.created", 0), counts.get("order.failed", 0)
            if sent < n and sent - created - failed < OPEN_AHEAD // 2:
                more = min(n, created + failed + OPEN_AHEAD)
                self._send_pays(sent, more)
                sent = more
            now = time.monotonic()
            self.progress(
                f"opening streams: {held}/{n} held, {created} orders created, {failed} failed "
                f"({now - t0:.0f} s)"
            )
            if held != seen["held"]:
                seen.update(held=held, at=now)
            elif now - seen["at"] > OPEN_STALL:
                raise BenchError(
                    f"no stream opened for {OPEN_STALL:.0f} s ({held} of {n} held, "
                    f"{created} orders created, {failed} pay commands failed)"
                )
            self.open_failed = failed
            return bool(held + failed >= n)

        wait_for(opened, 3600, f"{n} streams to open", tick=0.1, on_tick=self._check_alive)
        res = self.result
        # From the first command sent to the last stream the simulator saw open (its clock
        # and ours are the same system-wide monotonic one): not rounded up to a tick of this
        # loop, which at a few hundred payments was most of the figure.
        st = last["st"]
        opened_at = st.get("last_open_at") or time.monotonic()
        res.open_seconds = max(1e-9, opened_at - t0)
        res.payments_opened_per_s = st.get("streams_opened", n) / res.open_seconds
        # Each opened stream is followed by one GET (what happened before it opened): let those
        # land, so the opening's CPU and events are all counted here.
        if self.open_failed:
            res.errors.append(f"{self.open_failed} of {n} pay commands failed (order.failed)")
        wait_for(
            lambda: self._received("bench") >= n - self.open_failed,
            30 + n / 100,
            "the status reported at opening",
            tick=0.05,
        )
        self.open_cpu_ms = (cpu_seconds(self.daemon.pid) - cpu0) * 1000 / n
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

    def _hold(self) -> None:
        """Nothing happens for ``hold`` seconds: what holding quiet payments costs (polling)."""
        cpu0, t0 = cpu_seconds(self.daemon.pid), time.monotonic()
        while (el := time.monotonic() - t0) < self.s.hold:
            self.progress(f"holding {self.s.streams} quiet payments: {el:.0f}/{self.s.hold:g} s")
            self._check_alive()
            time.sleep(min(0.5, max(0.0, self.s.hold - el)))
        el = time.monotonic() - t0
        self.hold_cpu_ms_per_minute = (
            (cpu_seconds(self.daemon.pid) - cpu0) * 1000 * 60 / max(el, 1e-9) / self.s.streams
        )
        self.progress.done(f"held {self.s.streams} quiet payments for {el:.0f} s")
        self.unprompted = self._received("bench")  # the statuses published at opening (GET)

    def _drive(self) -> None:
        s, res = self.s, self.result
        pids = {
            "daemon": self.daemon.pid,
            "simulator": self.sim.pid,
            "redis": self.redis_pid,
            "tills": self.tills.pid,
        }
        cpus0 = {k: cpu_seconds(p) for k, p in pids.items()}
        r = self.http.post("_sim/bench/drive", json={"rate": s.rate, "duration": s.duration})
        if r.status_code != 200:
            raise BenchError(f"simulator refused to drive: {r.text}")
        t0 = time.monotonic()
        last_sample = 0.0
        while True:
            time.sleep(0.5)
            st = self._sim_status()
            got = self._received("bench") - self.unprompted
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
        delivered = self._drained(
            lambda: self._received("bench") - self.unprompted, sent, DRAIN_WAIT, "driven events"
        )
        used = cpu_seconds(self.daemon.pid) - cpus0["daemon"]
        # Per event delivered: a bridge that fell behind spent its CPU on fewer events.
        self.event_cpu_ms = used * 1000 / max(1, delivered)
        res.daemon_cpu_s_per_1000_events = self.event_cpu_ms
        el = max(1e-9, time.monotonic() - t0)
        res.daemon_cpu_utilisation = used / el
        res.cpu_while_driven = {
            k: round((cpu_seconds(p) - cpus0[k]) / el, 3) for k, p in pids.items()
        }
        self._sample_daemon()
        res.daemon_connections_to_upstream = max(
            res.daemon_connections_to_upstream, connections_to(self.daemon.pid, self.sim_port)
        )
        self.progress.done(f"bridge: sent {sent}, received {delivered}")

    def _drained(self, received: Callable[[], int], sent: int, wait: float, what: str) -> int:
        """Waits up to ``wait`` s for ``sent`` events to be received; returns how many were.
        A bridge that falls behind (the SDK peer's thread per payment, at 1,000 events/s on
        a small machine) is a figure, not the end of the run: the shortfall is an error of
        this result, and the run goes on to measure the rest."""
        try:
            wait_for(lambda: received() >= sent, wait, what, tick=0.2, on_tick=self._check_alive)
        except BenchError:
            got = received()
            self.result.errors.append(
                f"fell behind: {got} of {sent} {what} received {wait:.0f} s after they were sent"
            )
            return got
        return sent

    def _baseline(self) -> None:
        s = self.s
        out = self.tmp / "baseline.json"
        argv = [self.py, "-m", "bridge.bench.baseline", "--redis-url", self.redis_url]
        argv += ["--prefix", PREFIX, "--orders", str(s.streams), "--rate", str(s.rate)]
        argv += ["--duration", str(s.baseline_duration), "--out", str(out)]
        base = Child("baseline", argv, self.tmp)
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
        wait_for(lambda: self._received("base") >= total, 30, "the last baseline events")
        self.progress.done(f"baseline: sent {total}, received {self._received('base')}")

    def _finish(self) -> None:
        s = self.s
        cpu0 = cpu_seconds(self.daemon.pid)
        r = self.http.post("_sim/bench/drive", json={"rate": s.rate, "finish": True})
        if r.status_code != 200:
            raise BenchError(f"simulator refused to finish: {r.text}")
        t0 = time.monotonic()

        def finished() -> bool:
            st = self._sim_status()
            got = self._received("bench") - self.unprompted
            self.progress(
                f"finish: {st['sent']} sent, {got} received, "
                f"{sum(st['streams'].values())} streams open"
            )
            return not st["driving"] and got >= st["sent"]

        behind = False
        try:
            wait_for(
                finished,
                60 + 3 * s.streams / s.rate,
                "the final events",
                tick=0.5,
                on_tick=self._check_alive,
            )
        except BenchError as exc:  # fell behind: the finals not received are counted lost
            behind = True
            self.result.errors.append(f"fell behind at the finish: {exc}")
        try:
            wait_for(
                lambda: sum(self._sim_status()["streams"].values()) == 0, 30, "the streams to close"
            )
        except BenchError as exc:
            self.result.notes.append(str(exc))
        time.sleep(0.5)  # the sessions end (lease, registry) after their final
        self.close_cpu_ms = (cpu_seconds(self.daemon.pid) - cpu0) * 1000 / s.streams
        done = "not every final received" if behind else "every payment completed"
        self.progress.done(f"finish: {done} ({time.monotonic() - t0:.1f} s)")

    def _collect(self) -> None:
        res = self.result
        dump = self.tmp / "received.json"
        if self.tills.ask(f"dump {dump}", timeout=120) != "ok":
            raise BenchError("tills could not write what they received")
        received = json.loads(dump.read_text())
        sim_sent = self.http.get("_sim/bench/sent").json()["data"]
        if self.s.keep:
            (self.tmp / "sent.json").write_text(json.dumps(sim_sent))
        analyse(res, self.s.rate, sim_sent, self.baseline_sent, received)
        res.cpu_ms_per_payment = cpu_per_payment(
            self.open_cpu_ms, self.hold_cpu_ms_per_minute, self.event_cpu_ms, self.close_cpu_ms
        )
        if res.streams_held < self.s.streams:
            res.errors.append(f"only {res.streams_held} of {self.s.streams} streams held")
        for err in ("Traceback", '"level": "error"', '"level":"error"'):
            if self._daemon_log_has(err):
                res.errors.append(f"the daemon logged errors (see {self.daemon.log_path})")
                break
        res.daemon_gc_pauses = gc_pauses(self.daemon.log_path)
        if self.s.workers > 1:
            res.notes.append("GC pauses: the supervisor's only (its workers are not watched)")
        res.ok = not res.errors


def bench_command(args: argparse.Namespace) -> int:
    if getattr(args, "faults", False):
        return faults_command(args)
    if getattr(args, "redis_failover", False):
        from bridge.bench.redis_failover import redis_failover_command

        return redis_failover_command(args)
    if getattr(args, "cluster_failover", False):
        from bridge.bench.cluster_faults import cluster_failover_command

        return cluster_failover_command(args)
    if getattr(args, "soak", None) is not None:
        from bridge.bench.soak import soak_command

        return soak_command(args)
    if getattr(args, "fuzz", False):
        from bridge.bench.fuzz import fuzz_command

        return fuzz_command(args)
    s = settings_from_args(args)
    # SIGTERM unwinds like Ctrl-C, so the children (redis, simulator, daemon) are stopped too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
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
    kinds = tuple(args.scenario or faults.default_kinds())
    reports = faults.run_all(kinds, args.rounds, args.terminals)
    if getattr(args, "json", False):
        print(json.dumps([r.as_dict() for r in reports], indent=2))
    else:
        print(faults.table(reports))
        for r in reports:
            for problem in r.audit.problems[:10]:
                print(f"  {r.scenario}: {problem}")
    return 0 if all(r.clean for r in reports) else 1
