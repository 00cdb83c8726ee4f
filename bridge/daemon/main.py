"""``pos-bridge run``: load the config, set up logging, run the daemon until SIGTERM."""

from __future__ import annotations

import argparse

import anyio
import structlog

from bridge.config import Config, load_config
from bridge.daemon.app import Bridge
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
    anyio.run(bridge.run)
    return 0
