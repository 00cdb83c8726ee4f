"""One way to open Redis, so every part of the bridge retries a dropped connection alike,
reaches it the same way (a single node, a Sentinel deployment or a Redis Cluster, TLS or not:
a :class:`~bridge.redis.target.RedisTarget`), and waits for replicas after a commit alike.

**What a commit waits for.** With ``wait_replicas`` > 0 (``[redis] wait_replicas``), every
commit (``EVALSHA``/``EVAL``, as the transition, announcement and lease scripts are; ``SET
... NX``, as the once-only markers of commands and refunds are; and ``XADD``, as a till's
command is) is followed on the same connection by
``WAIT wait_replicas timeout``: the caller's await returns only once that many replicas hold
the write (or the timeout passed). A webhook is answered and a command acknowledged after
their commit returns, so what the bridge acknowledged is on a replica a failover can promote.
A ``WAIT`` that times out is counted and logged (``redis.wait_short``), not failed: the write
is on the master, and refusing payments because a replica is slow would stop the shop. An
operator who prefers refusal sets ``min-replicas-to-write`` on the master.
"""

from __future__ import annotations

import time
from typing import Any, cast, overload

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from bridge.redis.cluster import connect_cluster
from bridge.redis.replicas import ALONE_CHECK_EVERY, ReplicaWait, is_commit
from bridge.redis.target import RedisTarget

__all__ = [
    "BridgeRedis",
    "RedisTarget",
    "connect",
    "errors_as_values",
    "resp",
    "roundtrip",
    "stream_entries",
    "text",
]


def _promotable(replica: dict[str, Any]) -> bool:
    """A replica the sentinels see up and reporting itself a replica. Not one that still says
    it is a master: right after a failover that is the old master, not yet demoted, and the
    new master's writes must not wait (seconds, until the demotion) for it. (Its
    ``master-link-status`` in their view lags by up to their INFO period, so it is not asked:
    one that is up but resyncing counts, and commits wait for it, the safe side.)"""
    down = replica.get("is_sdown") or replica.get("is_odown") or replica.get("is_disconnected")
    return not down and replica.get("role-reported", "slave") == "slave"


async def sentinels_say_alone(sentinel: Sentinel, master_name: str) -> bool:
    """Do the sentinels know no replica of the master they could promote (and are they not
    failing it over)? Not known (no sentinel answers) is "no": commits then wait in full."""
    for node in sentinel.sentinels:
        try:
            # parsed by redis-py's SENTINEL callbacks; execute_command is unannotated there
            master: Any = await node.execute_command("SENTINEL MASTER", master_name)  # type: ignore[no-untyped-call]
            replicas: Any = await node.execute_command("SENTINEL SLAVES", master_name)  # type: ignore[no-untyped-call]
        except (RedisError, OSError):
            continue
        if "failover_in_progress" in str(master.get("flags", "")):
            return False
        return not any(_promotable(r) for r in replicas)
    return False


class _WaitingPipeline(Pipeline):
    """A pipeline that ends with ``WAIT`` when it holds a commit (never inside MULTI)."""

    replica_wait: ReplicaWait | None = None
    owner: _WaitingRedis | None = None

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        wait = self.replica_wait
        if (
            wait is None
            or self.is_transaction
            or not any(is_commit(args) for args, _ in self.command_stack)
        ):
            return await super().execute(raise_on_error)
        if self.owner is not None:
            await self.owner.check_alone()
        # redis-py leaves it unannotated; it queues the command on this pipeline
        self.pipeline_execute_command("WAIT", wait.replicas, wait.current_timeout_ms)  # type: ignore[no-untyped-call]
        results = await super().execute(raise_on_error=False)
        acked = results.pop()
        if isinstance(acked, ResponseError):
            if not any(m in str(acked) for m in ("replica", "UNBLOCKED")):
                raise acked
            # the node was demoted (a failover) while or before we waited: what we wrote may
            # be lost with it. Forget its connections, as redis-py does on READONLY, and let
            # the caller write again on the new master, as after a lost connection.
            await self.connection_pool.disconnect(inuse_connections=False)
            raise RedisConnectionError(f"the master was demoted to a replica: {acked}")
        wait.check(acked)
        if raise_on_error:
            error = next((r for r in results if isinstance(r, Exception)), None)
            if error is not None:
                raise error
        return results


