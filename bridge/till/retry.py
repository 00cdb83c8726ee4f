"""A till tool riding out a Redis failover: each Redis step of a tool (subscribe, note where
the stream ends, ``XADD`` the command, look up an order's terminal, ``tail``'s start) is
retried on a lost connection, with backoff (:class:`bridge.core.backoff.RetryWindow`), within
an overall deadline (``--retry-for``; default 60 s with ``--sentinel`` or ``--cluster``, 0 for a
single node: there no failover brings it back, and the tool says so at once, as before).

With sentinels, each retry first asks them where the master is (``follow_master``: the pool's
connections to a master they no longer name are dropped), and while an attempt runs they are
asked again every ``MASTER_CHECK_EVERY`` seconds: an ``XADD`` whose ``WAIT`` hangs on an old
master that the sentinels replaced but did not demote yet fails as a lost connection as soon as
they name the new one, and is made again there, instead of after the demotion (seconds).

**Retrying is safe.** A retried ``XADD`` is the same command, with the same ``command_id``; the
daemon treats a command id it has seen as a replay (``bridge.daemon.handlers``): a ``pay`` whose
order exists already starts nothing, a ``cancel``/``refund`` marked done is not done again, a
``receipt`` is answered again (the tool takes the first answer). The tool's clients make no
retries of their own (``connect(..., retries=0)``), so every failure is seen here, and whether
a failed ``XADD`` may have reached Redis is known (:func:`reached_redis`): a tool that gives up
after one that may have says the outcome is unknown (exit 3, with the ``tail`` that follows
it), not "nothing was sent" (exit 2), which would invite a second command and payment.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import structlog
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import ClusterDownError, RedisError, SlotNotCoveredError, TryAgainError

from bridge.core.backoff import RetryWindow
from bridge.errors import UserError
from bridge.redis.client import BridgeRedis, connect, follow_master
from bridge.redis.outage import OUTAGE_ERRORS
from bridge.redis.target import RedisTarget
from bridge.till.options import redis_target
from bridge.till.output import describe_error, warn

T = TypeVar("T")

#: Errors after which a till tool reconnects and resumes (rather than gives up): a lost
#: connection, and a Redis Cluster failing a master over.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (*OUTAGE_ERRORS, OSError)

#: ``--retry-for`` when not given, with sentinels or a cluster (a failover takes Sentinel's
#: ``down-after-milliseconds``, 30 s by default, plus the election).
DEFAULT_RETRY_FOR = 60.0
#: While an attempt runs, how often the sentinels are asked whether the master moved (s).
MASTER_CHECK_EVERY = 1.0


def retry_for(args: argparse.Namespace, target: RedisTarget) -> float:
    """The retry budget of a tool: ``--retry-for``, else 60 s with sentinels or a cluster and
    0 for a single node."""
    given = getattr(args, "retry_for", None)
    if given is not None:
        return max(0.0, float(given))
    return DEFAULT_RETRY_FOR if (target.sentinel or target.cluster) else 0.0


def reached_redis(exc: BaseException) -> bool:
    """Whether a failed call may have reached Redis (and so been carried out). Not when the
    connection could not be made (redis-py's "... connecting to ...", no master known to the
    sentinels) or a cluster refused the slot (``CLUSTERDOWN``, ``TRYAGAIN``, no node for it):
    then nothing was sent. Anything else (a reset, a read timeout, a demoted master) may have
    come after the command was carried out."""
    refused = MasterNotFoundError | ClusterDownError | TryAgainError | SlotNotCoveredError
    if isinstance(exc, refused):
        return False
    return "connecting to" not in str(exc)


class GaveUp(Exception):
    """Redis stayed unreachable for the whole retry budget."""

    def __init__(self, last: BaseException, *, seconds: float, attempts: int, sent: bool) -> None:
        super().__init__(str(last))
        self.last = last
        self.seconds = seconds
        self.attempts = attempts
        #: an ``XADD`` attempt may have reached Redis: the command may have been sent
        self.maybe_sent = sent

    def reason(self, where: str, url: str | None) -> str:
        tries = f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        within = f" within {self.seconds:g} s" if self.seconds > 0 else ""
        return f"cannot reach Redis at {where}{within} ({tries}): {describe_error(self.last, url)}"


class Retrier:
    """The retries of one tool run. The budget starts at a step's first failure and is whole
    again once Redis answered: each outage gets all of it."""

    def __init__(
        self,
        client: BridgeRedis,
        seconds: float,
        url: str | None = None,
        notify: Callable[[str], None] = warn,
    ) -> None:
        self.client = client
        self.seconds = seconds
        self.url = url
        self._notify = notify  # the lines "lost Redis ..." and "reached Redis again ..."
        self.attempts = 0
        self.maybe_sent = False
        self._window: RetryWindow | None = None

    @property
    def where(self) -> str:
        target = getattr(self.client, "target", None)
        return str(target) if target is not None else "Redis"

    @property
    def sentinels(self) -> bool:
        return getattr(self.client, "sentinels", None) is not None

    def sending(self, exc: BaseException) -> None:
        """An ``XADD`` of the command failed with ``exc``: note whether it may have arrived.
        (A cluster client retries on its own, so there any failure may have.)"""
        target = getattr(self.client, "target", None)
        cluster = target is not None and target.cluster
        self.maybe_sent = self.maybe_sent or cluster or reached_redis(exc)

    async def call(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        """``await op()``, again after a lost connection until the budget is spent (then
        :class:`GaveUp`). Any other Redis error (an answer: ``NOPERM``, ``WRONGTYPE``) is
        raised at once."""
        retried = False
        while True:
            self.attempts += 1
            try:
                result = await self._attempt(op, rediscover=retried)
            except CONNECTION_ERRORS as exc:
                now = anyio.current_time()
                if self._window is None:
                    self._window = RetryWindow(self.seconds, now)
                delay = self._window.next_delay(now)
                if delay is None:
                    raise GaveUp(
                        exc, seconds=self.seconds, attempts=self.attempts, sent=self.maybe_sent
                    ) from exc
                if not retried:
                    via = " through the sentinels" if self.sentinels else ""
                    left = self._window.deadline - now
                    self._notify(
                        f"lost Redis {what}: {describe_error(exc, self.url)}; "
                        f"retrying{via} for up to {left:.1f} s"
                    )
                retried = True
                await anyio.sleep(delay)
                continue
            if retried:
                self._notify(f"reached Redis again ({self.where}); went on {what}")
                self._window = None
            return result

    async def _attempt(self, op: Callable[[], Awaitable[T]], *, rediscover: bool) -> T:
        if not self.sentinels:
            return await op()
        if rediscover:
            await follow_master(self.client)
        outcome: list[T] = []
        failure: list[RedisError | OSError] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_master)
            try:
                outcome.append(await op())
            except (RedisError, OSError) as exc:  # raised below, not wrapped in a group
                failure.append(exc)
            tg.cancel_scope.cancel()
        if failure:
            raise failure[0]
        return outcome[0]

    async def _watch_master(self) -> None:
        """Every ``MASTER_CHECK_EVERY`` s, ask the sentinels where the master is; when it moved,
        ``follow_master`` drops the connections to the old one, the attempt's too."""
        while True:
            await anyio.sleep(MASTER_CHECK_EVERY)
            try:
                await follow_master(self.client)
            except CONNECTION_ERRORS:
                continue  # the sentinels are unreachable now: the attempt fails on its own


def retrier(args: argparse.Namespace, client: Any) -> Retrier:
    """The retrier of a tool run on ``client`` (made by :func:`open_client`)."""
    return Retrier(client, retry_for(args, client.target), getattr(args, "redis_url", None))


def open_client(args: argparse.Namespace) -> BridgeRedis:
    """The Redis client of a till tool, from its flags: no retries of redis-py's own (the
    tool's :class:`Retrier` retries, and must see every failure).

    What the client logs (``redis.wait_short``, ``redis.no_replica`` around a failover) goes
    to stderr, warnings and up: structlog left unconfigured would print it on stdout, among
    the JSON lines a till program reads there."""
    if not structlog.is_configured():
        from bridge.logs import configure_logging  # lazily: only a tool that talks to Redis

        configure_logging("warning", "console", sys.stderr)
    try:
        return connect(redis_target(args), retries=0)
    except ValueError as exc:
        url = getattr(args, "redis_url", None)
        raise UserError(f"invalid Redis URL: {describe_error(exc, url)}") from None


def gave_up(retry: Retrier, exc: GaveUp, exit_code: int = 2) -> UserError:
    """The one line a tool exits with when Redis stayed away: where, how long, why."""
    return UserError(exc.reason(retry.where, retry.url), exit_code)
