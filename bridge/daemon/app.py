"""The daemon: one task group for its lifetime, holding the command intake and the sessions.

Shutdown is designed: SIGTERM (or SIGINT) stops reading commands, waits for the commands in
progress, gives the payments in flight ``[daemon].shutdown_grace`` seconds to reach their final
event, then stops their sessions and releases their leases: they stay in the Redis registry and
another daemon (or the next start) takes them over at once.
SIGHUP reloads what can be reloaded (log level, terminal groups and keys).
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

import anyio
import httpx
import structlog
from anyio.abc import TaskGroup, TaskStatus
from redis.asyncio import Redis

from bridge import logs, metrics
from bridge.config import Config, ConfigError
from bridge.daemon import asgi, loops, ops
from bridge.daemon.handlers import CommandHandlers
from bridge.daemon.intake import CommandIntake
from bridge.daemon.ownership import Sessions
from bridge.daemon.payment import SessionContext
from bridge.daemon.receipts import AutoReceipts, ReceiptFetcher
from bridge.daemon.terminals import TerminalDirectory
from bridge.daemon.webhooks import WebhookReceiver
from bridge.multisafepay.api import MultiSafepayApi, rest_clients
from bridge.multisafepay.rest import RestPool, proxy_configured
from bridge.redis.client import connect
from bridge.redis.keys import Keys
from bridge.redis.leases import Leases
from bridge.redis.outage import RedisWaiters
from bridge.redis.registry import SessionRegistry

log = structlog.get_logger("bridge.daemon")

REDISCOVER_EVERY = 300.0
#: The longest interval between two looks for payments nobody follows.
ORPHAN_SCAN_MAX = 1.0
#: How often remembered cancels whose pay never came are looked at (and answered).
CANCEL_SWEEP_EVERY = 1.0


class Bridge:
    def __init__(self, config: Config) -> None:
        self.config = config
        logs.register_secrets(config.secrets())  # masked in every log line from here on
        self.keys = Keys(config.redis.prefix, config.redis.layout)
        self._stop = anyio.Event()
        self.intake: CommandIntake | None = None
        self.sessions: Sessions | None = None
        self.handlers: CommandHandlers | None = None
        self.on_reload: Callable[[Config], None] | None = None
        self.directory = TerminalDirectory(config)
        self._servers_stop = anyio.Event()
        self._api: MultiSafepayApi | None = None
        self.load_config: Callable[[], Config] | None = None
        self.ops: ops.Operations | None = None  # health, metrics, systemd (ops.py)

    def request_stop(self) -> None:
        self._stop.set()

    # -- for ops.py (health, readiness, systemd STATUS/STOPPING) --------------------------------

    def health(self) -> dict[str, Any]:
        return {
            "reading": bool(self.intake is not None and self.intake.reading),
            "sessions": len(self.sessions.running) if self.sessions is not None else 0,
            "stopping": self._stop.is_set(),
        }

    def memory_sizes(self) -> dict[str, int]:
        """The lengths of what the daemon keeps per payment, terminal or input (``/memory``):
        each is bounded by the payments it follows, the config, or a documented cap."""
        sizes = {"metric_series": metrics.series(), **logs.cache_sizes()}
        if self.sessions is not None:
            sizes |= self.sessions.sizes()
        return sizes

    async def wait_stop_requested(self) -> None:
        await self._stop.wait()

    def _group_of(self, terminal_id: str) -> str | None:
        route = self.directory.route(terminal_id)
        return route[0].name if route is not None else None

    def _key_for(self, group_name: str) -> str | None:
        for group in self.config.multisafepay.terminal_groups:
            if group.name == group_name:
                return group.key.get_secret_value()
        return None

    async def run(self, *, task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        upstream = cfg.multisafepay
        async with AsyncExitStack() as stack:
            redis = connect(cfg.redis.target)
            stack.push_async_callback(redis.aclose)
            command_reader = connect(cfg.redis.target, max_connections=8, decode_responses=False)
            stack.push_async_callback(command_reader.aclose)
            # one TLS context for every client and stream (bridge/multisafepay/tls.py): one per
            # client (33 of them) cost seconds of start-up on a loaded host
            tls = upstream.tls_context
            http: Any
            if proxy_configured(upstream.api_base_url):  # httpx goes through the proxy
                http = await stack.enter_async_context(
                    rest_clients(
                        verify=tls,
                        timeout=httpx.Timeout(
                            upstream.request_timeout, connect=upstream.connect_timeout
                        ),
                        headers={"User-Agent": "pos-bridge/0.1"},
                    )
                )
            else:  # the project's own client: a tenth of httpx's CPU per call
                http = RestPool(tls=tls, connect_timeout=upstream.connect_timeout)
                stack.callback(http.close)
            store = ops.MeteredEventStore(
                redis,
                self.keys,
                stream_maxlen=cfg.redis.stream_maxlen,
                order_ttl=cfg.redis.order_ttl,
            )
            ctx = SessionContext(
                api=MultiSafepayApi(
                    http,
                    upstream.api_base_url,
                    api_key_in=upstream.api_key_in,
                    request_timeout=upstream.request_timeout,
                ),
                store=store,
                registry=SessionRegistry(redis, self.keys, ttl=cfg.redis.order_ttl),
                upstream=upstream,
                leases=Leases(
                    redis, self.keys, cfg.daemon.lease_ttl, cfg.redis.effective_consumer_name
                ),
                redis_waiters=RedisWaiters(metrics.REDIS_WAITING.set),
                tls=tls,
            )
            store.revive = ctx.leases.revive
            self._api = ctx.api
            async with anyio.create_task_group() as root:
                root.start_soon(self._watch_signals, root)  # supervised inside
                if cfg.receipts.auto:
                    auto = AutoReceipts(
                        redis,
                        ReceiptFetcher(ctx, self.directory),
                        attempts=cfg.receipts.attempts,
                        claim_ttl=cfg.redis.order_ttl,
                    )
                    store.on_published = auto.offer
                    root.start_soon(auto.run)
                loops.start(root, "rediscover", self._rediscover, ctx.api)
                # Listeners outlive the sessions: webhooks help in-flight payments finish.
                async with anyio.create_task_group() as servers:
                    try:
                        async with anyio.create_task_group() as sessions_tg:
                            self.sessions = sessions = Sessions(sessions_tg, ctx, self._key_for)
                            await self._serve(
                                servers, (redis, command_reader), ctx, sessions, task_status
                            )
                            sessions_tg.cancel_scope.cancel()
                    finally:  # the sessions left hold no task: their leases are released here
                        if self.sessions is not None:
                            await self.sessions.hand_over()
                    # Again, now that the lease renewal (which announces the presence with
                    # the leases) has stopped: one in flight during the first withdrawal set
                    # the presence again, left to lapse (a test saw it after the stop).
                    await self._withdraw(sessions)
                    self._servers_stop.set()
                root.cancel_scope.cancel()
        log.info("daemon.stopped")

    async def _serve(
        self,
        servers: TaskGroup,
        clients: tuple[Redis, Redis],
        ctx: SessionContext,
        sessions: Sessions,
        task_status: TaskStatus[Any],
    ) -> None:
        """Take commands until asked to stop, then let the sessions drain or hand them over.
        ``clients``: the daemon's Redis client, and one that reads the commands stream as bytes."""
        redis, command_reader = clients
        cfg = self.config
        self.handlers = handlers = CommandHandlers(
            cfg, redis, ctx, sessions.start, sessions.__contains__, self.directory
        )
        if cfg.webhook.enabled:
            await self._start_webhooks(servers, ctx, sessions, redis)
        self.ops = ops.Operations(self, redis, followers=[command_reader])
        await self.ops.start(servers, self._servers_stop)
        self.intake = CommandIntake(
            command_reader,
            self.keys,
            cfg.redis.effective_consumer_name,
            handlers.handle,
            give_up=handlers.give_up,
            claim_idle=cfg.redis.command_claim_idle,
            max_deliveries=cfg.redis.command_max_deliveries,
            consumer_gone=ctx.leases.presence.consumer_gone,
            claim_every=min(cfg.daemon.lease_ttl / 3, ORPHAN_SCAN_MAX),
            commands_maxlen=cfg.redis.commands_maxlen,
            max_in_flight=cfg.daemon.max_in_flight,
            waiters=ctx.redis_waiters,
        )
        with anyio.move_on_after(cfg.multisafepay.request_timeout):
            await self.directory.discover(ctx.api)  # before commands: they may name its terminals
        loops.start(servers, "cancel_sweep", self._sweep_cancels, handlers)
        resumed = await self._resume(sessions)
        sessions.keep_leases(cfg.daemon.lease_ttl / 3)
        # a gone daemon's payments are found within a second (its lease lapses, or at once
        # when its process is known dead): the silence after a kill -9 stays short
        sessions.watch_orphans(min(cfg.daemon.lease_ttl / 3, ORPHAN_SCAN_MAX), until=self._stop)
        log.info(
            "daemon.started",
            resumed_sessions=resumed,
            redis=cfg.redis.masked_url,
            api=cfg.multisafepay.api_base_url,
            consumer=cfg.redis.effective_consumer_name,
        )
        task_status.started()
        self.ops.ready()
        await self.intake.run(self._stop)
        grace = cfg.daemon.shutdown_grace
        with anyio.move_on_after(grace):
            if sessions.running:
                log.info("daemon.draining", sessions=len(sessions.running), grace_s=grace)
            await sessions.wait_idle()
        await self._withdraw(sessions)
        if sessions.running:
            log.info(
                "daemon.handing_over",
                sessions=len(sessions.running),
                note="leases released: another daemon, or the next start, continues them",
            )

    async def _sweep_cancels(self, handlers: CommandHandlers) -> None:
        """Answer the cancels whose pay never came, until the daemon stops taking commands."""
        from redis.exceptions import RedisError

        while not self._stop.is_set():
            with anyio.move_on_after(CANCEL_SWEEP_EVERY):
                await self._stop.wait()
            loops.fault_point("cancel_sweep")
            try:
                await handlers.sweep_cancels()
            except RedisError as exc:
                log.debug("cancels.sweep_skipped", error=str(exc))

    async def _rediscover(self, api: MultiSafepayApi) -> None:
        """Discovery again every few minutes: terminals come and go, and a failed listing is
        retried without waiting for a SIGHUP."""
        if not any(g.discover for g in self.config.multisafepay.terminal_groups):
            return
        while True:
            loops.fault_point("rediscover")  # before the sleep: a test need not wait minutes
            await anyio.sleep(REDISCOVER_EVERY)
            await self.directory.discover(api)

    async def _start_webhooks(
        self, tg: TaskGroup, ctx: SessionContext, sessions: Sessions, redis: Redis
    ) -> None:
        hook = self.config.webhook
        sock = asgi.listen("webhook", hook.listen, hook.host, hook.port)
        receiver = WebhookReceiver(
            lambda: self.config,
            ctx,
            sessions.nudge,
            redis=redis,
            group_of=self._group_of,
            count=lambda result: metrics.WEBHOOKS.labels(result).inc(),
        )
        tg.start_soon(
            partial(
                asgi.serve,
                name="webhook_server",
                header_timeout=hook.header_timeout,
                max_connections=hook.max_connections,
            ),
            receiver.app(),
            sock,
            self._servers_stop,
        )
        log.info(
            "webhook.listening",
            listen=hook.listen,
            paths=[hook.route(g.name) for g in self.config.multisafepay.terminal_groups],
        )

    async def _withdraw(self, sessions: Sessions) -> None:
        """A clean stop: say so, so no other daemon waits for this one's presence to lapse."""
        from redis.exceptions import RedisError

        try:
            await sessions.presence.withdraw()
        except RedisError as exc:
            log.warning("daemon.withdraw_failed", error=str(exc), note="its presence lapses")

    async def _resume(self, sessions: Sessions) -> int:
        from redis.exceptions import RedisError

        try:
            await sessions.presence.announce()  # before adopting: ours are not orphans
            return await sessions.adopt_orphans()
        except RedisError as exc:
            log.error(
                "daemon.resume_failed", error=str(exc), note="sessions resumed when Redis is back"
            )
            return 0

    async def _watch_signals(self, root: TaskGroup) -> None:
        # the receiver stays open while its loop restarts: a SIGTERM meanwhile waits in it
        # (closed, the signal's default action would kill the daemon without draining)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            await loops.supervise("signals", self._handle_signals, signals, root)

    async def _handle_signals(self, signals: AsyncIterator[int], root: TaskGroup) -> None:
        async for signum in signals:
            loops.fault_point("signals")
            if signum == signal.SIGHUP:
                await self._reload()
                continue
            if self._stop.is_set():
                log.warning("daemon.forced_stop", signal=signal.Signals(signum).name)
                root.cancel_scope.cancel()
                return
            log.info("daemon.stopping", signal=signal.Signals(signum).name)
            self._stop.set()

    async def _reload(self) -> None:
        if self.load_config is None:
            log.info("daemon.reload_skipped", reason="no config file to reload")
            return
        try:
            new = self.load_config()
        except (ConfigError, OSError) as exc:  # a bad edit must not stop a running daemon
            log.error("daemon.reload_failed", error=str(exc), note="keeping the running config")
            return
        logs.register_secrets(new.secrets())
        self.config = new
        if self.handlers is not None:
            self.handlers.config = new
        self.directory.config = new
        if self._api is not None:
            await self.directory.discover(self._api)
        if self.on_reload is not None:
            self.on_reload(new)
        log.info("daemon.reloaded", groups=[g.name for g in new.multisafepay.terminal_groups])
