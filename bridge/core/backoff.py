"""Reconnect delays: exponential, capped, jittered. Pure; the caller sleeps."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    initial: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    #: Fraction of the delay randomised (0.2: +-20 %), so many sessions that lost their
    #: streams at once do not reconnect in lockstep.
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def next(self) -> float:
        base = min(self.cap, self.initial * self.factor**self.attempts)
        self.attempts += 1
        spread = base * self.jitter
        return max(0.0, base + self.rng.uniform(-spread, spread))

    def reset(self) -> None:
        self.attempts = 0
