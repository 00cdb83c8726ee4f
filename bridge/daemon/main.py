"""``pos-bridge run``: load the config, set up logging, run the daemon until SIGTERM."""

from __future__ import annotations

import argparse
import gc
import importlib.util

import anyio
import structlog

from bridge.config import Config, load_config
from bridge.daemon.app import Bridge
from bridge.errors import UserError
from bridge.logs import configure_logging

#: Garbage collector thresholds for a daemon holding thousands of sessions: with the defaults
#: (700, 10, 10) full collections of the sessions' heap ran every ~2 s and took 80-440 ms at
#: 1,000 streams and 1,000 events/s, the whole latency tail; with these, p99 of the added
#: latency fell from 271 ms to 31 ms in the same benchmark (README, Performance).
GC_THRESHOLDS = (50_000, 50, 100)


def event_loop_options() -> dict[str, bool]:
    """uvloop where installed (a dependency; about 5 % less CPU per event than asyncio's own
    loop, measured with ``pos-bridge bench``); asyncio's loop otherwise."""
    return {"use_uvloop": importlib.util.find_spec("uvloop") is not None}


def run_command(args: argparse.Namespace) -> int:
    gc.set_threshold(*GC_THRESHOLDS)
    config = load_config(args.config, warn=None)  # warnings are logged below, structured
    configure_logging(config.log.level, config.log.format)
    log = structlog.get_logger("bridge.daemon")
    for warning in config.warnings:
        log.warning("config.warning", message=warning)
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


def _user_error(exc: BaseException) -> UserError | None:
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _user_error(inner)
            if found is not None:
                return found
    return None
