"""Who may a webhook notification speak for, and how often may an unsigned one cost a call?

Pure decisions for the receiver (``daemon/webhooks.py``). A notification verified with a
terminal group's key proves only that this group sent it: it may change orders of that group,
on the terminal the order already has. An unsigned ``GET`` notification proves nothing, so it
may only make the bridge ask MultiSafepay about an order id it already knows for that group,
at a bounded rate.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from bridge.core.commands import ORDER_ID_PATTERN
from bridge.core.normalize import canonical_terminal_id

_ORDER_ID = re.compile(ORDER_ID_PATTERN)


def valid_order_id(value: str | None) -> bool:
    """An order id as MultiSafepay allows it (<= 50 of ``a-zA-Z0-9/-_``)."""
    return value is not None and _ORDER_ID.fullmatch(value) is not None


@dataclass(frozen=True)
class KnownOrder:
    """What the bridge holds about an order: its terminal and the group it belongs to."""

    terminal_id: str
    group: str | None


def refuse_for_group(
    group: str,
    known: KnownOrder | None,
    named_terminal: str | None,
    group_of: Callable[[str], str | None],
) -> str | None:
    """Why a notification verified with ``group``'s key may not change this order; None if it
    may. ``known``: the order as the bridge holds it (None: never seen); ``named_terminal``:
    the terminal the notification names; ``group_of``: a terminal's group (None: no group)."""
    if known is not None:
        owner = known.group or group_of(known.terminal_id)
        if owner != group:
            return "the order belongs to another terminal group"
        if named_terminal is not None and canonical_terminal_id(
            named_terminal
        ) != canonical_terminal_id(known.terminal_id):
            return "the notification names another terminal than the order's"
        return None
    if named_terminal is not None and group_of(named_terminal) != group:
        return "the notification names a terminal of another terminal group (or of none)"
    return None


class TokenBucket:
    """At most ``burst`` at once, refilled at ``rate`` per second. Time is the caller's."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at: float | None = None

    def take(self, now: float) -> bool:
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
