"""Redis Cluster mode (``[redis] layout = "cluster"``): the client, sharded publishing, and how
a till listens to its terminal's channel.

- The client is redis-py's ``RedisCluster``: it learns the cluster from one node, sends each
  command to the master of its key's slot, follows ``MOVED``/``ASK`` redirections and, after a
  master is lost, finds the replica that took its slots over. Every name of one deployment is
  in one slot (:mod:`bridge.redis.keys`), so the scripts, ``MULTI`` blocks and multi-key reads
  of the single-node mode run unchanged there.
- Events are published with ``SPUBLISH`` (sharded pub/sub, Redis >= 7.0), from inside the Lua
  scripts as before: Redis checks that a script's shard channel is in the slot of its keys
  (the tests prove it refuses one that is not), so a transition is still written and announced
  in one atomic step. A plain ``PUBLISH`` would be broadcast to every node of the cluster.
- With ``wait_replicas`` (default 1), a commit's node connection sends ``WAIT`` right after
  it (:class:`_ReplicaWaiting`), so it covers that very write, on the slot's master.
- A till subscribes with ``SSUBSCRIBE`` on the node that serves the channel's slot (a master or
  one of its replicas), and reads ``smessage`` pushes. When that node is lost, the subscription
  is dropped; the till asks the cluster again (one keyed read, which lets the client learn the
  new master) and subscribes there, then catches up from the durable stream as after any
  reconnect.
"""

from __future__ import annotations

from typing import Any, cast

from redis.asyncio import Connection, ConnectionPool, Redis, SSLConnection
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, ResponseError

from bridge.redis.keys import Keys
from bridge.redis.replicas import ReplicaWait, is_commit, upper_word
from bridge.redis.target import RedisTarget

#: Connections per cluster node. redis-py's cluster client does not wait for a free connection
#: (it fails with "too many connections"), so the bound is set well above the daemon's
#: concurrency instead of at the single-node pool's size.
CLUSTER_CONNECTIONS_PER_NODE = 1024


