"""Defaults the till tools share with the command line, and the hints they print.

Neutral ground: ``bridge.cli`` (the entry point) and the tools both import from here, so no
tool imports the entry point.
"""

from __future__ import annotations

import argparse
import os
import shlex
from typing import TYPE_CHECKING, Any

from bridge.errors import UserError

if TYPE_CHECKING:
    from bridge.redis.keys import Keys
    from bridge.redis.target import RedisTarget

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "pos"

#: The ``[redis]`` keys a till tool takes as flags (``--tls-ca-file`` for ``tls_ca_file``...),
#: besides ``--redis-url``, ``--sentinel`` (repeatable: ``sentinels``) and ``--cluster``
#: (``layout = "cluster"``).
REDIS_FLAG_KEYS = (
    "master_name",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "sentinel_username",
    "sentinel_password_env",
    "wait_replicas",
    "wait_timeout",
)


def redis_section(args: argparse.Namespace, url: str | None = None) -> dict[str, Any]:
    """The ``[redis]`` table the Redis flags of a till tool (or the demo) describe."""
    section: dict[str, Any] = {"url": url or getattr(args, "redis_url", None) or DEFAULT_REDIS_URL}
    if getattr(args, "sentinel", None):
        section["sentinels"] = list(args.sentinel)
    if getattr(args, "cluster", False):
        section["layout"] = "cluster"
        # a tool opts in (--wait-replicas 1), unlike the daemon: it has no health probe to
        # tell a cluster without replicas, where each WAIT would last its whole timeout
        section["wait_replicas"] = 0
    for key in REDIS_FLAG_KEYS:
        value = getattr(args, key, None)
        if value is not None and value != "":
            section[key] = value
    return section


def redis_target(args: argparse.Namespace) -> RedisTarget:
    """Where a till tool's Redis is, from its flags, checked as the daemon checks ``[redis]``
    (TLS files readable, the sentinel password's variable set): one line if not."""
    from pydantic import ValidationError

    from bridge.config import RedisConfig

    try:
        cfg = RedisConfig.model_validate(redis_section(args))
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'redis'}: {e['msg']}" for e in exc.errors()
        )
        raise UserError(f"invalid Redis options: {reasons}") from None
    problems = cfg.resolve_files(os.environ)
    if problems:
        raise UserError("invalid Redis options: " + "; ".join(f"{f}: {r}" for f, r in problems))
    return cfg.target


def connection_options(args: argparse.Namespace) -> list[str]:
    """``--redis-url`` and ``--prefix`` as given (password masked), for a printed command."""
    from bridge.config import mask_url_password  # lazily: the CLI imports this module

    options: list[str] = []
    url = getattr(args, "redis_url", None)
    if url and url != DEFAULT_REDIS_URL:
        options += ["--redis-url", mask_url_password(url)]
    for sentinel in getattr(args, "sentinel", None) or ():
        options += ["--sentinel", sentinel]
    for key in REDIS_FLAG_KEYS:
        value = getattr(args, key, None)
        if value is not None and value != "":
            options += ["--" + key.replace("_", "-"), str(value)]
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
