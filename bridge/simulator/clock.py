"""Simulated time: every scripted delay is divided by ``speed``; wall time is Amsterdam local.

Tests can subclass ``Clock`` (or pass ``speed``) to make a payment take milliseconds.
"""

from __future__ import annotations

import time
from datetime import datetime
from zoneinfo import ZoneInfo

import anyio

AMSTERDAM = ZoneInfo("Europe/Amsterdam")


class Clock:
    def __init__(self, speed: float = 1.0) -> None:
        if not speed > 0:
            raise ValueError("speed must be > 0")
        self.speed = speed

    def scaled(self, seconds: float) -> float:
        """Real seconds for ``seconds`` of simulated time."""
        return seconds / self.speed

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(self.scaled(seconds))

    def time(self) -> float:
        return time.time()

    def simulated_seconds(self) -> float:
        """A monotonic count of simulated seconds (real seconds times ``speed``)."""
        return time.monotonic() * self.speed

    def local_timestamp(self) -> str:
        # MultiSafepay writes order times without a zone, in Amsterdam local time.
        return datetime.fromtimestamp(self.time(), AMSTERDAM).strftime("%Y-%m-%dT%H:%M:%S")
