"""Reading ``{p}:commands`` in the consumer group, so several daemons share the work.

A command is acknowledged only after it has been handled (its outcome is in Redis). Commands
this consumer received but never acknowledged (it died) are read again at start; the commands
of a consumer whose daemon is gone (:mod:`bridge.redis.presence`: its presence lapsed, or its
process no longer exists on this host) are claimed at once, and any command held longer than
``command_claim_idle`` by a consumer is claimed too. Handlers are idempotent per command id, so
a replay is harmless.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from bridge import metrics
from bridge.core.backoff import Backoff
from bridge.redis.client import stream_entries
from bridge.redis.keys import COMMANDS_GROUP, Keys
from bridge.redis.outage import RedisWaiters

log = structlog.get_logger("bridge.intake")


class LeaveUnacknowledged(Exception):
    """Raised by a handler that could not finish a command: it is read again later."""


Handler = Callable[[str, dict[str, str]], Awaitable[None]]
ConsumerGone = Callable[[str], Awaitable[bool]]

_READ_BLOCK_MS = 1000  # also how quickly a stop request is noticed
_BATCH = 64


class CommandIntake:
    def __init__(
        self,
        client: Redis,
        keys: Keys,
        consumer: str,
        handler: Handler,
        *,
        claim_idle: float,
        waiters: RedisWaiters,
        max_in_flight: int = 64,
        commands_maxlen: int = 100_000,
        consumer_gone: ConsumerGone | None = None,
        claim_every: float = 10.0,
    ) -> None:
        self._consumer_gone = consumer_gone
        self._claim_every = claim_every
        self._waiters = waiters
        self._client = client
        self._keys = keys
        self._consumer = consumer
        self._handler = handler
        self._claim_idle_ms = int(claim_idle * 1000)
        self._limit = anyio.CapacityLimiter(max_in_flight)
        self._maxlen = commands_maxlen
        self.reading = False
        self._backlog_from = "0"

    async def ensure_group(self) -> None:
        try:
            # From id 0: commands written before any daemon ever ran are still done.
            await self._client.xgroup_create(
                self._keys.commands, COMMANDS_GROUP, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: anyio.Event) -> None:
        """Read and dispatch commands until ``stop`` is set; return once in-flight ones are done."""
        backoff = Backoff(initial=0.2, factor=2.0, cap=5.0)
        waiting = False  # in the shared outage count (logged once for the whole daemon)
        async with anyio.create_task_group() as handlers:
            backlog = True  # first our own unacknowledged entries, then new ones
            last_claim = 0.0
            while not stop.is_set():
                try:
                    if backlog:
                        await self.ensure_group()
                    entries = await self._read(backlog)
                    if anyio.current_time() - last_claim > self._claim_every:
                        last_claim = anyio.current_time()
                        entries += await self._claim_from_gone()
                        entries += await self._claim_abandoned()
                        await self._client.xtrim(
                            self._keys.commands, maxlen=self._maxlen, approximate=True
                        )
                    if waiting:
                        waiting = False
                        self._waiters.leave()
                        backoff.reset()
                except RedisError as exc:
                    self.reading = False
                    if "NOGROUP" in str(
                        exc
                    ):  # Redis came back empty (no persistence): recreate the group
                        backlog = True
                    if not waiting:
                        waiting = True
                        self._waiters.enter(exc, "commands")
                    await anyio.sleep(backoff.next())
                    continue
                self.reading = True
                if backlog and not entries:
                    backlog = False
                for entry_id, fields in entries:
                    await self._limit.acquire_on_behalf_of(entry_id)
                    handlers.start_soon(self._handle, entry_id, fields)
                if backlog:  # keep draining the backlog from after the last entry read
                    self._backlog_from = entries[-1][0] if entries else "0"
            self.reading = False
            log.info("intake.stopped", note="waiting for commands in progress")

    async def _read(self, backlog: bool) -> list[tuple[str, dict[str, str]]]:
        start = self._backlog_from if backlog else ">"
        # redis-py types the reply as every protocol's shape at once; RESP2 (ours): a list
        reply: Any = await self._client.xreadgroup(
            COMMANDS_GROUP,
            self._consumer,
            {self._keys.commands: start},
            count=_BATCH,
            block=None if backlog else _READ_BLOCK_MS,
        )
        if not reply:
            return []
        _stream, entries = reply[0]
        return stream_entries(entries)

    async def _claim_abandoned(self) -> list[tuple[str, dict[str, str]]]:
        _next, claimed, _deleted = await self._client.xautoclaim(
            self._keys.commands,
            COMMANDS_GROUP,
            self._consumer,
            min_idle_time=self._claim_idle_ms,
            start_id="0-0",
            count=_BATCH,
        )
        if claimed:
            log.warning(
                "intake.claimed", count=len(claimed), note="commands of a consumer that stopped"
            )
        return [(eid, fields) for eid, fields in claimed if fields is not None]

    async def _claim_from_gone(self) -> list[tuple[str, dict[str, str]]]:
        """Every pending command of a consumer whose daemon is gone, claimed without waiting
        for ``command_claim_idle``; the consumer is then deleted from the group (so tools
        that look at the group's consumers see the daemons that run)."""
        if self._consumer_gone is None:
            return []
        claimed: list[tuple[str, dict[str, str]]] = []
        consumers: list[dict[str, Any]] = await self._client.xinfo_consumers(
            self._keys.commands, COMMANDS_GROUP
        )
        for consumer in consumers:
            name = str(consumer["name"])
            if name == self._consumer or not await self._consumer_gone(name):
                continue
            if int(consumer.get("pending", 0)):
                pending: list[dict[str, Any]] = await self._client.xpending_range(
                    self._keys.commands, COMMANDS_GROUP, "-", "+", _BATCH, consumername=name
                )
                ids = [p["message_id"] for p in pending]
                if ids:
                    entries: list[Any] = await self._client.xclaim(
                        self._keys.commands, COMMANDS_GROUP, self._consumer, 0, list(ids)
                    )
                    claimed += [(str(e[0]), dict(e[1])) for e in entries if e[1] is not None]
                    log.warning(
                        "intake.claimed",
                        count=len(ids),
                        consumer=name,
                        note="commands of a daemon that is gone",
                    )
                if len(ids) >= _BATCH:
                    continue  # more next round; keep the consumer until it is drained
            await self._client.xgroup_delconsumer(self._keys.commands, COMMANDS_GROUP, name)
        return claimed

    async def _handle(self, entry_id: str, fields: dict[str, str]) -> None:
        try:
            await self._handler(entry_id, fields)
            await self._client.xack(self._keys.commands, COMMANDS_GROUP, entry_id)
            metrics.COMMANDS.labels(metrics.command_type(fields), "handled").inc()
        except (RedisError, LeaveUnacknowledged) as exc:
            # Not acknowledged: read again at our next start or claimed by another daemon.
            log.error("command.unfinished", entry_id=entry_id, error=str(exc))
            metrics.COMMANDS.labels(metrics.command_type(fields), "unfinished").inc()
        except Exception:
            # A bug must not take the daemon (and every payment in flight) down with it.
            log.exception("command.crashed", entry_id=entry_id, note="left unacknowledged")
            metrics.COMMANDS.labels(metrics.command_type(fields), "crashed").inc()
        finally:
            self._limit.release_on_behalf_of(entry_id)
