"""Reconnect delays (exponential, capped, jittered) and the polling of quiet orders. Pure; the
caller sleeps."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

#: One generator for every backoff: a ``random.Random`` holds ~2.5 KB of state and seeds from
#: the OS, too much for each of thousands of payments (jitter needs no independence).
_SHARED_RNG = random.Random()


@dataclass(slots=True)
class Backoff:
    initial: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    #: Fraction of the delay randomised (0.2: +-20 %), so many sessions that lost their
    #: streams at once do not reconnect in lockstep.
    jitter: float = 0.2
    rng: random.Random = field(default_factory=lambda: _SHARED_RNG)
    attempts: int = 0

    def next(self) -> float:
        base = min(self.cap, self.initial * self.factor**self.attempts)
        self.attempts += 1
        spread = base * self.jitter
        return max(0.0, base + self.rng.uniform(-spread, spread))

    def reset(self) -> None:
        self.attempts = 0


def next_poll_wait(wait: float, interval: float, *, found: bool, late: bool, limit: float) -> float:
    """How long a quiet order waits before its next poll: ``interval`` after a poll that found
    something (or past the payment's deadline), else twice the last wait, at most ``limit``
    intervals."""
    if found or late:
        return interval
    return min(wait * 2, interval * limit)


def quiet_poll_wait(wait: float, interval: float, *, live: bool, late: bool, limit: float) -> float:
    """The wait before a quiet order's next poll, given its stream: while the stream is
    connected (``live``) and the payment not past its deadline, at least ``limit`` intervals
    (the stream speaks first; a lost stream is seen within its idle timeout and asks ``GET`` at
    once); otherwise the backing-off ``wait`` itself."""
    if live and not late:
        return max(wait, interval * limit)
    return wait


@dataclass(slots=True)
class RetryWindow:
    """Retries within an overall time budget (a till tool riding out a Redis failover): after a
    failed attempt at ``now``, how long to wait before the next one (``backoff``, never past
    the deadline: the last attempt is made at it), or None once the budget is spent. Pure:
    the caller passes the clock (``started`` and ``now`` on the same one) and sleeps."""

    seconds: float
    started: float
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.1, factor=2.0, cap=2.0))
    failures: int = 0

    @property
    def deadline(self) -> float:
        return self.started + max(0.0, self.seconds)

    def next_delay(self, now: float) -> float | None:
        """One more attempt failed at ``now``: the wait before the next, or None (give up)."""
        self.failures += 1
        left = self.deadline - now
        if left <= 0:
            return None
        return min(self.backoff.next(), left)