class BridgeRedis(Redis):
    """The client :func:`connect` returns: a ``Redis`` that knows its target and closes its
    sentinels with itself. Without ``wait_replicas`` it is redis-py's client unchanged (no
    cost on the single-node path); with it, :class:`_WaitingRedis`."""

    target: RedisTarget
    replica_wait: ReplicaWait | None = None
    sentinels: Sentinel | None = None  # closed with the client

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            if self.sentinels is not None:
                await self.sentinels.aclose()


class _WaitingRedis(BridgeRedis):
    """A client that waits for replicas after a commit (see the module docstring)."""

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = _WaitingPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )
        pipe.replica_wait = self.replica_wait
        pipe.owner = self
        return pipe

    async def check_alone(self) -> None:
        """With sentinels, ask them whether the master is alone (see ``ReplicaWait``), at most
        every ``ALONE_CHECK_EVERY`` seconds."""
        wait = self.replica_wait
        now = time.monotonic()
        if wait is None or self.sentinels is None or now - wait.checked_at < ALONE_CHECK_EVERY:
            return
        wait.checked_at = now  # before the await: concurrent commits do not all ask
        await follow_master(self)
        wait.set_alone(await sentinels_say_alone(self.sentinels, self.target.master_name))

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if self.replica_wait is None or not is_commit(args):
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call] # redis-py: unannotated
        async with self.pipeline(transaction=False) as pipe:  # one connection: WAIT covers it
            pipe.pipeline_execute_command(*args, **options)  # type: ignore[no-untyped-call] # redis-py: unannotated
            return (await pipe.execute())[0]


async def follow_master(client: BridgeRedis) -> tuple[str, int]:
    """Ask the sentinels where the master is; when it moved, drop every connection to the old
    one, those in use too: a commit blocked there in ``WAIT`` (the old master takes writes
    until the sentinels demote it, seconds later, and loses them then) fails as a lost
    connection and is made again on the new master at once, instead of when the demotion
    unblocks it. Returns the master's address."""
    pool: Any = client.connection_pool
    before = pool.master_address
    host, port = await pool.get_master_address()  # also drops idle connections when it moved
    if before is not None and (host, port) != tuple(before):
        await pool.disconnect(inuse_connections=True)
    return host, port


#: Seconds a reply may take before the connection counts as lost (a read that waits longer).
SOCKET_TIMEOUT = 10.0
#: Seconds a connection may take to open.
CONNECT_TIMEOUT = 5.0
#: Retries of a command on a new connection after a lost one (refused, reset, closed: a Redis
#: restart), and their backoff. Not after a timeout: against a Redis that went silent (a black
#: hole: no answer, no refusal) each retry would wait out its connect timeout too, and the
#: daemon took 25 s to say ``redis.unreachable`` with a 10 s socket timeout (the fault
#: runner's ``blackhole-redis``); the callers wait out an outage themselves, with backoff
#: (``bridge.redis.outage``).
RETRIES = 3
RETRY_BACKOFF_BASE = 0.05
RETRY_BACKOFF_CAP = 1.0


def effective_socket_timeout(target: RedisTarget, socket_timeout: float = SOCKET_TIMEOUT) -> float:
    """The socket timeout :func:`connect` gives ``target``'s connections: a ``WAIT``'s answer
    comes after up to ``wait_timeout``, so with ``wait_replicas`` the read waits that long too."""
    if target.wait_replicas > 0:
        return max(socket_timeout, target.wait_timeout + 5.0)
    return socket_timeout


