"""``pos-bridge run``: load the config, set up logging, run the daemon until SIGTERM.

``--workers N`` (N > 1) runs N daemons of the config under a supervisor instead
(:mod:`bridge.daemon.supervisor`); ``--workers 1``, the default, is the daemon itself."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import importlib.util
import os
import signal

import anyio
import structlog

from bridge.config import Config, load_config
from bridge.daemon.memory import fix_mmap_threshold, start_tracing
from bridge.daemon.supervisor import SUPERVISOR_PID_ENV, WORKER_ENV, Supervisor
from bridge.errors import UserError
from bridge.logs import configure_logging

#: Garbage collector thresholds for a daemon holding thousands of sessions: with the defaults
#: (700, 10, 10) full collections of the sessions' heap ran every ~2 s and took 80-440 ms at
#: 1,000 streams and 1,000 events/s, the whole latency tail; with these, p99 of the added
#: latency fell from 271 ms to 31 ms in the same benchmark (README, Performance).
GC_THRESHOLDS = (50_000, 50, 100)
#: ``--workers`` at most: more processes than this on one host is a misconfiguration.
MAX_WORKERS = 64


def event_loop_options() -> dict[str, bool]:
    """uvloop where installed (a dependency; about 5 % less CPU per event than asyncio's own
    loop, measured with ``pos-bridge bench``); asyncio's loop otherwise."""
    return {"use_uvloop": importlib.util.find_spec("uvloop") is not None}


#: Linux's ``prctl`` option: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def run_command(args: argparse.Namespace) -> int:
    workers = int(getattr(args, "workers", None) or 1)
    if workers < 1 or workers > MAX_WORKERS:
        raise UserError(f"--workers must be 1..{MAX_WORKERS}")
    gc.set_threshold(*GC_THRESHOLDS)
    fix_mmap_threshold()  # large buffers (hostile input) go back to the system once freed
    start_tracing()  # $POS_BRIDGE_TRACEMALLOC: a leak hunt's tracemalloc (bridge.daemon.memory)
    config = load_config(args.config, warn=None)  # warnings are logged below, structured
    configure_logging(config.log.level, config.log.format)
    log = structlog.get_logger("bridge.daemon")
    if workers > 1:  # each worker loads the config again and logs its warnings
        supervisor = Supervisor(config, args.config, workers)
        return anyio.run(supervisor.run, backend_options=event_loop_options())
    worker = os.environ.get(WORKER_ENV)
    if worker is not None:
        structlog.contextvars.bind_contextvars(worker=int(worker) if worker.isdigit() else worker)
        _die_with_parent()
    for warning in config.warnings:
        log.warning("config.warning", message=warning)
    from bridge.daemon.app import Bridge  # here: a supervisor does without the daemon's imports

    bridge = Bridge(config)
    bridge.load_config = lambda: load_config(args.config, warn=None)

    def reloaded(new: Config) -> None:
        configure_logging(new.log.level, new.log.format)

    bridge.on_reload = reloaded
    try:
        anyio.run(bridge.run, backend_options=event_loop_options())
    except BaseExceptionGroup as group:
        # e.g. a listen port already taken, raised inside the daemon's task groups
        err = _user_error(group)
        if err is None:
            raise
        raise err from None
    return 0


def _die_with_parent() -> None:
    """A worker gets SIGTERM (and drains) when its supervisor dies, even by SIGKILL."""
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name, use_errno=True) if libc_name else None
    if libc is None or libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        structlog.get_logger("bridge.daemon").warning(
            "worker.no_parent_death_signal", note="outlives its supervisor if that is killed"
        )
        return
    supervisor = os.environ.get(SUPERVISOR_PID_ENV, "")
    if supervisor.isdigit() and os.getppid() != int(supervisor):  # it died before the call
        raise UserError("worker: the supervisor is gone", 1)


def _user_error(exc: BaseException) -> UserError | None:
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _user_error(inner)
            if found is not None:
                return found
    return None
