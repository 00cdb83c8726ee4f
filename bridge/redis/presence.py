"""Which daemons are alive: ``{p}:daemon:{consumer}`` holds the daemon's host and process id,
set with a TTL (the lease TTL) and renewed with its leases.

A daemon is gone when its key has lapsed, or, at once, when it ran on this host and its
process no longer exists (a ``kill -9`` and a restart by systemd: the new process need not
wait for the old one's leases and commands to time out). Owners' names are the consumer
names: every lease token and every pending command names one.

The key holds ``{"format": 1, "host": ..., "pid": ..., "incarnation": ...}`` (format version 1,
docs/redis-formats.md; written before versions were by release N-1, which reads only the fields
it knows). A presence of a newer major format says its daemon is alive while the key lives:
nothing else of it is judged, so a newer daemon's payments are never taken from it early.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from typing import Any

import structlog
from redis.asyncio import Redis

from bridge.core import formats
from bridge.redis.keys import Keys

log = structlog.get_logger("bridge.redis")


def process_exists(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Presence:
    """This daemon's presence, and judging others'. Lease tokens name an *owner*,
    ``{incarnation}@{consumer}``: a daemon restarted under the same consumer name is a new
    incarnation, and its predecessor's leases are known dead at once."""

    def __init__(self, client: Redis, keys: Keys, name: str, ttl: float) -> None:
        self._client = client
        self._keys = keys
        self.name = name
        self._ttl_ms = int(ttl * 1000)
        self._host = socket.gethostname()
        self.incarnation = uuid.uuid4().hex[:12]
        self._me = json.dumps(
            {
                formats.FORMAT_FIELD: formats.PRESENCE,
                "host": self._host,
                "pid": os.getpid(),
                "incarnation": self.incarnation,
            }
        )
        #: Consumer names whose presence was of a newer format, logged once each.
        self._newer_logged = formats.FirstSight()

    @property
    def owner(self) -> str:
        """What this daemon's lease tokens say after the fencing number."""
        return f"{self.incarnation}@{self.name}"

    async def announce(self) -> None:
        """Say (again) that this daemon is alive, for one TTL."""
        await self._client.set(self._keys.daemon(self.name), self._me, px=self._ttl_ms)

    def announce_command(self) -> tuple[str | int, ...]:
        """:meth:`announce` as a command to send (``bridge.redis.client.roundtrip``)."""
        return ("SET", self._keys.daemon(self.name), self._me, "PX", self._ttl_ms)

    async def withdraw(self) -> None:
        """A clean stop: the daemon's commands are free at once."""
        if await self._client.get(self._keys.daemon(self.name)) == self._me:
            await self._client.delete(self._keys.daemon(self.name))

    async def _seen(self, name: str) -> dict[str, Any] | None:
        raw = await self._client.get(self._keys.daemon(name))
        if raw is None:
            return None
        try:
            seen = json.loads(raw)
        except ValueError:
            return {}
        return seen if isinstance(seen, dict) else {}

    def _newer(self, name: str, seen: dict[str, Any]) -> bool:
        """Whether ``seen`` is of a newer major format than this release reads (logged once
        per consumer name): its daemon counts as alive while its key lives."""
        try:
            formats.check("presence", seen, formats.PRESENCE)
        except formats.NewerFormat as exc:
            if self._newer_logged.first(name):
                log.warning(
                    "record.newer_format",
                    record="presence",
                    consumer=name,
                    version=str(exc.version),
                    note="a newer daemon: alive while its key lives, its payments left to it",
                )
            return True
        return False

    def _dead_here(self, seen: dict[str, Any]) -> bool:
        pid = seen.get("pid")
        return seen.get("host") == self._host and isinstance(pid, int) and not process_exists(pid)

    async def consumer_gone(self, name: str) -> bool:
        """Whether no daemon runs under the consumer name ``name``."""
        if name == self.name:
            return False
        seen = await self._seen(name)
        if seen is None:
            return True
        return not self._newer(name, seen) and self._dead_here(seen)

    async def owner_gone(self, owner: str) -> bool:
        """Whether the daemon incarnation ``owner`` (from a lease token) is certainly gone."""
        incarnation, _, name = owner.partition("@")
        if incarnation == self.incarnation:
            return False
        seen = await self._seen(name)
        if seen is None:
            return True
        if self._newer(name, seen):
            return False
        if seen.get("incarnation") not in (None, incarnation):
            return True  # its consumer name runs a newer process now
        return self._dead_here(seen)
