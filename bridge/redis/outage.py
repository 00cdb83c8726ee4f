"""Waiting out a Redis outage without losing anything, and saying so once.

Work that must reach Redis (an upstream transition, an order just created upstream) is not
dropped when Redis is unreachable: the caller waits here, retrying with backoff, holding its
one item in memory. A session that waits stops reading its upstream stream, so the bound is
one observation per payment in flight (backpressure through TCP), and the session reconciles
by ``GET`` afterwards. The outage is logged when the first waiter meets it and when the last
one gets through, not once per retry.

Only a lost or refused connection and a timeout are an outage. Any other ``RedisError`` (a
``WRONGTYPE`` reply, a Lua script error, ``NOSCRIPT``, an ACL refusal) is an answer from a
reachable Redis: retrying would fail the same way forever, so it is the caller's to handle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import structlog
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bridge.core.backoff import Backoff

log = structlog.get_logger("bridge.redis")

T = TypeVar("T")

#: The errors that mean "Redis is unreachable" (``BusyLoadingError`` is a ConnectionError).
#: In a Redis Cluster, also the moments of a failover: nodes answer ``CLUSTERDOWN`` while a
#: lost master's slots have no master yet, ``TRYAGAIN`` while a slot moves, and the client
#: finds no node for a slot until it learns the new master; and ``ClusterError`` ("TTL
#: exhausted"), redis-py's cluster client giving up after 16 redirections and retries in a
#: row (``MOVED``/``ASK``/``TRYAGAIN`` while a slot migrates): a till's ``pay --wait`` ended
#: on it, "outcome unknown", while its slot was resharded (test_cluster_reshard.py, in CI).
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
    ClusterError,
)


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` means Redis cannot be reached now (retry), not that it refused."""
    return isinstance(exc, OUTAGE_ERRORS)


class RedisWaiters:
    """How many tasks are waiting for Redis to come back (the metric's queue depth).

    One per daemon, shared by the sessions and the command intake, so an outage is logged
    once when it starts and once when it ends, however many tasks meet it."""

    def __init__(self, on_change: Callable[[int], None] = lambda n: None) -> None:
        self.waiting = 0
        self._since: float | None = None
        self._on_change = on_change

    async def call(self, op: Callable[[], Awaitable[T]], *, what: str) -> T:
        """``await op()`` until it gets through an outage (every other error is the caller's).

        A waiter that is cancelled (its session lost its lease, the daemon stops) leaves the
        count all the same; the outage's end is then logged by the next call that gets through.
        """
        backoff: Backoff | None = None
        reached = False  # Redis answered (a result, or an error that is not an outage)
        try:
            while True:
                try:
                    result = await op()
                except OUTAGE_ERRORS as exc:
                    if backoff is None:
                        backoff = Backoff(initial=0.1, factor=2.0, cap=2.0)
                        self.enter(exc, what)
                    await anyio.sleep(backoff.next())
                    continue
                except RedisError:
                    reached = True
                    raise
                reached = True
                return result
        finally:
            if backoff is not None:
                self.leave(reached=reached)
            elif reached:
                self._end_if_idle()

    def enter(self, exc: Exception, what: str) -> None:
        """A task starts waiting for Redis (it retries on its own): the first logs the outage."""
        self.waiting += 1
        if self._since is None:
            self._since = anyio.current_time()
            log.error(
                "redis.unreachable",
                error=str(exc),
                waiting_for=what,
                note="holding upstream news in memory until Redis is back",
            )
        self._on_change(self.waiting)

    def leave(self, *, reached: bool = True) -> None:
        """A task that ``enter``-ed stops waiting: ``reached`` if Redis answered it (the last
        such logs the outage's end), False if it gave up (cancelled)."""
        self.waiting -= 1
        self._on_change(self.waiting)
        if reached:
            self._end_if_idle()

    def _end_if_idle(self) -> None:
        if self.waiting == 0 and self._since is not None:
            log.info(
                "redis.reachable",
                outage_s=round(anyio.current_time() - self._since, 1),
                note="held news written in order",
            )
            self._since = None