def outage_detection_bound(target: RedisTarget) -> float:
    """The longest a command of :func:`connect`'s client of ``target`` (not a cluster's) takes
    to fail when Redis went silent: a reply waited for (the socket timeout) or a connection
    that does not open (the connect timeout), never retried. So the longest the daemon takes to
    say ``redis.unreachable`` in a black hole."""
    return max(effective_socket_timeout(target), CONNECT_TIMEOUT)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's master-following pool, blocking like the single-node one under a burst."""


def _info_scalar(value: str) -> Any:
    try:
        return float(value) if "." in value else int(value)
    except ValueError:
        return value


def _info_value(value: str) -> Any:
    if "," not in value and "=" not in value:
        return _info_scalar(value)
    if "=" not in value:
        return [_info_scalar(v) for v in value.split(",") if v]
    out: dict[str, Any] = {}
    for item in value.split(","):
        if "=" in item:
            key, sub = item.rsplit("=", 1)
            out[key] = _info_scalar(sub)
        elif item:
            out[item] = True
    return out


def parse_info(response: bytes | str, **_options: Any) -> dict[str, Any]:
    """``INFO``'s reply as redis-py's own parser reads it (``field:value`` lines; numbers as
    numbers, ``a=1,b=2`` as a dict, ``a,b`` as a list), without its cost to a daemon that asks
    every second (the health probe): redis-py's parser is a recursive closure, a reference
    cycle left to the garbage collector on every call (3 objects a call, freed only by a
    collection, which ``bridge.daemon.main.GC_THRESHOLDS`` makes rare)."""
    text = response.decode("utf-8", "replace") if isinstance(response, bytes) else response
    info: dict[str, Any] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if ":" not in line:
            info.setdefault("__raw__", []).append(line)
            continue
        key, value = line.rsplit(":", 1) if line.startswith("cmdstat_host:") else line.split(":", 1)
        if key == "module":
            info.setdefault("modules", []).append(_info_value(value))
        else:
            info[key] = _info_value(value)
    return info


def connect(
    target: RedisTarget | str,
    *,
    max_connections: int = 64,
    socket_timeout: float | None = SOCKET_TIMEOUT,
    decode_responses: bool = True,
    retries: int | None = None,
) -> BridgeRedis:
    """A client of ``target`` (a :class:`RedisTarget`, or a bare URL: a single node) that
    reconnects a dropped pooled connection instead of failing the first call after a Redis
    restart, and, with sentinels, follows the master through a failover (a connection to a
    demoted master fails as a lost connection and is retried on the new one). Longer outages
    are the caller's to handle (and to log once).

    ``retries``: how often redis-py itself makes a call again after a lost connection (default
    ``RETRIES``; a till tool passes 0: it retries on its own, and must see every failure of
    its ``XADD``).

    The pool blocks: under a burst, a caller waits (up to ``socket_timeout``) for one of the
    ``max_connections`` connections instead of failing with "too many connections".
    ``decode_responses=False`` is for reading what others wrote (the commands stream): bytes
    that are not UTF-8 must not fail the read. A cluster target gets redis-py's cluster
    client (:func:`bridge.redis.cluster.connect_cluster`; no sentinels, no ``WAIT``: the
    target refuses both), typed as ``BridgeRedis`` as the bridge calls it.
    """
    t = RedisTarget.of(target)
    if t.cluster:
        cluster = connect_cluster(
            t,
            max_connections=max_connections,
            socket_timeout=socket_timeout,
            decode_responses=decode_responses,
        )
        cluster.set_response_callback("INFO", parse_info)
        return cast(BridgeRedis, cluster)
    if socket_timeout is not None:
        socket_timeout = effective_socket_timeout(t, socket_timeout)
    common: dict[str, Any] = {
        "decode_responses": decode_responses,
        "max_connections": max_connections,
        "timeout": socket_timeout,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": socket_timeout,
        "health_check_interval": 30,
        "retry": Retry(
            ExponentialBackoff(cap=RETRY_BACKOFF_CAP, base=RETRY_BACKOFF_BASE),
            retries=RETRIES if retries is None else retries,
            supported_errors=(RedisConnectionError,),  # not a timeout: see RETRIES
        ),
        "retry_on_error": [RedisConnectionError],
        **t.tls_kwargs(),
    }
    client: BridgeRedis
    cls = _WaitingRedis if t.wait_replicas > 0 else BridgeRedis
    if t.sentinel:
        sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore] # redis-py: unannotated
            list(t.sentinels),
            sentinel_kwargs={
                "socket_connect_timeout": 5.0,
                "socket_timeout": 5.0,
                "username": t.sentinel_username,
                "password": t.sentinel_password,
                **({"ssl": True, **t.tls_kwargs()} if t.tls else {}),
            },
        )
        client = cast(
            BridgeRedis,
            sentinel.master_for(
                t.master_name,
                redis_class=cls,
                connection_pool_class=_BlockingSentinelPool,
                ssl=t.tls,
                **t.node_kwargs(),
                **common,
            ),
        )
        client.sentinels = sentinel
    else:
        pool = BlockingConnectionPool.from_url(t.url, **common)
        # the client owns the pool: aclose() closes both
        client = cast(BridgeRedis, cls.from_pool(pool))
    client.target = t
    client.set_response_callback("INFO", parse_info)
    if t.wait_replicas > 0:
        client.replica_wait = ReplicaWait(t.wait_replicas, t.wait_timeout)
    return client


