"""Redis key names: the contract's (tills read them) and the daemon's own.

Every key and channel name of the bridge is made here, and every Lua script gets the names it
touches as ``KEYS`` (and its channel as an argument): no script builds a name itself.

Two layouts (``[redis] layout``):

- ``single`` (the default): names start with the prefix, ``pos:order:till7-1``.
- ``cluster``: names start with the prefix as a *hash tag*, ``{pos}:order:till7-1``. Redis
  Cluster hashes only what is inside the braces, so every key and shard channel of one
  deployment is in one slot: a transition (``transition.lua``: the order's state, its order
  key, its lease, its terminal's stream and active key, then ``SPUBLISH`` on the terminal's
  channel), ``announce.lua``, the ``MULTI`` blocks and multi-key reads stay atomic and legal.

Why one tag per deployment and not one per terminal or per order: an order's keys and its
terminal's stream and channel are written together, so a per-order tag cannot work, and a
per-terminal one would hide ``{p}:order:{id}`` from whoever knows only the order id (a till's
``cancel --order-id``, a webhook naming its order, the daemon's registry of payments in
flight, whose index lists order ids). The price: one deployment's keys live on one master (and
its replicas); deployments with different prefixes spread over the cluster's masters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bridge.core.normalize import canonical_terminal_id

#: The consumer group every daemon reads ``{p}:commands`` in, so each command is done once.
COMMANDS_GROUP = "pos-bridge"

Layout = Literal["single", "cluster"]
LAYOUTS: tuple[Layout, ...] = ("single", "cluster")


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "pos"
    layout: Layout = "single"
    #: What every name starts with: ``prefix``, or ``{prefix}`` in the cluster layout.
    root: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown Redis key layout {self.layout!r}")
        if self.layout == "cluster" and (
            not self.prefix or "{" in self.prefix or "}" in self.prefix
        ):
            raise ValueError("a prefix used as a hash tag must be non-empty, without { or }")
        root = f"{{{self.prefix}}}" if self.layout == "cluster" else self.prefix
        object.__setattr__(self, "root", root)  # frozen: set once, here

    @property
    def cluster(self) -> bool:
        """Names for a Redis Cluster: one hash slot, channels used with ``SSUBSCRIBE``."""
        return self.layout == "cluster"

    # -- what tills see (README, "What a till does") --
    @property
    def commands(self) -> str:
        return f"{self.root}:commands"

    @property
    def commands_dead(self) -> str:
        return f"{self.root}:commands:dead"

    def terminal_channel(self, terminal_id: str) -> str:
        return f"{self.root}:terminal:{canonical_terminal_id(terminal_id)}"

    def terminal_stream(self, terminal_id: str) -> str:
        return f"{self.root}:terminal:{canonical_terminal_id(terminal_id)}:events"

    def terminal_active(self, terminal_id: str) -> str:
        return f"{self.root}:terminal:{canonical_terminal_id(terminal_id)}:active"

    def order(self, order_id: str) -> str:
        return f"{self.root}:order:{order_id}"

    @property
    def terminal_channel_pattern(self) -> str:
        """For ``PSUBSCRIBE`` (single layout only: sharded pub/sub has no patterns)."""
        return f"{self.root}:terminal:*"

    @property
    def terminal_stream_prefix(self) -> str:
        """What every terminal stream's name starts with (``SCAN`` for them: escape it)."""
        return f"{self.root}:terminal:"

    def terminal_of_stream(self, stream: str) -> str | None:
        """The terminal id in a terminal stream's name, or None for another name."""
        head, tail = self.terminal_stream_prefix, ":events"
        if not (stream.startswith(head) and stream.endswith(tail)):
            return None
        terminal = stream[len(head) : -len(tail)]
        return terminal or None

    # -- the daemon's own (tills get no access: some hold events tokens) --
    def order_state(self, order_id: str) -> str:
        return f"{self.root}:state:{order_id}"

    def command_record(self, command_id: str) -> str:
        return f"{self.root}:cmd:{command_id}"

    def pending_cancel(self, order_id: str) -> str:
        return f"{self.root}:cancel:{order_id}"

    @property
    def pending_cancels(self) -> str:
        """Sorted set: order ids with a remembered cancel, by when it is answered anyway."""
        return f"{self.root}:cancels"

    def receipt_claim(self, order_id: str) -> str:
        """Claimed once by the daemon that fetches the order's automatic receipt."""
        return f"{self.root}:receipt:{order_id}"

    def lease(self, order_id: str) -> str:
        return f"{self.root}:lease:{order_id}"

    @property
    def fence_counter(self) -> str:
        return f"{self.root}:fence"

    def command_retrying(self, entry_id: str) -> str:
        """A commands-stream entry its handler left unacknowledged on purpose, lately."""
        return f"{self.root}:retrying:{entry_id}"

    def webhook_seen(self, digest: str) -> str:
        """A signed notification already handled (its ``Auth`` value's digest): replays."""
        return f"{self.root}:webhook:seen:{digest}"

    def daemon(self, consumer: str) -> str:
        """A running daemon's presence (see :mod:`bridge.redis.presence`)."""
        return f"{self.root}:daemon:{consumer}"

    def session(self, order_id: str) -> str:
        return f"{self.root}:session:{order_id}"

    @property
    def sessions_index(self) -> str:
        return f"{self.root}:sessions"
