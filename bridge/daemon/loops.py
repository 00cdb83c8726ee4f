"""The daemon's background loops, kept alive: a bug in one must not end the daemon.

Every long-lived loop of the daemon (the Redis probe, lease renewal and the daemon's presence
heartbeat, the orphan watch, the payments' timers, the command intake, the cancel sweep,
rediscovery, the HTTP and webhook servers, systemd's watchdog and STATUS, the signal handler)
runs under :func:`supervise`: an unexpected exception is logged (``loop.crashed``, with the
loop's name and the exception's type), counted (``pos_bridge_background_restarts_total``) and
the loop started again after an exponential, capped, jittered backoff (``core.backoff``).
Cancellation is not an ``Exception``: a stopping daemon cancels its loops as before, and a
``UserError`` (a configuration or listen error: restarting cannot fix it) still ends the daemon.

**Test only**: ``POS_BRIDGE_TEST_FAULTS`` (e.g. ``redis_probe,lease_renewal:2``) makes each named
loop raise :class:`InjectedFault` the first N times (default 1) it reaches its
:func:`fault_point`, so tests can crash every loop of a real daemon. Never set it in production.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup

from bridge import metrics
from bridge.core.backoff import Backoff
from bridge.errors import UserError

log = structlog.get_logger("bridge.loops")

#: Test only: the loops to crash, ``name[:times]`` comma-separated.
FAULTS_ENV = "POS_BRIDGE_TEST_FAULTS"
RESTART_INITIAL = 0.1
RESTART_CAP = 30.0
#: A loop that ran this long before it failed is restarted after the shortest delay again.
STABLE_AFTER = 60.0


class InjectedFault(RuntimeError):
    """Raised at a loop's fault point when ``POS_BRIDGE_TEST_FAULTS`` names it (tests only)."""


def parse_faults(value: str) -> dict[str, int]:
    faults: dict[str, int] = {}
    for item in value.split(","):
        name, _, times = item.strip().partition(":")
        if name:
            faults[name] = int(times) if times.isdigit() else 1
    return faults


_faults = parse_faults(os.environ.get(FAULTS_ENV, ""))


def fault_point(loop: str) -> None:
    """Where a test crashes ``loop`` (``POS_BRIDGE_TEST_FAULTS``); nothing otherwise."""
    if _faults and _faults.get(loop, 0) > 0:
        _faults[loop] -= 1
        raise InjectedFault(f"fault injected into {loop} ({FAULTS_ENV})")


async def supervise(loop: str, body: Callable[..., Awaitable[Any]], *args: Any) -> None:
    """Run ``body(*args)`` until it returns; restart it (with backoff) whenever it raises."""
    backoff = Backoff(initial=RESTART_INITIAL, cap=RESTART_CAP)
    while True:
        started = anyio.current_time()
        try:
            await body(*args)
            return
        except UserError:
            raise  # fatal by design: a configuration or listen error ends the daemon
        except Exception as exc:  # noqa: BLE001 - logged, counted and restarted: the point
            if anyio.current_time() - started >= STABLE_AFTER:
                backoff.reset()
            delay = backoff.next()
            metrics.BACKGROUND_RESTARTS.labels(loop).inc()
            log.error(
                "loop.crashed",
                loop=loop,
                error_type=_error_type(exc),
                restart_in_s=round(delay, 3),
                exc_info=exc,
            )
        await anyio.sleep(delay)
        log.info("loop.restarted", loop=loop)


def _error_type(exc: BaseException) -> str:
    """The failure's type; that of the one error inside a task group's exception group."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return type(exc).__name__


def start(tg: TaskGroup, loop: str, body: Callable[..., Awaitable[Any]], *args: Any) -> None:
    """:func:`supervise` ``body(*args)`` in ``tg``."""
    tg.start_soon(supervise, loop, body, *args, name=loop)
