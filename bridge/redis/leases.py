"""Who follows which payment: an owner lease per order, timed by Redis, fenced by a token.

A lease is ``SET {p}:lease:{order} TOKEN NX PX ttl``: Redis's clock decides when it lapses, not
a daemon's. The token comes from a counter (``INCR``), so every grant is distinct; the owner
renews only while the key still holds its token, and every commit of its session carries the
token (``transition.lua`` refuses a stale one). A daemon that stalled past its lease therefore
cannot publish once another has taken the order over.

The token is format version 1 (docs/redis-formats.md): ``{fence}:{incarnation}@{consumer}``,
the fencing number, then the owner (:attr:`Presence.owner`). It carries no version of its own:
release N-1 reads exactly this shape. A token of any other shape is a newer release's: its owner
cannot be judged, so it is never taken over (logged ``record.newer_format``); the payment is
taken only once the lease lapses, as when no daemon holds it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from bridge.core import formats
from bridge.redis.client import errors_as_values, roundtrip, text
from bridge.redis.keys import Keys
from bridge.redis.presence import Presence

log = structlog.get_logger("bridge.redis")


@dataclass(frozen=True, slots=True)
class OpenLook:
    """What :meth:`Leases.open` read, and the lease it was granted (None: not granted)."""

    previous: str | None  # the fingerprint the command id had, if any
    state: str | None  # the order's state (JSON), if it exists
    active: str | None  # the order in flight on the terminal, if any
    lease: str | None  # the token of the order's lease before, if any
    token: str | None


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# A lease that lapsed while nobody took it (this daemon stalled past its TTL: a GC pause, a
# starved CPU) is set again with the same token, as any daemon's SET NX could have set it: no
# other token held it meanwhile, and every commit is still a compare-and-set on the order's
# version, so nothing is decided from a stale state. Returns {lost indexes, revived indexes}.
_RENEW_MANY = """
local lost, revived = {}, {}
for i = 1, #KEYS do
  local held = redis.call('GET', KEYS[i])
  if held == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  elseif not held then
    redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[1])
    revived[#revived + 1] = i
  else
    lost[#lost + 1] = i
  end
end
return {lost, revived}
"""

# A new lease in one round trip: the next fencing number, and the lease set with it if the
# order has none; then, if given, the payment's intent in the session registry (KEYS[3] its
# record, KEYS[4] the index). Returns the token granted, or nil (the number is spent anyway).
_ACQUIRE = """
local token = tostring(redis.call('INCR', KEYS[1])) .. ARGV[1]
if not redis.call('SET', KEYS[2], token, 'NX', 'PX', ARGV[2]) then
  return false
end
if KEYS[3] then
  redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
  redis.call('SADD', KEYS[4], ARGV[5])
end
return token
"""

# A pay's first look and, when nothing stands in its way, its lease and intent, in one round
# trip (they were two): the command id claimed (SET NX GET), the order's state, the terminal's
# order in flight and the order's lease read; then, if the id was free or this command's, the
# order has no state and no lease and the terminal is free (or busy with this very order), the
# grant of _ACQUIRE. KEYS: command record, order state, terminal's active order, fence counter,
# lease, session record, sessions index. Returns {previous, state, active, lease, token}.
_OPEN = """
local previous = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'GET', 'EX', ARGV[2])
local state = redis.call('HGET', KEYS[2], 'state')
local active = redis.call('GET', KEYS[3])
local lease = redis.call('GET', KEYS[5])
local token = false
if (not previous or previous == ARGV[1]) and not state and not lease
    and (not active or active == ARGV[8]) then
  token = tostring(redis.call('INCR', KEYS[4])) .. ARGV[3]
  redis.call('SET', KEYS[5], token, 'PX', ARGV[4])
  redis.call('SET', KEYS[6], ARGV[5], 'EX', ARGV[6])
  redis.call('SADD', KEYS[7], ARGV[7])
end
return {previous, state, active, lease, token}
"""

_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Leases:
    def __init__(
        self, client: Redis, keys: Keys, ttl: float, owner: str, presence: Presence | None = None
    ) -> None:
        self._client = client
        self._keys = keys
        self.ttl_ms = int(ttl * 1000)
        self.presence = presence or Presence(client, keys, owner, ttl)
        self._owner = self.presence.owner
        self._acquire = client.register_script(_ACQUIRE)
        self._open = client.register_script(_OPEN)
        self._take_over = client.register_script(_TAKE_OVER)
        self._renew = client.register_script(_RENEW)
        self._renew_many = client.register_script(_RENEW_MANY)
        self._release = client.register_script(_RELEASE)
        #: Every lease this daemon was granted and has not released: order id -> (token, when
        #: granted, monotonic). The renewal keeps them (see ``Sessions``), also while a payment
        #: is being opened, before its session runs.
        self.held: dict[str, tuple[str, float]] = {}
        #: Lease tokens of another format, logged once each.
        self._newer_logged = formats.FirstSight()

    def _granted(self, order_id: str, token: str) -> str:
        self.held[order_id] = (token, time.monotonic())
        return token

    def forget(self, order_id: str, token: str) -> None:
        """No longer renew ``token`` (lost, released or left to lapse)."""
        if self.held.get(order_id, ("",))[0] == token:
            del self.held[order_id]

    async def acquire(
        self, order_id: str, intent: tuple[list[str], list[str | int]] | None = None
    ) -> str | None:
        """A new token if the order had no owner, else None. With ``intent`` (the session
        registry's keys and arguments: ``SessionRegistry.intent``), the payment's record is
        saved with the grant, in the same script (and not without it)."""
        keys, args = intent or ([], [])
        token = await self._acquire(
            keys=[self._keys.fence_counter, self._keys.lease(order_id), *keys],
            args=[f":{self._owner}", self.ttl_ms, *args],
        )
        return self._granted(order_id, text(token)) if token else None

    async def open(
        self,
        order_id: str,
        claim: tuple[str, str, int],
        terminal: str,
        intent: tuple[list[str], list[str | int]],
    ) -> OpenLook:
        """A pay's first look (``claim``: its command id, fingerprint and the claim's TTL in
        seconds; ``terminal``: the one it pays on) and, when it finds the way clear, the
        order's lease granted with ``intent`` saved (``SessionRegistry.intent``): one script.
        The lease is not granted when the command id was another command's, the order has a
        state or a lease, or the terminal is busy with another order; the caller then decides
        from what was read, as before."""
        command_id, fingerprint, ttl = claim
        keys = self._keys
        registry_keys, registry_args = intent
        previous, state, active, lease, token = await self._open(
            keys=[
                keys.command_record(command_id),
                keys.order_state(order_id),
                keys.terminal_active(terminal),
                keys.fence_counter,
                keys.lease(order_id),
                *registry_keys,
            ],
            args=[fingerprint, ttl, f":{self._owner}", self.ttl_ms, *registry_args, order_id],
        )
        return OpenLook(
            previous=text(previous),
            state=text(state),
            active=text(active),
            lease=text(lease),
            token=self._granted(order_id, text(token)) if token else None,
        )

    async def take_over(self, order_id: str, dead_token: str) -> str | None:
        """A new token in place of ``dead_token`` (its daemon is gone), if it still holds.
        Fencing stays whole: the old token can no longer commit."""
        token = f"{await self._client.incr(self._keys.fence_counter)}:{self._owner}"
        taken = await self._take_over(
            keys=[self._keys.lease(order_id)], args=[dead_token, token, self.ttl_ms]
        )
        return self._granted(order_id, token) if taken else None

    async def orphaned(self, order_id: str) -> str | None:
        """The lease token of ``order_id`` when its daemon is gone ("" when there is no
        lease); None while a live daemon holds it."""
        token = await self.holder(order_id)
        if token is None:
            return ""
        return token if await self._owner_gone(order_id, token, {}) else None

    async def _owner_gone(self, order_id: str, token: str, judged: dict[str, bool]) -> bool:
        """Whether the daemon that holds ``token`` is certainly gone (``judged``: owners
        already judged in this scan). A token of another format is a newer daemon's: held."""
        if formats.parse_lease_token(token) is None:
            if self._newer_logged.first(token):
                log.warning(
                    "record.newer_format",
                    record="lease",
                    order_id=order_id,
                    note="a lease token of another format: left to its holder until it lapses",
                )
            return False
        owner = token.partition(":")[2]
        if owner not in judged:
            judged[owner] = await self.presence.owner_gone(owner)
        return judged[owner]

    async def claim(self, order_id: str) -> str | None:
        """A new token if no live daemon holds the order (none, or its daemon is gone)."""
        dead_token = await self.orphaned(order_id)
        if dead_token is None:
            return None
        if dead_token:
            return await self.take_over(order_id, dead_token)
        return await self.acquire(order_id)

    def held_here(self, token: str | None) -> bool:
        """Whether ``token`` was granted to this daemon."""
        return token is not None and token.partition(":")[2] == self._owner

    async def orphans(self, order_ids: list[str], batch: int = 500) -> dict[str, str]:
        """Of ``order_ids``, those no live daemon holds: order id -> the dead lease token, or
        "" when there is no lease. One ``MGET`` per batch; each owner judged once."""
        found: dict[str, str] = {}
        gone: dict[str, bool] = {}
        for start in range(0, len(order_ids), batch):
            chunk = order_ids[start : start + batch]
            tokens = await self._client.mget([self._keys.lease(o) for o in chunk])
            for order_id, raw in zip(chunk, tokens, strict=True):
                if raw is None:
                    found[order_id] = ""
                    continue
                token = str(raw)
                if await self._owner_gone(order_id, token, gone):
                    found[order_id] = token
        return found

    async def unowned(self, order_id: str) -> bool:
        """Whether no live daemon follows ``order_id``."""
        return await self.orphaned(order_id) is not None

    async def renew(self, order_id: str, token: str) -> bool:
        """Extend the lease; False if it is no longer ours."""
        return bool(await self._renew(keys=[self._keys.lease(order_id)], args=[token, self.ttl_ms]))

    async def renew_all(
        self, held: dict[str, str], batch: int = 500, *, announce: bool = False
    ) -> tuple[set[str], set[str]]:
        """Extend every lease in ``held`` (order id -> token), however many payments the daemon
        follows, in one round trip: one pipeline of one script call per ``batch`` leases (each
        call short, so Redis serves others between them), led by the daemon's presence with
        ``announce`` (the same round trip). Returns the orders whose lease is another's now
        (lost), and those whose lease had lapsed with nobody taking it (set again: revived)."""
        items = list(held.items())
        chunks = [items[start : start + batch] for start in range(0, len(items), batch)]
        lost: set[str] = set()
        revived: set[str] = set()
        if not chunks:
            if announce:
                await self.presence.announce()
            return lost, revived
        replies = await self._renew_chunks(chunks, announce=announce)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:  # Redis restarted (or SCRIPT FLUSH): load it, renew those chunks again
            await self._client.script_load(self._renew_many.script)
            again = await self._renew_chunks([chunks[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        error = next((r for r in replies if isinstance(r, Exception)), None)
        if error is not None:
            raise error
        for chunk, (lost_at, revived_at) in zip(chunks, replies, strict=True):
            lost.update(chunk[int(i) - 1][0] for i in lost_at)
            revived.update(chunk[int(i) - 1][0] for i in revived_at)
        return lost, revived

    async def _renew_chunks(
        self, chunks: list[list[tuple[str, str]]], *, announce: bool = False
    ) -> list[Any]:
        """One round trip of one renewal script call per chunk (after the presence, with
        ``announce``); the scripts' replies, errors as values (a failed presence raises).
        Packed by the project (``roundtrip``): redis-py's packer, at two arguments per lease,
        was most of the renewal's CPU (26 ms a second at 10,000 leases)."""
        sha, ttl, lease = self._renew_many.sha, self.ttl_ms, self._keys.lease
        commands: list[tuple[Any, ...]] = []
        if announce:
            commands.append(self.presence.announce_command())
        for chunk in chunks:
            keys = [lease(order_id) for order_id, _ in chunk]
            commands.append(("EVALSHA", sha, len(keys), *keys, ttl, *(t for _, t in chunk)))
        replies = await roundtrip(self._client, commands)
        if announce:
            presence = replies.pop(0)
            if isinstance(presence, Exception):
                raise presence
        return replies

    async def revive(self, order_id: str, token: str) -> bool:
        """Set ``token``'s lease again if it lapsed and nobody took it; True when the lease is
        (again) ``token``'s. A commit fenced out by a lapse, not by another daemon, then goes
        on: every commit is still a compare-and-set on the order's version."""
        lost, _revived = await self.renew_all({order_id: token})
        return order_id not in lost

    async def release(self, order_id: str, token: str) -> None:
        """Give the order up at once (a clean stop), so another daemon can continue it."""
        self.forget(order_id, token)
        await self._release(keys=[self._keys.lease(order_id)], args=[token])

    async def release_all(self, held: dict[str, str]) -> None:
        """Release every lease in ``held`` (order id -> token) in one round trip: a daemon
        that stops hands over all its payments at once. ``EVAL``, not ``EVALSHA``: a Redis
        restarted since the script was loaded still releases them. Raises the first error."""
        for order_id, token in held.items():
            self.forget(order_id, token)
        if not held:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for order_id, token in held.items():
                pipe.execute_command("EVAL", _RELEASE, 1, self._keys.lease(order_id), token)
            replies = errors_as_values(list(await pipe.execute(raise_on_error=False)))
        error = next((r for r in replies if isinstance(r, Exception)), None)
        if error is not None:
            raise error

    async def holder(self, order_id: str) -> str | None:
        return text(await self._client.get(self._keys.lease(order_id)))
