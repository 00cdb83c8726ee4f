"""``pos-bridge run --workers N``: N daemon processes of one config, under a small supervisor.

Where one process's core is not enough, N daemons share the work exactly as daemons on several
hosts do: the commands stream's consumer group hands each command to one of them, and the
payments' leases say which one follows an order (a worker killed mid-payment is taken over by
another within a second, ``redis/presence.py``). The supervisor adds no protocol of its own:

- **Workers** are ``python -m bridge.cli run`` children of the same config file, each with a
  consumer name of its own, ``{consumer_name}-w{i}`` (``consumer_name``, or
  ``{host}-{supervisor pid}`` when it is empty): a restarted worker keeps its name and is a new
  incarnation, so its predecessor's leases are known dead at once. A worker's log lines carry
  ``worker=i``. A worker dies with the supervisor (``PR_SET_PDEATHSIG``).
- **Listeners**: the supervisor serves ``[http]`` itself (no worker does), describing every
  worker: ``/metrics`` sums the workers' metrics, which they keep in Prometheus' multiprocess
  files in a directory of this run (``$PROMETHEUS_MULTIPROC_DIR``, removed when the supervisor
  stops); ``/readyz`` is 200 only when every worker is ready, else 503 naming those that are not.
  Each worker reports its readiness (``/readyz``'s own rule) in its notifications every second
  (``X_POS_BRIDGE_READY``, ``X_POS_BRIDGE_REASON``); one silent for ``READINESS_STALE`` seconds
  is not ready. Chosen over scraping each worker's own HTTP port: no port per worker, counters
  stay exact across a worker's restart (its files stay; a scraped sum would drop), and the
  answers do not stop while a worker restarts. Only worker 0 serves ``[webhook]`` (no port is
  bound twice, no ``SO_REUSEPORT``); a webhook is recorded by worker 0 whichever worker follows
  its order (the transition goes through Redis either way).
- **Signals**: SIGTERM (or SIGINT) is forwarded to every worker, which drains as a single daemon
  does; the supervisor exits 0 when every worker exited 0 (a worker stopped before it was
  ready counts as clean), else 1. A second SIGTERM is forwarded too (the workers stop at once).
  SIGHUP is forwarded: each worker reloads its config.
- **Crashes**: a worker that exits while not asked to is logged (``supervisor.worker_exited``,
  error) and restarted after a backoff (1 s doubling to 30 s, reset after a minute of running).
  A worker that exits 2 (invalid configuration, a port taken) before it was ever ready stops
  the whole service with exit 2: restarting cannot fix it.
- **systemd**: each worker notifies the supervisor on a datagram socket of its own (its
  ``$NOTIFY_SOCKET``); the supervisor sends ``READY=1`` once every worker has, ``STATUS=`` with
  each worker's, ``STOPPING=1`` on SIGTERM, and pings the watchdog from its own loop. Workers
  ping the supervisor at systemd's ``WatchdogSec``: one silent for that long is killed and
  restarted. With ``KillMode=mixed`` (the shipped unit) systemd signals the supervisor only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
import structlog
from anyio.abc import Process
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.config import Config
from bridge.core.backoff import Backoff
from bridge.daemon import asgi
from bridge.daemon.notify import Notifier, watchdog_interval

log = structlog.get_logger("bridge.supervisor")

#: Set in a worker's environment: its index. ``pos-bridge run`` then logs it with every line.
WORKER_ENV = "POS_BRIDGE_WORKER"
#: Set in a worker's environment: the supervisor's PID (a worker whose parent is another is
#: orphaned; PID 1 may be the supervisor itself, in a container).
SUPERVISOR_PID_ENV = "POS_BRIDGE_SUPERVISOR_PID"

#: A worker that ran this long before it exited starts again after the shortest delay.
STABLE_AFTER = 60.0
RESTART_INITIAL = 1.0
RESTART_CAP = 30.0
STATUS_EVERY = 1.0
#: ``pos-bridge run``'s exit code for a configuration or listen error (``UserError``).
EXIT_CONFIG = 2
#: A worker whose readiness was last reported longer ago than this is not ready (hung).
READINESS_STALE = 5.0
#: In a worker's notifications: its readiness (``1``/``0``) and why.
READY_FIELD = "X_POS_BRIDGE_READY"
REASON_FIELD = "X_POS_BRIDGE_REASON"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass
class Worker:
    index: int
    sock: socket.socket
    address: str  # its $NOTIFY_SOCKET, in Linux's abstract namespace
    proc: Process | None = None
    ready: bool = False
    ever_ready: bool = False
    status: str = "starting"
    last_ping: float = field(default_factory=time.monotonic)
    exit_code: int | None = None
    #: Its readiness as it last reported it (``READY_FIELD``), the reason, and when.
    serving: bool = False
    reason: str = "starting"
    reported_at: float = 0.0

    def readiness(self, now: float) -> tuple[bool, str]:
        if self.proc is None:
            return False, "not running (restarting)"
        if not self.ready:
            return False, "starting"
        if now - self.reported_at > READINESS_STALE:
            return False, f"no readiness reported for {READINESS_STALE:g} s (hung?)"
        return self.serving, self.reason


def consumer_base(config: Config) -> str:
    return config.redis.consumer_name or f"{socket.gethostname()}-{os.getpid()}"


def worker_environ(
    environ: Mapping[str, str],
    index: int,
    base: str,
    notify_address: str,
    metrics_dir: str | None = None,
) -> dict[str, str]:
    """Worker ``index``'s environment: the supervisor's, minus systemd's notify and watchdog
    addresses (its notifications go to the supervisor), plus its consumer name and role, and
    the directory its metrics go to."""
    env = {k: v for k, v in environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_PID")}
    env["NOTIFY_SOCKET"] = notify_address
    env[WORKER_ENV] = str(index)
    env[SUPERVISOR_PID_ENV] = str(os.getpid())
    env["POS_BRIDGE__REDIS__CONSUMER_NAME"] = f"{base}-w{index}"
    env["POS_BRIDGE__HTTP__ENABLED"] = "false"  # the supervisor serves [http] for all
    if metrics_dir is not None:
        env[MULTIPROC_ENV] = metrics_dir
    if index > 0:  # only worker 0 takes webhooks: no port is bound twice
        env["POS_BRIDGE__WEBHOOK__ENABLED"] = "false"
    return env


def parse_notification(data: bytes) -> dict[str, str]:
    """``KEY=VALUE`` lines of one sd_notify datagram (anything else is dropped)."""
    text = data.decode("utf-8", "replace")
    return dict(line.split("=", 1) for line in text.split("\n") if "=" in line)


class Supervisor:
    def __init__(
        self,
        config: Config,
        config_path: str | None,
        workers: int,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = dict(os.environ if environ is None else environ)
        self.argv = [sys.executable, "-m", "bridge.cli", "run"]
        if config_path:
            self.argv += ["--config", config_path]
        self.base = consumer_base(config)
        self.notifier = Notifier.from_environ(env)
        #: systemd's watchdog timeout, which workers are held to (None: off).
        interval = watchdog_interval(env)
        self.worker_timeout = interval * 2 if interval else None
        self._environ = env
        self._tag = uuid.uuid4().hex[:12]
        self.workers = [self._new_worker(i) for i in range(workers)]
        self._stop = anyio.Event()
        self._announced = False
        self.fatal: int | None = None
        self.http = config.http
        self.metrics_dir: str | None = None
        self.started_at = time.time()

    def _new_worker(self, index: int) -> Worker:
        name = f"pos-bridge-{os.getpid()}-{self._tag}-w{index}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.bind("\0" + name)
        sock.setblocking(False)
        return Worker(index, sock, "@" + name)

    async def run(self) -> int:
        log.info("supervisor.starting", workers=len(self.workers), consumer_base=self.base)
        sock = (
            asgi.listen("http", self.http.listen, self.http.host, self.http.port)
            if (self.http.enabled)
            else None
        )  # a busy port: exit 2 now, before any worker starts
        self.metrics_dir = tempfile.mkdtemp(
            prefix="pos-bridge-metrics-", dir=self._environ.get("RUNTIME_DIRECTORY") or None
        )
        try:
            async with anyio.create_task_group() as tg:
                if sock is not None:
                    tg.start_soon(asgi.serve, self.app(), sock, anyio.Event())
                    log.info("http.listening", listen=self.http.listen, workers=len(self.workers))
                tg.start_soon(self._watch_signals)
                tg.start_soon(self.notifier.run_watchdog)
                tg.start_soon(self._report)
                for worker in self.workers:
                    tg.start_soon(self._listen, worker)
                async with anyio.create_task_group() as keepers:  # until every worker is gone
                    for worker in self.workers:
                        keepers.start_soon(self._keep, worker)
                tg.cancel_scope.cancel()
        finally:
            for worker in self.workers:
                worker.sock.close()
            self.notifier.close()
            if sock is not None:
                sock.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        if self.fatal is not None:
            return self.fatal
        codes = {w.index: w.exit_code for w in self.workers}
        clean = all(code == 0 for code in codes.values())
        log.info("supervisor.stopped", exit_codes=codes, clean=clean)
        return 0 if clean else 1

    # -- one worker ---------------------------------------------------------------------------

    async def _keep(self, worker: Worker) -> None:
        """Run ``worker`` until the supervisor stops, restarting it whenever it exits."""
        backoff = Backoff(initial=RESTART_INITIAL, cap=RESTART_CAP)
        env = worker_environ(
            self._environ, worker.index, self.base, worker.address, self.metrics_dir
        )
        while not self._stop.is_set():
            started = time.monotonic()
            worker.ready, worker.status = False, "starting"
            worker.proc = proc = await anyio.open_process(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=None,
                stderr=None,
                env=env,
                start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only
            )
            worker.last_ping = time.monotonic()
            if self._stop.is_set():  # asked to stop while it was being started
                proc.send_signal(signal.SIGTERM)
            log.info("supervisor.worker_started", worker=worker.index, pid=proc.pid)
            code = await proc.wait()
            was_ready, worker.ready, worker.proc = worker.ready, False, None
            if self.metrics_dir is not None:  # its live gauges go; its counters stay counted
                multiprocess.mark_process_dead(proc.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
            worker.exit_code = code
            if self._stop.is_set():
                # stopped by our SIGTERM before it handled signals: nothing was in flight
                if code == -signal.SIGTERM and not was_ready:
                    worker.exit_code = 0
                log.info("supervisor.worker_stopped", worker=worker.index, exit_code=code)
                return
            if code == EXIT_CONFIG and not worker.ever_ready:
                log.error("supervisor.worker_failed", worker=worker.index, exit_code=code)
                self.fatal = code
                self._begin_stop()
                return
            if time.monotonic() - started >= STABLE_AFTER:
                backoff.reset()
            delay = backoff.next()
            log.error(
                "supervisor.worker_exited",
                worker=worker.index,
                pid=proc.pid,
                exit_code=code,
                restart_in_s=round(delay, 2),
            )
            with anyio.move_on_after(delay):
                await self._stop.wait()

    async def _listen(self, worker: Worker) -> None:
        """Worker ``index``'s sd_notify messages: READY, STATUS, WATCHDOG."""
        while True:
            await anyio.wait_readable(worker.sock)
            try:
                data = worker.sock.recv(4096)
            except BlockingIOError:
                continue
            fields = parse_notification(data)
            if "STATUS" in fields:
                worker.status = " ".join(fields["STATUS"].split())
            if "WATCHDOG" in fields or "READY" in fields:
                worker.last_ping = time.monotonic()
            if READY_FIELD in fields:
                worker.serving = fields[READY_FIELD] == "1"
                worker.reason = fields.get(REASON_FIELD, "")
                worker.reported_at = time.monotonic()
            if fields.get("READY") == "1" and worker.proc is not None:
                worker.ready = worker.ever_ready = True
                log.info("supervisor.worker_ready", worker=worker.index, pid=worker.proc.pid)
                self._maybe_ready()

    def _maybe_ready(self) -> None:
        if not self._announced and all(w.ready for w in self.workers):
            self._announced = True
            self.notifier.ready(self.status_line())
            log.info("supervisor.ready", workers=len(self.workers))

    def status_line(self) -> str:
        ready = sum(w.ready for w in self.workers)
        each = "; ".join(f"w{w.index}: {w.status}" for w in self.workers)
        return f"{ready}/{len(self.workers)} workers ready; {each}"

    async def _report(self) -> None:
        """STATUS= for systemd, and the workers' watchdog."""
        while True:
            await anyio.sleep(STATUS_EVERY)
            if self._announced:
                self.notifier.status(self.status_line())
            timeout = self.worker_timeout
            if timeout is None or self._stop.is_set():
                continue
            for w in self.workers:
                if w.proc is not None and w.ready and time.monotonic() - w.last_ping > timeout:
                    log.error("supervisor.worker_hung", worker=w.index, pid=w.proc.pid)
                    w.ready = False  # killed once; restarted when its exit is seen
                    w.proc.kill()

    # -- HTTP: every worker's readiness and metrics -------------------------------------------

    def readiness(self) -> tuple[bool, str, list[dict[str, object]]]:
        now = time.monotonic()
        each = []
        for w in self.workers:
            ready, reason = w.readiness(now)
            each.append({"worker": w.index, "ready": ready, "reason": reason})
        if self._stop.is_set():
            return False, "stopping", each
        not_ready = [f"worker {e['worker']}: {e['reason']}" for e in each if not e["ready"]]
        return not not_ready, "; ".join(not_ready) or "ok", each

    def render_metrics(self) -> bytes:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.metrics_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def app(self) -> Starlette:
        async def healthz(_request: Request) -> Response:
            uptime = round(time.time() - self.started_at, 1)
            return JSONResponse({"status": "alive", "uptime_s": uptime, "supervisor": True})

        async def readyz(_request: Request) -> Response:
            ready, reason, workers = self.readiness()
            body = {"ready": ready, "reason": reason, "workers": workers}
            return JSONResponse(body, status_code=200 if ready else 503)

        async def metrics_(_request: Request) -> Response:
            data = await anyio.to_thread.run_sync(self.render_metrics)  # reads files
            return Response(data, media_type=CONTENT_TYPE_LATEST)

        return Starlette(
            routes=[
                Route("/healthz", healthz, methods=["GET"]),
                Route("/readyz", readyz, methods=["GET"]),
                Route("/metrics", metrics_, methods=["GET"]),
            ]
        )

    # -- signals ------------------------------------------------------------------------------

    def _begin_stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self.notifier.stopping(f"stopping; {self.status_line()}")
        self._forward(signal.SIGTERM)

    def _forward(self, signum: signal.Signals) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.returncode is None:
                worker.proc.send_signal(signum)

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    log.info("supervisor.reload", note="SIGHUP forwarded to every worker")
                    self._forward(signal.SIGHUP)
                    continue
                log.info("supervisor.stopping", signal=name, again=self._stop.is_set())
                self._begin_stop()
