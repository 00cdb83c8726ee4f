"""Running as a service: health, readiness, metrics and systemd notifications.

``Operations`` lives in the daemon's task group beside the sessions:

- a **Redis probe** (one round trip every second: Redis's own health, ``bridge.redis.health``,
  which node is master, failovers seen, replicas; the commands queue's depth every
  ``QUEUE_DEPTH_EVERY`` and at each ``/metrics`` scrape): readiness, the
  ``pos_bridge_redis_*`` metrics and systemd's ``STATUS=`` line all follow it;
- the **HTTP endpoints** on ``[http].listen`` (when ``[http].enabled``), a Starlette app served
  by uvicorn inside the task group (uvicorn's signal handling off: the daemon owns signals):
  ``/healthz`` 200 while the event loop answers; ``/readyz`` 200 when Redis is reachable and
  commands are being read, else 503 with the reason in JSON; ``/metrics`` in Prometheus' text
  format (``bridge.metrics``); ``/memory`` the process's RSS, Python object counts by type and
  the sizes of the daemon's bounded structures (``bridge.daemon.memory``), for a leak hunt;
- **systemd notifications** (``bridge.daemon.notify``): ``READY=1`` once the daemon runs
  (config loaded, listeners bound; not waiting for Redis, whose outage it survives),
  ``STATUS=`` when it changes, ``WATCHDOG=1`` from the event loop, ``STOPPING=1`` on shutdown.

``MeteredEventStore`` counts every published event at the one place all of them pass.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import structlog
from redis.exceptions import RedisError, ResponseError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge import metrics
from bridge.daemon import asgi, loops, supervisor
from bridge.daemon.memory import MemoryReport
from bridge.daemon.notify import Notifier
from bridge.redis.client import BridgeRedis, follow_master
from bridge.redis.health import RedisHealth
from bridge.redis.keys import COMMANDS_GROUP
from bridge.redis.publisher import EventStore, Recorded

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from anyio.abc import TaskGroup
    from redis.asyncio import Redis

    from bridge.config import Config
    from bridge.core.events import Event
    from bridge.redis.keys import Keys

log = structlog.get_logger("bridge.ops")

PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 2.0
#: The commands queue's depth (a gauge) is asked for at most this often by the probe, and at
#: each scrape of ``/metrics``: a round trip a second for a figure read every 15 s or so.
QUEUE_DEPTH_EVERY = 5.0
#: STATUS= is sent when it changes (looked at this often), and again at least every STATUS_REFRESH.
STATUS_CHECK = 0.5
STATUS_REFRESH = 30.0
#: A worker of ``run --workers N`` tells its supervisor its readiness at least this often.
READINESS_EVERY = 1.0


class Watched(Protocol):
    """What operations need of the daemon they watch (``daemon.app.Bridge``, which builds them):
    the layer above is named by what it offers, not imported."""

    @property
    def config(self) -> Config: ...

    @property
    def keys(self) -> Keys: ...

    def health(self) -> dict[str, Any]: ...

    def memory_sizes(self) -> dict[str, int]: ...

    async def wait_stop_requested(self) -> None: ...


class MeteredEventStore(EventStore):
    """The event store, counting what it publishes (``pos_bridge_events_published_total``)
    and the delay since upstream receipt (``pos_bridge_publish_delay_seconds``)."""

    #: Told what each commit published, once it is committed (automatic receipts); must not
    #: block: the commit's caller (a final being published) is waiting.
    on_published: Callable[[tuple[Event, ...]], None] | None = None

    async def record(self, *args: Any, **kwargs: Any) -> Recorded:
        recorded = await super().record(*args, **kwargs)
        metrics.count_published(recorded.published)
        if self.on_published is not None and recorded.published:
            self.on_published(recorded.published)
        return recorded

    async def announce(self, event: Event, *args: Any, **kwargs: Any) -> str | None:
        stream_id = await super().announce(event, *args, **kwargs)
        if stream_id:
            metrics.count_published((event,))
        return stream_id


class RedisProbe:
    """Is Redis reachable? One round trip every ``interval`` seconds, bounded by ``timeout``:
    ``INFO replication`` (Redis's health, which answering proves it reachable), or ``PING``
    where an ACL refuses ``INFO``."""

    def __init__(
        self,
        redis: Redis,
        commands_key: str,
        *,
        interval: float = PROBE_INTERVAL,
        timeout: float = PROBE_TIMEOUT,
        followers: Sequence[Redis] = (),
    ) -> None:
        self._redis = redis
        #: Other clients of the daemon moved to a new master with the probed one (the command
        #: reader only reads: nothing else would tell it before the old master is demoted).
        self._followers = followers
        self._commands_key = commands_key
        self.interval = interval
        self.timeout = timeout
        self.ok: bool | None = None  # None: not probed yet
        self.error: str | None = None
        self.changed_at = time.time()
        self.health = RedisHealth(redis, commands_key)
        self._health_refused = False
        self._depth_at: float | None = None  # when the queue depth was last asked (monotonic)

    async def run(self) -> None:
        while True:
            await anyio.sleep(self.interval)
            loops.fault_point("redis_probe")
            await self.check()

    async def check(self) -> bool:
        try:
            with anyio.fail_after(self.timeout):
                await self._check_health()
                for client in self._followers:
                    if isinstance(client, BridgeRedis) and client.sentinels is not None:
                        await follow_master(client)
            ok, error = True, None
        except TimeoutError:
            ok, error = False, f"no answer from Redis within {self.timeout:g} s"
        except (RedisError, OSError) as exc:
            ok, error = False, str(exc) or type(exc).__name__
        if ok != self.ok:
            self.changed_at = time.time()
        self.ok, self.error = ok, error
        metrics.REDIS_OUTAGE.set(0 if ok else 1)
        now = time.monotonic()
        if ok and (self._depth_at is None or now - self._depth_at >= QUEUE_DEPTH_EVERY):
            await self.queue_depth()
        return ok

    async def _check_health(self) -> None:
        """Which node is master and failovers (``RedisHealth``). Refused (an ACL without
        ``INFO``) is said once and left unknown, and Redis is then asked ``PING`` instead."""
        if self._health_refused:
            await self._redis.ping()
            return
        try:
            await self.health.check()
        except ResponseError as exc:
            self._health_refused = True
            log.warning("redis.health_unknown", error=str(exc) or type(exc).__name__)
            await self._redis.ping()

    async def queue_depth(self) -> None:
        """The commands queue's depth and pending count into their gauges (errors left to
        the next probe)."""
        self._depth_at = time.monotonic()
        try:
            with anyio.move_on_after(self.timeout):
                groups = await self._redis.xinfo_groups(self._commands_key)
                group = next((g for g in groups if g.get("name") == COMMANDS_GROUP), None)
                lag = group.get("lag") if group else 0
                if lag is not None:  # None: Redis cannot tell (after XDEL); keep the last value
                    metrics.COMMAND_QUEUE_DEPTH.set(int(lag))
                metrics.COMMANDS_PENDING.set(int(group.get("pending") or 0) if group else 0)
        except ResponseError:  # no commands stream yet
            metrics.COMMAND_QUEUE_DEPTH.set(0)
            metrics.COMMANDS_PENDING.set(0)
        except (RedisError, OSError):
            pass  # the next probe says what is wrong


class Operations:
    """Health, readiness, metrics and systemd notifications of one running ``Bridge``."""

    def __init__(
        self,
        bridge: Watched,
        redis: Redis,
        *,
        environ: Mapping[str, str] | None = None,
        probe_interval: float = PROBE_INTERVAL,
        followers: Sequence[Redis] = (),
    ) -> None:
        self.bridge = bridge
        self.probe = RedisProbe(
            redis, bridge.keys.commands, interval=probe_interval, followers=followers
        )
        self.notifier = Notifier.from_environ(environ)
        #: Under ``run --workers N``: the supervisor serves /readyz for all, from what each
        #: worker reports here (``supervisor.READY_FIELD``).
        self.supervised = supervisor.WORKER_ENV in (os.environ if environ is None else environ)
        self.started_at = time.time()
        self.port: int | None = None  # the HTTP port, once bound
        self.memory = MemoryReport(bridge.memory_sizes)

    # -- state ------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): ready when Redis is reachable and commands are being read."""
        health = self.bridge.health()
        if health["stopping"]:
            return False, "stopping"
        if self.probe.ok is None:
            return False, "starting: Redis not checked yet"
        if not self.probe.ok:
            return False, f"redis unreachable: {self.probe.error}"
        redis = self.probe.health
        if redis.role not in (None, "master"):
            return False, f"redis node {redis.master} is a {redis.role}, not the master"
        if not health["reading"]:
            return False, "not reading commands (starting, or retrying after a Redis error)"
        return True, "ok"

    def status_line(self) -> str:
        health = self.bridge.health()
        sessions = health["sessions"]
        count = f"{sessions} session{'' if sessions == 1 else 's'} active"
        if health["stopping"]:
            return f"stopping: {count}"
        if self.probe.ok is None:
            redis = "Redis not checked yet"
        elif self.probe.ok:
            redis = "Redis reachable"
        else:
            since = time.strftime("%H:%M:%S", time.localtime(self.probe.changed_at))
            redis = f"Redis unreachable since {since}"
        reading = ", reading commands" if health["reading"] and self.probe.ok else ""
        master = self.probe.health.master if self.probe.ok else None
        return f"{redis}{reading}, {count}" + (f" (Redis master {master})" if master else "")

    def redis_health(self) -> dict[str, Any]:
        """Redis's own health at the last probe: master, role, replicas, failovers seen."""
        return self.probe.health.as_dict()

    def refresh_gauges(self) -> None:
        metrics.SESSIONS_ACTIVE.set(self.bridge.health()["sessions"])

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, tg: TaskGroup, stop: anyio.Event) -> None:
        """Bind ``[http].listen`` (a busy port is a clear error now, before READY) and start
        the probe, the watchdog, the STATUS updates and the HTTP server in ``tg``, until
        ``stop`` is set. Redis is probed once first (not waited for: its outage is survived)."""
        await self.probe.check()  # one probe (bounded by its timeout): READY's STATUS is right
        http = self.bridge.config.http
        if http.enabled:
            sock = asgi.listen("http", http.listen, http.host, http.port)
            self.port = sock.getsockname()[1]
            tg.start_soon(asgi.serve, self.app(), sock, stop)
            log.info(
                "http.listening",
                listen=f"{http.host}:{self.port}",
                paths=["/healthz", "/readyz", "/metrics", "/memory"],
            )
        tg.start_soon(self._background, stop)

    def ready(self) -> None:
        """The daemon runs: tell systemd (``READY=1``)."""
        self.notifier.ready(self.status_line())
        if self.notifier.enabled:
            log.info("systemd.ready", watchdog_s=self.notifier.watchdog_interval)

    async def _background(self, stop: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:
            loops.start(tg, "redis_probe", self.probe.run)
            loops.start(tg, "watchdog", self.notifier.run_watchdog)
            if self.notifier.enabled or self.supervised:  # else nobody to tell: no wake-ups
                loops.start(tg, "status_report", self._report_status)
            loops.start(tg, "stopping_report", self._report_stopping)
            await stop.wait()
            tg.cancel_scope.cancel()
        self.notifier.close()

    async def _report_status(self) -> None:
        last_forced = last_readiness = time.monotonic()
        readiness: tuple[bool, str] | None = None
        while True:
            await anyio.sleep(STATUS_CHECK)
            loops.fault_point("status_report")
            self.refresh_gauges()
            force = time.monotonic() - last_forced >= STATUS_REFRESH
            if force:
                last_forced = time.monotonic()
            self.notifier.status(self.status_line(), force=force)
            if self.supervised:
                now = self.readiness()
                if now != readiness or time.monotonic() - last_readiness >= READINESS_EVERY:
                    readiness, last_readiness = now, time.monotonic()
                    self.notifier.send(
                        f"{supervisor.READY_FIELD}={int(now[0])}",
                        f"{supervisor.REASON_FIELD}={' '.join(now[1].split())}",
                    )

    async def _report_stopping(self) -> None:
        await self.bridge.wait_stop_requested()
        self.notifier.stopping(self.status_line())

    # -- HTTP -------------------------------------------------------------------------------

    def app(self) -> Starlette:
        async def healthz(_request: Request) -> Response:
            # Answered from the event loop: if it answers, the loop is alive.
            return JSONResponse(
                {"status": "alive", "uptime_s": round(time.time() - self.started_at, 1)}
            )

        async def readyz(_request: Request) -> Response:
            ready, reason = self.readiness()
            body: dict[str, Any] = {
                "ready": ready,
                "reason": reason,
                "redis": self.probe.ok,
                "redis_health": self.redis_health(),
                "sessions": self.bridge.health()["sessions"],
            }
            return JSONResponse(body, status_code=200 if ready else 503)

        async def metrics_(_request: Request) -> Response:
            self.refresh_gauges()
            if self.probe.ok:
                await self.probe.queue_depth()
            return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

        async def memory(_request: Request) -> Response:
            return JSONResponse(self.memory.get())

        return Starlette(
            routes=[
                Route("/healthz", healthz, methods=["GET"]),
                Route("/readyz", readyz, methods=["GET"]),
                Route("/metrics", metrics_, methods=["GET"]),
                Route("/memory", memory, methods=["GET"]),
            ]
        )
