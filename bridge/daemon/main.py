"""``pos-bridge run``: load the config, set up logging, run the daemon until SIGTERM."""

from __future__ import annotations

import argparse

import anyio
import structlog

from bridge.config import Config, load_config
from bridge.daemon.app import Bridge
from bridge.errors import UserError
from bridge.logs import configure_logging


def run_command(args: argparse.Namespace) -> int:
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
        anyio.run(bridge.run)
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
