"""Redis key names: the contract's (tills read them) and the daemon's own."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.core.normalize import canonical_terminal_id

#: The consumer group every daemon reads ``{p}:commands`` in, so each command is done once.
COMMANDS_GROUP = "pos-bridge"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "pos"

    # -- what tills see (DESIGN.md "Redis: what tills see") --
    @property
    def commands(self) -> str:
        return f"{self.prefix}:commands"

    @property
    def commands_dead(self) -> str:
        return f"{self.prefix}:commands:dead"

    def terminal_channel(self, terminal_id: str) -> str:
        return f"{self.prefix}:terminal:{canonical_terminal_id(terminal_id)}"

    def terminal_stream(self, terminal_id: str) -> str:
        return f"{self.prefix}:terminal:{canonical_terminal_id(terminal_id)}:events"

    def terminal_active(self, terminal_id: str) -> str:
        return f"{self.prefix}:terminal:{canonical_terminal_id(terminal_id)}:active"

    def order(self, order_id: str) -> str:
        return f"{self.prefix}:order:{order_id}"

    @property
    def terminal_channel_pattern(self) -> str:
        return f"{self.prefix}:terminal:*"

    # -- the daemon's own (tills get no access: some hold events tokens) --
    def order_state(self, order_id: str) -> str:
        return f"{self.prefix}:state:{order_id}"

    def command_record(self, command_id: str) -> str:
        return f"{self.prefix}:cmd:{command_id}"

    def pending_cancel(self, order_id: str) -> str:
        return f"{self.prefix}:cancel:{order_id}"

    @property
    def pending_cancels(self) -> str:
        """Sorted set: order ids with a remembered cancel, by when it is answered anyway."""
        return f"{self.prefix}:cancels"

    def receipt_claim(self, order_id: str) -> str:
        """Claimed once by the daemon that fetches the order's automatic receipt."""
        return f"{self.prefix}:receipt:{order_id}"

    def lease(self, order_id: str) -> str:
        return f"{self.prefix}:lease:{order_id}"

    @property
    def fence_counter(self) -> str:
        return f"{self.prefix}:fence"

    def command_retrying(self, entry_id: str) -> str:
        """A commands-stream entry its handler left unacknowledged on purpose, lately."""
        return f"{self.prefix}:retrying:{entry_id}"

    def webhook_seen(self, digest: str) -> str:
        """A signed notification already handled (its ``Auth`` value's digest): replays."""
        return f"{self.prefix}:webhook:seen:{digest}"

    def daemon(self, consumer: str) -> str:
        """A running daemon's presence (see :mod:`bridge.redis.presence`)."""
        return f"{self.prefix}:daemon:{consumer}"

    def session(self, order_id: str) -> str:
        return f"{self.prefix}:session:{order_id}"

    @property
    def sessions_index(self) -> str:
        return f"{self.prefix}:sessions"