async def roundtrip(client: Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Write ``commands`` at once on a pooled connection and read every reply (an error reply
    as a value, like a pipeline with ``raise_on_error=False``), packed by :func:`resp`, without
    a pipeline object and its hooks. Arguments are str or int. Replies are Redis's own, not
    parsed by redis-py's callbacks (``SET`` answers "OK", not True)."""
    pool = getattr(client, "connection_pool", None)
    # A pipeline instead for a client without one pool of plain connections (a cluster
    # client), and for one that waits for replicas after a commit (its pipeline ends with
    # WAIT: _WaitingPipeline); a raw write here would skip that WAIT.
    if pool is None or getattr(client, "replica_wait", None) is not None:
        async with client.pipeline(transaction=False) as pipe:
            for command in commands:
                # the command itself, not pipe.evalsha(): a cluster client (no one pool)
                # refuses that method (keys could span slots; ours never do: Keys)
                pipe.execute_command(*command)
            return errors_as_values(list(await pipe.execute(raise_on_error=False)))
    packed = b"".join(map(resp, commands))
    conn = await pool.get_connection()

    async def attempt() -> list[Any]:
        await conn.send_packed_command(packed)
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return errors_as_values(replies)

    async def dropped(_error: Exception) -> None:
        await conn.disconnect()

    try:
        replies: list[Any] = await conn.retry.call_with_retry(attempt, dropped)
    finally:
        await pool.release(conn)
    return replies


def resp(command: tuple[Any, ...]) -> bytes:
    """One command in Redis's wire format (RESP arrays of bulk strings). redis-py's packer
    re-joins its growing buffer once per argument and checks each twice: with a transition's
    ~20 arguments, two of them JSON documents, that was a third of a commit's CPU, and most of
    a lease renewal's (thousands of arguments). Arguments are str or int."""
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            raise TypeError(f"a command argument of type {type(arg).__name__}")
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


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


def errors_as_values(replies: list[Any]) -> list[Any]:
    """``replies`` (a pipeline's with ``raise_on_error=False``, or read one by one), each error
    among them without its traceback. An error reply kept as a value is in a reference cycle
    otherwise: its traceback holds the frame that reads the replies, which holds the list that
    holds the error, so it (and the frame) waited for a full collection, which the daemon's
    thresholds make rare (``bridge.daemon.main.GC_THRESHOLDS``). An error returned as a value
    is raised again by whoever needs it, from there."""
    for reply in replies:
        if isinstance(reply, BaseException):
            reply.__traceback__ = None
    return replies
