"""Waiting for replicas after a commit, shared by the single-node and Sentinel client
(:mod:`bridge.redis.client`) and the cluster's node connections (:mod:`bridge.redis.cluster`):
which commands are commits, and the ``WAIT`` settings and counters of one client."""

from __future__ import annotations

import time
from typing import Any

import structlog

log = structlog.get_logger("bridge.redis")

#: The commands after which ``WAIT`` runs, besides ``SET ... NX`` (see :func:`is_commit`).
COMMITS = frozenset({"EVALSHA", "EVAL", "FCALL", "XADD"})


def upper_word(arg: Any) -> str:
    """A command's name or keyword (``str`` or ``bytes``) in capitals; "" for anything else."""
    if isinstance(arg, bytes):
        return arg.decode(errors="replace").upper()
    return arg.upper() if isinstance(arg, str) else ""


def is_commit(args: tuple[Any, ...]) -> bool:
    """Is this command (name first, then its arguments) a commit?"""
    name = upper_word(args[0]) if args else ""
    if name == "SET":  # a once-only marker (a command's record, a refund's): SET ... NX
        return any(upper_word(a) == "NX" for a in args[3:])
    return name in COMMITS


#: A ``WAIT``'s timeout while the master has no replica at all (``ReplicaWait.alone``).
ALONE_WAIT_MS = 50
#: How often (at most) a client asks the sentinels whether the master is alone (seconds).
ALONE_CHECK_EVERY = 1.0
#: How long the master must have been seen alone before WAITs are bounded short (seconds).
#: Right after a replica rejoins, the sentinels may not count it promotable yet while a
#: failover promotes it all the same: the fault run lost the commits of one round (8 finals)
#: that were bounded short 1 s after "replica back" and demoted 0.1 s later.
ALONE_TRUSTED_AFTER = 5.0


class ReplicaWait:
    """``WAIT`` settings of one client, and how often a ``WAIT`` came back short.

    The timeout must outlast the moment of a failover when the old master still takes writes
    but its replica was promoted: a ``WAIT`` there is short, and what it waited for is lost
    when the sentinels demote the old master. Demoting it unblocks the ``WAIT`` with an error
    (``UNBLOCKED``), and a ``WAIT`` sent to it afterwards is refused: both are a lost
    connection, so the caller writes again on the new master.

    While the master has no replica a failover could promote (``alone``), e.g. the replica is
    down, or a killed master's replica was promoted and nothing follows it yet, each ``WAIT``
    is bounded by ``ALONE_WAIT_MS`` instead, so commits do not each pay the timeout. With
    sentinels the client asks *them* (before a commit, at most every ``ALONE_CHECK_EVERY``
    seconds), never the master: while they fail it over, the old master has no replica either
    (it was just promoted), and what it takes then is lost when it is demoted, so the master
    never counts as alone during a failover. Without sentinels the health probe sets it from
    ``INFO replication``."""

    def __init__(self, replicas: int, timeout: float) -> None:
        self.replicas = replicas
        self.timeout_ms = max(1, int(timeout * 1000))
        self.short = 0  # WAITs that came back with fewer replicas (a counter: never reset)
        self.alone = False
        self.alone_since = 0.0  # monotonic time alone was last seen to begin
        self.checked_at = -ALONE_CHECK_EVERY  # monotonic time of the last look at the sentinels
        self._was_short = False

    def set_alone(self, alone: bool) -> None:
        if alone == self.alone:
            return
        self.alone = alone
        if alone:
            self.alone_since = time.monotonic()
            log.warning(
                "redis.no_replica",
                note="no replica follows the master: commits are on it alone until one does",
            )
        else:
            log.info("redis.replica_back")

    @property
    def current_timeout_ms(self) -> int:
        """The full timeout, or ``ALONE_WAIT_MS`` once the master has been alone for
        ``ALONE_TRUSTED_AFTER`` seconds (a view younger than that may be one a failover is
        about to contradict: waiting in full is the safe side)."""
        trusted = self.alone and time.monotonic() - self.alone_since >= ALONE_TRUSTED_AFTER
        return min(ALONE_WAIT_MS, self.timeout_ms) if trusted else self.timeout_ms

    def check(self, acked: Any) -> None:
        """Count (and log on a change, not per call) a ``WAIT`` answered by too few replicas."""
        got = int(acked) if isinstance(acked, int | str | bytes) else 0
        short = got < self.replicas
        if short:
            self.short += 1
        if short != self._was_short:
            self._was_short = short
            if short:
                log.warning(
                    "redis.wait_short",
                    wanted=self.replicas,
                    acknowledged=got,
                    timeout_ms=self.timeout_ms,
                    note="commits are on the master only until a replica catches up",
                )
            else:
                log.info("redis.wait_ok", replicas=got)
