"""Is a daemon reading the commands? Asked of the ``{p}:commands`` consumer group, so a till
tool can say so within seconds instead of waiting silently for its timeout.

The daemons read in one consumer group (``pos-bridge``), blocking for at most a second per
read: a consumer whose ``idle`` time (since its last read attempt) is short is a daemon at
work. The group's ``lag`` is how many commands wait unread.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from bridge.redis.keys import COMMANDS_GROUP, Keys

#: A consumer that read within this many seconds is a daemon at work (it reads every second).
ACTIVE_WITHIN = 5.0


def describe_readers(
    group: dict[str, Any] | None, consumers: list[dict[str, Any]], stream: str
) -> str | None:
    """None when a daemon reads ``stream``; else one line saying what the group shows."""
    if group is None:
        return f"no daemon has ever read {stream} (no consumer group {COMMANDS_GROUP!r})"
    idle = sorted(int(c.get("idle", 0)) / 1000 for c in consumers)
    if idle and idle[0] <= ACTIVE_WITHIN:
        return None
    lag = group.get("lag")
    waiting = f"; {lag} command(s) wait unread" if isinstance(lag, int) and lag > 0 else ""
    if not idle:
        return f"no daemon is reading {stream} (consumer group has no consumers{waiting})"
    return (
        f"no daemon is reading {stream}: {len(idle)} consumer(s), the last read "
        f"{idle[0]:.0f} s ago{waiting}"
    )


async def no_reader(client: Redis, keys: Keys) -> str | None:
    """None when a daemon is reading the commands; else why the command is not answered."""
    try:
        groups: list[dict[str, Any]] = await client.xinfo_groups(keys.commands)
        group = next((g for g in groups if str(g.get("name")) == COMMANDS_GROUP), None)
        consumers: list[dict[str, Any]] = (
            await client.xinfo_consumers(keys.commands, COMMANDS_GROUP) if group else []
        )
    except ResponseError:  # no such stream, or XINFO not allowed to this user
        return None
    return describe_readers(group, consumers, keys.commands)