class _WriteGuard:
    """A cluster node's connection whose write on a transport closed under it is a lost
    connection. redis-py's cluster client closes every node connection when it re-learns the
    cluster (after a failed node, a failed refresh), including connections another task is
    writing on at that moment; under uvloop that write raises ``RuntimeError`` ("the handler is
    closed"), which no caller expects from Redis and which ended a daemon in the fault run.
    Closed a moment earlier, the connection has no writer any more: redis-py then raises
    ``AttributeError`` ('NoneType' object has no attribute 'writelines'), which ended a daemon
    the same way (its health probe, after a master was killed)."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)  # type: ignore[misc]  # a mixin of Connection
        except RuntimeError as exc:
            raise RedisConnectionError(f"connection closed while writing: {exc}") from exc
        except AttributeError as exc:
            if getattr(self, "_writer", None) is not None:
                raise  # a bug, not a connection closed under the write
            raise RedisConnectionError(f"connection closed before writing: {exc}") from exc


class _GuardedConnection(_WriteGuard, Connection):
    pass


class _GuardedSSLConnection(_WriteGuard, SSLConnection):
    pass


class _ReplicaWaiting:
    """A cluster node's connection that sends ``WAIT`` after a commit, on itself: ``WAIT``
    answers for the writes of the connection it is sent on, and this is the connection the
    cluster client routed the commit to (the master of the keys' slot). As in the Sentinel
    mode (:class:`bridge.redis.replicas.ReplicaWait`): a ``WAIT`` answered by too few replicas
    is counted and logged, not failed; one refused or unblocked because the node was demoted
    (a failover) fails every reply it covered as a lost connection, and the cluster client
    then sends them again to the slot's new master (a transition sent again is refused by its
    compare-and-set if it had survived).

    Packing marks the commit (``pack_command``) or the batch holding one (``pack_commands``,
    a pipeline; none with ``MULTI``, as in the Sentinel mode) and appends ``WAIT``; sending
    that very packet arms the connection; the first read then reads every covered reply and
    the ``WAIT``'s before it hands out the first, so no reply of a demoted node's write is
    given as a success. Later reads hand out the rest."""

    replica_wait: Any = None  # the client's ReplicaWait (set on the class made per client)
    _wait_packet: Any = None  # (the packed list with WAIT appended, replies it covers)
    _armed = 0  # replies covered by the WAIT sent, not read yet
    _replies: list[Any] | None = None  # read ahead: the covered replies not handed out yet
    _packing_many = False

    def _append_wait(self, packed: list[bytes], covers: int) -> list[bytes]:
        wait = self.replica_wait
        waiting: list[bytes] = super().pack_command(  # type: ignore[misc]
            "WAIT", wait.replicas, wait.current_timeout_ms
        )
        out = packed + _chunks(waiting)
        self._wait_packet = (out, covers)
        return out

    def pack_command(self, *args: Any) -> list[bytes]:
        packed: list[bytes] = super().pack_command(*args)  # type: ignore[misc]
        if self._packing_many or not is_commit(args):
            return packed
        return self._append_wait(_chunks(packed), 1)

    def pack_commands(self, commands: Any) -> list[bytes]:
        commands = [tuple(c) for c in commands]
        self._packing_many = True
        try:
            packed: list[bytes] = super().pack_commands(commands)  # type: ignore[misc]
        finally:
            self._packing_many = False
        names = {str(c[0]).upper() for c in commands if c}
        if "MULTI" in names or not any(is_commit(c) for c in commands):
            return packed
        return self._append_wait(_chunks(packed), len(commands))

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        packet, self._wait_packet = self._wait_packet, None
        await super().send_packed_command(command, check_health)  # type: ignore[misc]
        if packet is not None and command is packet[0]:
            self._armed, self._replies = packet[1], None

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        if self._replies is None and not self._armed:
            return await super().read_response(*args, **kwargs)  # type: ignore[misc]
        if self._replies is None:
            self._replies = await self._read_covered(args, kwargs)
        reply = self._replies.pop(0)
        if not self._replies:
            self._replies = None
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def _read_covered(self, args: Any, kwargs: Any) -> list[Any]:
        covers, self._armed = self._armed, 0
        replies: list[Any] = []
        for _ in range(covers + 1):  # then the WAIT's
            try:
                replies.append(await super().read_response(*args, **kwargs))  # type: ignore[misc]
            except ResponseError as exc:
                replies.append(exc)
        acked = replies.pop()
        if isinstance(acked, ResponseError):
            if not any(m in str(acked) for m in ("replica", "UNBLOCKED")):
                raise acked
            # demoted while or before we waited: what it took may be lost with it
            await self.disconnect(nowait=True)
            lost = f"the master was demoted to a replica: {acked}"
            # an error reply (a MOVED to the slot's new master, say) wrote nothing: kept
            return [r if isinstance(r, Exception) else RedisConnectionError(lost) for r in replies]
        self.replica_wait.check(acked)
        return replies

    async def disconnect(self, *args: Any, **kwargs: Any) -> None:
        self._armed, self._wait_packet, self._replies = 0, None, None
        await super().disconnect(*args, **kwargs)  # type: ignore[misc]


def _chunks(packed: Any) -> list[bytes]:
    """A packed command as a new list of chunks (a packer may answer one bytes object)."""
    return [bytes(packed)] if isinstance(packed, bytes | bytearray) else list(packed)


def _guard_writes(client: RedisCluster, replica_wait: Any = None) -> None:
    """Make every node connection, present and future, a guarded one (redis-py's cluster
    client takes no connection class: it picks Connection or SSLConnection itself), and with
    ``replica_wait`` one that waits for replicas after a commit (:class:`_ReplicaWaiting`)."""
    kwargs = client.nodes_manager.connection_kwargs
    guarded: type[Connection] = (
        _GuardedSSLConnection
        if issubclass(kwargs.get("connection_class", Connection), SSLConnection)
        else _GuardedConnection
    )
    if replica_wait is not None:
        guarded = type(
            f"_Waiting{guarded.__name__}",
            (_ReplicaWaiting, guarded),
            {"replica_wait": replica_wait},
        )
    kwargs["connection_class"] = guarded
    client.connection_kwargs["connection_class"] = guarded
    for node in [*client.startup_nodes, *client.nodes_manager.startup_nodes.values()]:
        node.connection_class = guarded


class _Cluster(RedisCluster):
    """``RedisCluster``, except that failing to learn the cluster's layout (no node answers,
    or the slots they report do not cover the cluster yet) is a lost connection, as it is for
    one server: the daemon waits it out (:mod:`bridge.redis.outage`) instead of failing a
    start or a task on redis-py's ``RedisClusterException``, which is no ``RedisError``."""

    target: RedisTarget  # set by connect_cluster, as BridgeRedis has it
    replica_wait: Any = None  # the ReplicaWait of its connections (wait_replicas > 0)

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        try:
            return await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            raise RedisConnectionError(f"cannot learn the Redis Cluster's layout: {exc}") from exc

    async def _determine_slot(self, command: str, *args: Any) -> int:
        """The slot of ``XREAD``/``XREADGROUP`` from their ``STREAMS`` keys, here.

        redis-py asks a node (``COMMAND GETKEYS``, on its default node) for the keys of every
        command with "movable keys", before its retry loop: when that node was a killed master,
        the question failed with a lost connection that asked for no topology refresh, so the
        client asked the dead node again on every read and never learned the new master. The
        daemon's command intake read nothing after a cluster failover (5 runs in 7 of
        tests/cluster/test_cluster_failover.py). Parsing them here also spares the round trip
        on every read. Other commands keep redis-py's way."""
        name = upper_word(command)
        if name in ("XREAD", "XREADGROUP"):
            keys = _stream_keys(args[3:] if name == "XREADGROUP" else args)  # after GROUP g c
            slots = {self.keyslot(k) for k in keys}
            if len(slots) == 1:
                return slots.pop()
        return await super()._determine_slot(command, *args)


