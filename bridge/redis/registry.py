"""The session registry: every payment in flight, in Redis, so the daemon's memory is never the
only copy. A restarted daemon resumes what it finds here. These keys hold events tokens: they
are the daemon's own, never readable by tills.

A record is a JSON object of :class:`SessionRecord`'s fields, format version 1
(docs/redis-formats.md). It is written without a ``format`` field: release N-1 builds the record
from every field it finds and would refuse one it does not know. This release reads any version
1 record, ignoring fields it does not know, and refuses a newer major (:class:`NewerFormat`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace

from redis.asyncio import Redis

from bridge.core import formats
from bridge.redis.client import text
from bridge.redis.keys import Keys


@dataclass(frozen=True, slots=True)
class SessionRecord:
    order_id: str
    #: As configured (sent to MultiSafepay); keys and events use the canonical upper case.
    terminal_id: str
    group: str
    command_id: str | None
    created_at: float
    #: Unix time after which the payment is cancelled upstream.
    deadline: float
    created: bool = False
    session_id: str | None = None
    events_token: str | None = None
    events_stream_url: str | None = None
    events_url: str | None = None
    last_event_id: str | None = None
    #: False for a ``watch``: the till created the order, the bridge only follows it.
    cancel_when_late: bool = True

    def __repr__(self) -> str:  # the token must not reach a log line through a repr
        return f"SessionRecord(order_id={self.order_id!r}, terminal_id={self.terminal_id!r})"

    def with_changes(self, **changes: object) -> SessionRecord:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, raw: str | bytes) -> SessionRecord:
        return cls(**formats.read_json(raw, "session", formats.SESSION, _RECORD_FIELDS))


_RECORD_FIELDS = tuple(f.name for f in fields(SessionRecord))


# A session's end: its record gone, and its lease released if still this token's (the lease
# script's compare-and-delete), in one round trip. Every key is in the deployment's slot.
_END = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
redis.call('DEL', KEYS[2])
return redis.call('SREM', KEYS[3], ARGV[2])
"""


class SessionRegistry:
    def __init__(self, client: Redis, keys: Keys, ttl: float) -> None:
        self._client = client
        self._keys = keys
        self._ttl = int(ttl)
        self._end = client.register_script(_END)

    async def save(self, record: SessionRecord) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            for command in self.save_commands(record):
                pipe.execute_command(*command)
            await pipe.execute()

    def save_commands(self, record: SessionRecord) -> tuple[tuple[str | int, ...], ...]:
        """:meth:`save` as commands, also for a round trip that carries other writes (each is
        idempotent; there, the index entry is one an earlier save made already)."""
        keys, (raw, ttl, order_id) = self.intent(record)
        return (("SET", keys[0], raw, "EX", ttl), ("SADD", keys[1], order_id))

    def intent(self, record: SessionRecord) -> tuple[list[str], list[str | int]]:
        """The keys and arguments with which a lease's grant saves ``record`` in the same
        script (``Leases.acquire``): its key, the index, and the record, TTL and order id."""
        keys = [self._keys.session(record.order_id), self._keys.sessions_index]
        return keys, [json.dumps(asdict(record)), self._ttl, record.order_id]

    async def load(self, order_id: str) -> SessionRecord | None:
        raw = await self._client.get(self._keys.session(order_id))
        """The record, or None; :class:`NewerFormat` when a newer release wrote it."""
        return SessionRecord.from_json(raw) if raw else None

    async def remove(self, order_id: str) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(self._keys.session(order_id))
            pipe.srem(self._keys.sessions_index, order_id)
            await pipe.execute()

    async def end(self, order_id: str, lease_token: str) -> None:
        """The session is over: :meth:`remove`, and its lease released if ``lease_token``
        still holds it, in one round trip (the caller forgets the lease locally)."""
        keys = [self._keys.lease(order_id), self._keys.session(order_id), self._keys.sessions_index]
        await self._end(keys=keys, args=[lease_token, order_id])

    async def order_ids(self) -> list[str]:
        return sorted(map(text, await self._client.smembers(self._keys.sessions_index)))

    async def forget(self, order_id: str) -> None:
        """Drop an index entry whose record expired."""
        await self._client.srem(self._keys.sessions_index, order_id)
