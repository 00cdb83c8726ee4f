"""One way to open Redis, so every part of the bridge retries a dropped connection alike."""

from __future__ import annotations

from typing import Any, overload

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bridge.redis.cluster import connect_cluster


def connect(
    url: str,
    *,
    max_connections: int = 64,
    socket_timeout: float | None = 10.0,
    decode_responses: bool = True,
    cluster: bool = False,
) -> Redis:
    """A client that reconnects a dropped pooled connection instead of failing the first call
    after a Redis restart. Longer outages are the caller's to handle (and to log once).

    The pool blocks: under a burst, a caller waits (up to ``socket_timeout``) for one of the
    ``max_connections`` connections instead of failing with "too many connections".
    ``decode_responses=False`` is for reading what others wrote (the commands stream): bytes
    that are not UTF-8 must not fail the read. ``cluster``: ``url`` is a node of a Redis
    Cluster (:mod:`bridge.redis.cluster`).
    """
    if cluster:
        return connect_cluster(
            url,
            max_connections=max_connections,
            socket_timeout=socket_timeout,
            decode_responses=decode_responses,
        )
    pool = BlockingConnectionPool.from_url(
        url,
        decode_responses=decode_responses,
        max_connections=max_connections,
        timeout=socket_timeout,
        socket_connect_timeout=5.0,
        socket_timeout=socket_timeout,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes both


@overload
def text(reply: bytes | str) -> str: ...
@overload
def text(reply: bytes | str | None) -> str | None: ...
def text(reply: bytes | str | None) -> str | None:
    """A string reply of a client made by :func:`connect`, typed as what it is.

    redis-py types replies ``bytes | str`` whatever the client decodes; ``connect`` sets
    ``decode_responses=True``, so bytes here would be a client made some other way.
    """
    if isinstance(reply, bytes):
        raise TypeError("a Redis client without decode_responses=True")
    return reply


def stream_entries(entries: Any) -> list[tuple[str, dict[str, str]]]:
    """The entries of an ``XRANGE`` reply, or of one stream of an ``XREAD(GROUP)`` reply, typed.

    An entry deleted after its delivery (``XREADGROUP`` of a pending id answers its fields with
    nil) is left out. redis-py types these replies as unions of every protocol's shape.
    """
    return [(text(eid), fields) for eid, fields in entries or () if fields is not None]
