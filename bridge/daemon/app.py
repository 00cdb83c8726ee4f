"""The daemon: one task group for its lifetime, holding the command intake and the sessions.

Shutdown is designed: SIGTERM (or SIGINT) stops reading commands, waits for the commands in
progress, gives the payments in flight ``SHUTDOWN_GRACE`` seconds to reach their final event,
then stops their sessions; they stay in the Redis registry and the next start resumes them.
SIGHUP reloads what can be reloaded (log level, terminal groups and keys).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import httpx
import structlog
from anyio.abc import TaskGroup, TaskStatus

from bridge.config import Config
from bridge.core.state import OrderState
from bridge.daemon.handlers import CommandHandlers
from bridge.daemon.intake import CommandIntake
from bridge.daemon.session import PaymentSession, SessionContext
from bridge.multisafepay.api import MultiSafepayApi
from bridge.redis.client import connect
from bridge.redis.keys import Keys
from bridge.redis.publisher import EventStore
from bridge.redis.sessions import SessionRecord, SessionRegistry

log = structlog.get_logger("bridge.daemon")

SHUTDOWN_GRACE = 10.0


class Sessions:
    """The payments this daemon follows, each a task in the sessions' task group."""

    def __init__(self, tg: TaskGroup, ctx: SessionContext, key_for: Callable[[str], str | None]) -> None:
        self._tg = tg
        self._ctx = ctx
        self._key_for = key_for
        self.running: dict[str, PaymentSession] = {}
        self._idle = anyio.Event()
        self._idle.set()

    def __contains__(self, order_id: str) -> bool:
        return order_id in self.running

    async def start(self, record: SessionRecord, state: OrderState | None) -> None:
        if record.order_id in self.running:
            return
        key = self._key_for(record.group)
        if key is None:
            log.error("session.no_key", order_id=record.order_id, group=record.group,
                      note="terminal group no longer configured; session left in the registry")
            return
        session = PaymentSession(self._ctx, record, key, state)
        self.running[record.order_id] = session
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        self._tg.start_soon(self._run, session, name=f"session {record.order_id}")

    async def _run(self, session: PaymentSession) -> None:
        try:
            await session.run()
        finally:
            self.running.pop(session.order_id, None)
            if not self.running:
                self._idle.set()

    async def resume_all(self) -> int:
        records = await self._ctx.registry.all()
        for record in records:
            state = await self._ctx.store.load(record.order_id)
            if not record.created:
                # The daemon died between storing the intent and learning the create's result;
                # the unacknowledged pay command is replayed and finds out.
                continue
            await self.start(record, state)
        return len(self.running)

    async def wait_idle(self) -> None:
        await self._idle.wait()


class Bridge:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.keys = Keys(config.redis.prefix)
        self._stop = anyio.Event()
        self.intake: CommandIntake | None = None
        self.sessions: Sessions | None = None
        self.handlers: CommandHandlers | None = None
        self.on_reload: Callable[[Config], None] | None = None
        self.load_config: Callable[[], Config] | None = None

    def request_stop(self) -> None:
        self._stop.set()

    def _key_for(self, group_name: str) -> str | None:
        for group in self.config.multisafepay.terminal_groups:
            if group.name == group_name:
                return group.key.get_secret_value()
        return None

    async def run(self, *, task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        upstream = cfg.multisafepay
        async with AsyncExitStack() as stack:
            redis = connect(cfg.redis.url)
            stack.push_async_callback(redis.aclose)
            http = await stack.enter_async_context(httpx.AsyncClient(
                timeout=httpx.Timeout(upstream.request_timeout, connect=upstream.connect_timeout),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
                headers={"User-Agent": "pos-bridge/0.1"},
            ))
            store = EventStore(redis, self.keys, stream_maxlen=cfg.redis.stream_maxlen,
                               order_ttl=cfg.redis.order_ttl)
            ctx = SessionContext(
                api=MultiSafepayApi(http, upstream.api_base_url, api_key_in=upstream.api_key_in,
                                    request_timeout=upstream.request_timeout),
                http=http, store=store,
                registry=SessionRegistry(redis, self.keys, ttl=cfg.redis.order_ttl),
                upstream=upstream,
            )
            async with anyio.create_task_group() as root:
                root.start_soon(self._watch_signals, root)
                async with anyio.create_task_group() as sessions_tg:
                    self.sessions = sessions = Sessions(sessions_tg, ctx, self._key_for)
                    self.handlers = handlers = CommandHandlers(
                        cfg, redis, ctx, sessions.start, sessions.__contains__
                    )
                    self.intake = CommandIntake(
                        redis, self.keys, cfg.redis.effective_consumer_name, handlers.handle,
                        claim_idle=cfg.redis.command_claim_idle,
                        commands_maxlen=cfg.redis.commands_maxlen,
                    )
                    resumed = await self._resume(sessions)
                    log.info("daemon.started", resumed_sessions=resumed, redis=cfg.redis.masked_url,
                             api=upstream.api_base_url, consumer=cfg.redis.effective_consumer_name)
                    task_status.started()
                    await self.intake.run(self._stop)
                    with anyio.move_on_after(SHUTDOWN_GRACE):
                        if sessions.running:
                            log.info("daemon.draining", sessions=len(sessions.running), grace_s=SHUTDOWN_GRACE)
                        await sessions.wait_idle()
                    if sessions.running:
                        log.info("daemon.handing_over", sessions=len(sessions.running),
                                 note="left in the registry; resumed at next start")
                    sessions_tg.cancel_scope.cancel()
                root.cancel_scope.cancel()
        log.info("daemon.stopped")

    async def _resume(self, sessions: Sessions) -> int:
        from redis.exceptions import RedisError

        try:
            return await sessions.resume_all()
        except RedisError as exc:
            log.error("daemon.resume_failed", error=str(exc), note="sessions resumed when Redis is back")
            return 0

    async def _watch_signals(self, root: TaskGroup) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self._reload()
                    continue
                if self._stop.is_set():
                    log.warning("daemon.forced_stop", signal=signal.Signals(signum).name)
                    root.cancel_scope.cancel()
                    return
                log.info("daemon.stopping", signal=signal.Signals(signum).name)
                self._stop.set()

    def _reload(self) -> None:
        if self.load_config is None:
            log.info("daemon.reload_skipped", reason="no config file to reload")
            return
        try:
            new = self.load_config()
        except Exception as exc:  # a bad edit must not stop a running daemon
            log.error("daemon.reload_failed", error=str(exc), note="keeping the running config")
            return
        self.config = new
        if self.handlers is not None:
            self.handlers.config = new
        if self.on_reload is not None:
            self.on_reload(new)
        log.info("daemon.reloaded", groups=[g.name for g in new.multisafepay.terminal_groups])