def _stream_keys(options: tuple[Any, ...]) -> list[Any]:
    """The keys of ``[COUNT n] [BLOCK ms] [NOACK] STREAMS key... id...``, as Redis reads them:
    the first half of what follows the first ``STREAMS`` (an option's value is a number, so
    it cannot be one); none when malformed."""
    first = next((i for i, a in enumerate(options) if upper_word(a) == "STREAMS"), None)
    if first is None:
        return []
    rest = options[first + 1 :]
    if not rest or len(rest) % 2:
        return []
    return list(rest[: len(rest) // 2])


def connect_cluster(
    target: RedisTarget,
    *,
    max_connections: int,
    socket_timeout: float | None,
    decode_responses: bool,
) -> Redis:
    """A cluster client seeded by ``target.url`` (any node of the cluster), with the
    single-node client's timeouts, retries and TLS files (``rediss://``).

    Typed as :class:`Redis`: ``RedisCluster`` has the same command methods, and the bridge
    calls only commands that work on both (every key in one slot).
    """
    if target.wait_replicas > 0 and socket_timeout is not None:
        # a WAIT's answer comes after up to wait_timeout: the read must not give up first
        socket_timeout = max(socket_timeout, target.wait_timeout + 5.0)
    client = cast(
        _Cluster,
        _Cluster.from_url(
            target.url,
            decode_responses=decode_responses,
            max_connections=max(max_connections, CLUSTER_CONNECTIONS_PER_NODE),
            socket_connect_timeout=5.0,
            socket_timeout=socket_timeout,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
            **target.tls_kwargs(),
        ),
    )
    replica_wait = None
    if target.wait_replicas > 0:
        replica_wait = ReplicaWait(target.wait_replicas, target.wait_timeout)
    _guard_writes(client, replica_wait)
    client.target = target  # what BridgeRedis callers read (a cluster target: no sentinels)
    client.replica_wait = replica_wait  # counted by the health probe, which also sets alone
    return cast(Redis, client)


def publishing(script: str, keys: Keys) -> str:
    """``script`` as it must run in ``keys``' layout: in the cluster layout its ``PUBLISH``
    becomes ``SPUBLISH`` (same arguments, same reply). Raises if the script has no single
    ``PUBLISH`` call to change: a script edited without this in mind must fail loudly."""
    if not keys.cluster:
        return script
    call = "redis.call('PUBLISH',"
    if script.count(call) != 1:
        raise ValueError("a bridge script must publish with exactly one redis.call('PUBLISH', …)")
    return script.replace(call, "redis.call('SPUBLISH',")


# -- a till's subscription to its terminal's channel ------------------------------------------


def subscribed_type(keys: Keys) -> str:
    """The type of the push confirming a subscription (``subscribe`` / ``ssubscribe``)."""
    return "ssubscribe" if keys.cluster else "subscribe"


def message_type(keys: Keys) -> str:
    """The type of a published message's push (``message`` / ``smessage``)."""
    return "smessage" if keys.cluster else "message"


def dropped_type(keys: Keys) -> str:
    """The type of the push Redis sends when it ends a subscription itself: a cluster node
    sends ``sunsubscribe`` when the channel's slot moved away from its shard ("" for a single
    node, which never does)."""
    return "sunsubscribe" if keys.cluster else ""


async def subscribe_terminal(client: Redis, keys: Keys, terminal: str) -> PubSub:
    """Send ``SUBSCRIBE`` (single node) or ``SSUBSCRIBE`` (cluster, on the node serving the
    channel's slot) for ``terminal``'s channel. The caller waits for the confirmation
    (:func:`subscribed_type`) and closes the returned ``PubSub``."""
    channel = keys.terminal_channel(terminal)
    if not keys.cluster:
        pubsub = client.pubsub()
        await pubsub.subscribe(channel)
        return pubsub
    cluster = cast(RedisCluster, client)
    # A keyed read of the same slot first: after a failover it is what makes the client learn
    # the new master (through the lost connection, or MOVED) before we ask it where to go.
    await client.xrevrange(keys.terminal_stream(terminal), "+", "-", count=1)
    node = cluster.get_node_from_key(channel)
    if node is None:
        raise ConnectionError(f"no cluster node serves the slot of {channel}")
    kwargs: dict[str, Any] = dict(node.connection_kwargs)
    kwargs.pop("retry", None)  # the node's own: no retries (the till reconnects itself)
    pool = ConnectionPool(connection_class=node.connection_class, **kwargs)
    pubsub = PubSub(pool)
    try:
        await pubsub.ssubscribe(channel)
    except BaseException:
        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # redis-py leaves it unannotated
        raise
    return pubsub
