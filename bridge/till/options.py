"""Defaults the till tools share with the command line, and the hints they print.

Neutral ground: ``bridge.cli`` (the entry point) and the tools both import from here, so no
tool imports the entry point.
"""

from __future__ import annotations

import argparse
import shlex
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bridge.redis.keys import Keys

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "pos"


def connection_options(args: argparse.Namespace) -> list[str]:
    """``--redis-url`` and ``--prefix`` as given (password masked), for a printed command."""
    from bridge.config import mask_url_password  # lazily: the CLI imports this module

    options: list[str] = []
    url = getattr(args, "redis_url", None)
    if url and url != DEFAULT_REDIS_URL:
        options += ["--redis-url", mask_url_password(url)]
    prefix = getattr(args, "prefix", None)
    if prefix and prefix != DEFAULT_PREFIX:
        options += ["--prefix", prefix]
    if getattr(args, "cluster", False):
        options.append("--cluster")
    return options


def till_keys(args: argparse.Namespace) -> Keys:
    """The key names of ``--prefix``, in the cluster layout with ``--cluster``."""
    from bridge.redis.keys import Keys  # lazily: the CLI imports this module

    return Keys(args.prefix, "cluster" if getattr(args, "cluster", False) else "single")


def tail_hint(args: argparse.Namespace, terminal: str, since: str | None) -> str:
    """The ``pos-bridge tail`` command that follows ``terminal`` from ``since`` on, working
    as printed: it carries the Redis URL, the prefix and the stream id when there are any."""
    argv = ["pos-bridge", "tail", "--terminal", terminal]
    if since and since != "0-0":
        argv += ["--since", since]
    return shlex.join(argv + connection_options(args))
