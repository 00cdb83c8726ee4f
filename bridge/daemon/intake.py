"""Reading ``{p}:commands`` in the consumer group, so several daemons share the work.

A command is acknowledged only after it has been handled (its outcome is in Redis). Commands
this consumer received but never acknowledged (it died) are read again at start; the commands
of a consumer whose daemon is gone (:mod:`bridge.redis.presence`: its presence lapsed, or its
process no longer exists on this host) are claimed at once, and any command held longer than
``command_claim_idle`` by a consumer is claimed too. Handlers are idempotent per command id, so
a replay is harmless.

Entries are read as bytes and decoded losslessly (invalid UTF-8 stays visible to the parser,
which refuses it): no entry can fail the read itself. A command delivered more than
``max_deliveries`` times (its handler crashed, or the daemon died on it, each time) is a poison
command: it is handed to ``give_up`` (answered and dead-lettered) and acknowledged, so it
cannot crash-loop the daemon. One its handler last left unacknowledged on purpose
(``LeaveUnacknowledged``: MultiSafepay could not say yet) is marked so and keeps being retried.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from bridge import metrics
from bridge.core import formats
from bridge.core.backoff import Backoff
from bridge.core.untrusted import decode_untrusted, printable_fields
from bridge.daemon import loops
from bridge.redis.coalesce import Coalescer, Pending
from bridge.redis.keys import COMMANDS_GROUP, Keys
from bridge.redis.outage import RedisWaiters, is_outage

log = structlog.get_logger("bridge.intake")


class LeaveUnacknowledged(Exception):
    """Raised by a handler that could not finish a command: it is read again later."""


#: Handles one command; may return the command's ``type`` as it parsed it (the metrics label,
#: so the entry is not parsed again for it); None: the label is read from the entry.
Handler = Callable[[str, dict[str, str]], Awaitable[str | None]]
ConsumerGone = Callable[[str], Awaitable[bool]]
GiveUp = Callable[[str, dict[str, str], str], Awaitable[None]]
Entry = tuple[str, dict[str, str]]
Delivery = tuple[str, dict[str, str], int]  # an entry, and how many times it was delivered

_READ_BLOCK_MS = 1000  # also how quickly a stop request is noticed
_BATCH = 64
#: Deliveries of one command before it is a poison command (handed to ``give_up``).
MAX_DELIVERIES = 5
#: How much of each field of a dead-lettered entry is kept (characters).
_DEAD_FIELD_LIMIT = 4096


def _decoded(entries: list[Any]) -> list[Entry]:
    """Stream entries read as bytes, as text: names and values decoded losslessly."""
    return [
        (
            decode_untrusted(entry_id),
            {decode_untrusted(k): decode_untrusted(v) for k, v in fields.items()},
        )
        for entry_id, fields in entries
        if fields is not None
    ]


async def dead_letter(
    client: Redis, keys: Keys, entry_id: str, fields: Mapping[str, str], reason: str
) -> None:
    """Copy a command that will not be done to ``{p}:commands:dead`` with the reason: fields
    bounded and made encodable, events tokens masked."""
    log.error("command.dead", entry_id=entry_id, reason=reason)
    entry: dict[Any, Any] = {
        **printable_fields(fields, _DEAD_FIELD_LIMIT),
        "entry_id": entry_id,
        "error": reason,
    }
    await client.xadd(
        keys.commands_dead,
        entry,
        maxlen=10_000,
        approximate=True,
    )


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
        give_up: GiveUp | None = None,
        max_in_flight: int = 64,
        commands_maxlen: int = 100_000,
        max_deliveries: int = MAX_DELIVERIES,
        consumer_gone: ConsumerGone | None = None,
        claim_every: float = 10.0,
    ) -> None:
        """``client`` must not decode responses (``connect(..., decode_responses=False)``):
        entries are decoded here, so that no bytes a till wrote can fail the read."""
        self._waiters = waiters
        self._client = client
        self._give_up = give_up or self._dead_letter_only
        self._max_deliveries = max_deliveries
        self._claim_every = claim_every
        self._consumer_gone = consumer_gone
        self._keys = keys
        self._consumer = consumer
        self._handler = handler
        self._claim_idle_ms = int(claim_idle * 1000)
        #: Commands idle past ``claim_idle`` (and the stream's trim) are looked for this often:
        #: a quarter of ``claim_idle``, 10 s at most, not every ``claim_every`` (whose round
        #: trips are for a gone daemon's commands, claimed at once).
        self._autoclaim_every = max(claim_every, min(claim_idle / 4, 10.0))
        self._limit = anyio.CapacityLimiter(max_in_flight)
        #: entries being handled here: one claimed back while its handler runs (it idled past
        #: ``claim_idle``, e.g. a commit that waited out a failover) is not started twice
        self._in_flight: set[str] = set()
        self._maxlen = commands_maxlen
        #: Commands handled at about the same time are acknowledged by one XACK.
        self._acks: Coalescer[str] = Coalescer(self._send_acks)
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
        """Read and dispatch commands until ``stop`` is set; return once in-flight ones are done.

        The reading loop is supervised (``loops``): one that fails (a bug) is restarted
        where it was (its state is kept here), while the commands in progress go on in their
        task group; entries it had read but not dispatched are pending and claimed again
        after ``command_claim_idle``."""
        self._backoff = Backoff(initial=0.2, factor=2.0, cap=5.0)
        self._waiting = False  # in the shared outage count (logged once for the whole daemon)
        self._backlog = True  # first our own unacknowledged entries, then new ones
        self._last_claim = self._last_autoclaim = -float("inf")
        async with anyio.create_task_group() as handlers:
            await loops.supervise("intake", self._read_loop, handlers, stop)
            self.reading = False
            log.info("intake.stopped", note="waiting for commands in progress")

    async def _read_loop(self, handlers: TaskGroup, stop: anyio.Event) -> None:
        backoff = self._backoff
        while not stop.is_set():
            loops.fault_point("intake")
            try:
                if self._backlog:
                    await self.ensure_group()
                entries = await self._read(self._backlog)
                now = anyio.current_time()
                if now - self._last_claim > self._claim_every:
                    self._last_claim = now
                    entries += await self._claim_from_gone()
                if now - self._last_autoclaim > self._autoclaim_every:
                    self._last_autoclaim = now
                    entries += await self._claim_abandoned()
                    await self._client.xtrim(
                        self._keys.commands, maxlen=self._maxlen, approximate=True
                    )
                if self._waiting:
                    self._waiting = False
                    self._waiters.leave()
                    backoff.reset()
            except RedisError as exc:
                self.reading = False
                if "NOGROUP" in str(exc):  # Redis came back empty (no persistence)
                    self._backlog = True  # recreate the group
                if is_outage(exc) and not self._waiting:
                    self._waiting = True
                    self._waiters.enter(exc, "commands")
                elif not is_outage(exc):
                    self._waiting = self._refused(exc, self._waiting)
                await anyio.sleep(backoff.next())
                continue
            self.reading = True
            if self._backlog and not entries:
                self._backlog = False
            if self._backlog:  # keep draining the backlog from after the last entry read
                self._backlog_from = entries[-1][0] if entries else "0"
            for entry_id, fields, deliveries in entries:
                if entry_id in self._in_flight:
                    continue  # its handler runs still: it acknowledges or leaves it
                self._in_flight.add(entry_id)
                await self._limit.acquire_on_behalf_of(entry_id)
                if deliveries > self._max_deliveries:
                    handlers.start_soon(self._handle_or_bury, entry_id, fields, deliveries)
                else:
                    handlers.start_soon(self._handle, entry_id, fields)

    def _refused(self, exc: RedisError, waiting: bool) -> bool:
        """Redis answered the intake with an error (``WRONGTYPE``: ``{p}:commands`` is not a
        stream; a script error; an ACL refusal): not an outage, so not counted as one, but
        logged each time; reading is retried with backoff (an operator can fix the key).
        Returns whether the intake still waits out an outage (no: Redis answered)."""
        if waiting:
            self._waiters.leave()
        if "UNBLOCKED" in str(exc):
            # a blocked read ended by Redis: the slot moved to another node (resharding) or
            # the key was deleted; the next read goes where the stream is now
            log.info("intake.unblocked", reason=str(exc))
        elif "NOGROUP" not in str(exc):
            log.error(
                "intake.refused",
                error=str(exc),
                note="Redis answered with an error, not an outage: reading is retried",
            )
        return False

    async def _read(self, backlog: bool) -> list[Delivery]:
        start = self._backlog_from if backlog else ">"
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
        if not backlog:
            return [(entry_id, fields, 1) for entry_id, fields in _decoded(entries)]
        return await self._with_deliveries(_decoded(entries))

    async def _with_deliveries(self, entries: list[Entry]) -> list[Delivery]:
        """Each entry with how many times it has been delivered (XPENDING), this time included."""
        if not entries:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for entry_id, _fields in entries:
                pipe.xpending_range(
                    self._keys.commands, COMMANDS_GROUP, min=entry_id, max=entry_id, count=1
                )
            replies: list[Any] = await pipe.execute()
        return [
            (entry_id, fields, int(reply[0]["times_delivered"]) if reply else 1)
            for (entry_id, fields), reply in zip(entries, replies, strict=True)
        ]

    async def _claim_abandoned(self) -> list[Delivery]:
        reply: Any = await self._client.xautoclaim(
            self._keys.commands,
            COMMANDS_GROUP,
            self._consumer,
            min_idle_time=self._claim_idle_ms,
            start_id="0-0",
            count=_BATCH,
        )
        claimed = reply[1]
        if claimed:
            log.warning(
                "intake.claimed", count=len(claimed), note="commands of a consumer that stopped"
            )
        return await self._with_deliveries(_decoded(claimed))

    async def _claim_from_gone(self) -> list[Delivery]:
        """Every pending command of a consumer whose daemon is gone, claimed without waiting
        for ``command_claim_idle``; the consumer is then deleted from the group (so tools
        that look at the group's consumers see the daemons that run)."""
        if self._consumer_gone is None:
            return []
        claimed: list[Entry] = []
        consumers: list[dict[str, Any]] = await self._client.xinfo_consumers(
            self._keys.commands, COMMANDS_GROUP
        )
        for consumer in consumers:
            name = decode_untrusted(consumer["name"])
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
                    claimed += _decoded(entries)
                    log.warning(
                        "intake.claimed",
                        count=len(ids),
                        consumer=name,
                        note="commands of a daemon that is gone",
                    )
                if len(ids) >= _BATCH:
                    continue  # more next round; keep the consumer until it is drained
            await self._client.xgroup_delconsumer(self._keys.commands, COMMANDS_GROUP, name)
        return await self._with_deliveries(claimed)

    async def _send_acks(self, batch: list[Pending[str]]) -> None:
        try:
            await self._client.xack(self._keys.commands, COMMANDS_GROUP, *(p.item for p in batch))
        except Exception as exc:  # noqa: BLE001 - each caller gets it, as from its own XACK
            for p in batch:
                p.error = exc

    async def _dead_letter_only(self, entry_id: str, fields: dict[str, str], reason: str) -> None:
        await dead_letter(self._client, self._keys, entry_id, fields, reason)

    async def _mark_retrying(self, entry_id: str) -> None:
        ttl = int(2 * self._claim_idle_ms / 1000 + 2 * self._claim_every + 60)
        try:
            await self._client.set(self._keys.command_retrying(entry_id), "1", ex=ttl)
        except RedisError as exc:
            log.warning("command.unmarked", entry_id=entry_id, error=str(exc))

    def _release(self, entry_id: str) -> None:
        self._in_flight.discard(entry_id)
        self._limit.release_on_behalf_of(entry_id)

    async def _handle_or_bury(self, entry_id: str, fields: dict[str, str], deliveries: int) -> None:
        """Delivered too often: a poison command, unless its handler last left it on purpose."""
        try:
            retrying = bool(await self._client.exists(self._keys.command_retrying(entry_id)))
        except RedisError as exc:
            log.error("command.unfinished", entry_id=entry_id, error=str(exc))
            self._release(entry_id)
            return
        if retrying:
            await self._handle(entry_id, fields)
        else:
            await self._bury(entry_id, fields, deliveries)

    async def _bury(self, entry_id: str, fields: dict[str, str], deliveries: int) -> None:
        """A poison command: answered and dead-lettered instead of handled, then acknowledged."""
        reason = (
            f"delivered {deliveries} times without being handled (its handler failed or the "
            f"daemon stopped on it each time): not tried again"
        )
        try:
            await self._give_up(entry_id, fields, reason)
            await self._client.xack(self._keys.commands, COMMANDS_GROUP, entry_id)
            metrics.COMMANDS.labels(metrics.command_type(fields), "dead").inc()
        except RedisError as exc:
            log.error("command.unfinished", entry_id=entry_id, error=str(exc))
        except Exception:
            # Giving up must not fail either; the entry stays pending and is tried again later.
            log.exception("command.crashed", entry_id=entry_id, note="while dead-lettering it")
        finally:
            self._release(entry_id)

    async def _handle(self, entry_id: str, fields: dict[str, str]) -> None:
        try:
            kind = await self._handler(entry_id, fields)
            await self._acks.call(entry_id)
            metrics.COMMANDS.labels(metrics.command_label(kind, fields), "handled").inc()
        except LeaveUnacknowledged as exc:
            # Not done yet, on purpose (the outcome upstream is unknown, another daemon has it):
            # read again later, and not a poison command however often that happens.
            log.error("command.unfinished", entry_id=entry_id, error=str(exc))
            metrics.COMMANDS.labels(metrics.command_type(fields), "unfinished").inc()
            await self._mark_retrying(entry_id)
        except formats.NewerFormat as exc:
            # Its order's records are a newer release's (a rolling upgrade): acting on them
            # could corrupt them. Left for a daemon that reads them, like the case above.
            log.error("record.newer_format", entry_id=entry_id, error=str(exc))
            metrics.COMMANDS.labels(metrics.command_type(fields), "unfinished").inc()
            await self._mark_retrying(entry_id)
        except RedisError as exc:
            # Not acknowledged: read again at our next start or claimed by another daemon. An
            # error Redis answered (not an outage) would come again: after ``max_deliveries``
            # the command is a poison command, answered and dead-lettered.
            outage = is_outage(exc)
            log.error(
                "command.unfinished" if outage else "command.refused",
                entry_id=entry_id,
                error=str(exc),
            )
            metrics.COMMANDS.labels(metrics.command_type(fields), "unfinished").inc()
        except Exception:
            # A bug must not take the daemon (and every payment in flight) down with it.
            log.exception("command.crashed", entry_id=entry_id, note="left unacknowledged")
            metrics.COMMANDS.labels(metrics.command_type(fields), "crashed").inc()
        finally:
            self._release(entry_id)
