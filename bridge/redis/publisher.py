"""The Redis side of the state machine: decide from the stored order state, commit atomically.

The pure core (:mod:`bridge.core.state`) decides; ``transition.lua`` commits a decision only if
the order's stored version is still the one it was decided from, and otherwise hands back the
newer state so the decision is made again from it. Two daemons, or a stream and a webhook,
racing on one order therefore publish each transition once, with one ``event_id``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from redis.asyncio import Redis

from bridge.core.events import Event, EventType
from bridge.core.state import Decision, OrderState
from bridge.redis.keys import Keys

_MAX_RACES = 16


def _lua(name: str) -> str:
    return resources.files("bridge.redis").joinpath(name).read_text()


TRANSITION_LUA = _lua("transition.lua")
ANNOUNCE_LUA = _lua("announce.lua")


class CommitRaceError(RuntimeError):
    """The order's state kept changing under us: far more racers than exist in practice."""


@dataclass(frozen=True, slots=True)
class Recorded:
    """What :meth:`EventStore.record` did: the decision taken and the stream ids it wrote."""

    decision: Decision
    stream_ids: tuple[str, ...] = ()

    @property
    def published(self) -> tuple[Event, ...]:
        return self.decision.events if self.stream_ids else ()


def _active_action(before: OrderState | None, decision: Decision) -> str:
    if any(e.type is EventType.ORDER_CREATED for e in decision.events):
        return "set"
    if decision.state is not None and decision.state.final and not (before and before.final):
        return "clear"
    return ""


class EventStore:
    """Order states, durable terminal streams, order keys and channels in one Redis."""

    def __init__(
        self, client: Redis, keys: Keys, *, stream_maxlen: int, order_ttl: float
    ) -> None:
        self._client = client
        self.keys = keys
        self._stream_maxlen = str(stream_maxlen)
        self._ttl_ms = str(int(order_ttl * 1000))
        self._transition = client.register_script(TRANSITION_LUA)
        self._announce = client.register_script(ANNOUNCE_LUA)

    async def load(self, order_id: str) -> OrderState | None:
        raw = await self._client.hget(self.keys.order_state(order_id), "state")
        return OrderState.from_json(raw) if raw else None

    async def commit(
        self, before: OrderState | None, decision: Decision
    ) -> tuple[bool, tuple[str, ...], OrderState | None]:
        """Commit ``decision`` if the stored state is still ``before``.

        Returns (applied, stream ids, the stored state when not applied).
        """
        state = decision.state
        assert state is not None and decision.events, "only a publishing decision is committed"
        keys = self.keys
        result = await self._transition(
            keys=[
                keys.order_state(state.order_id),
                keys.terminal_stream(state.terminal_id),
                keys.order(state.order_id),
                keys.terminal_active(state.terminal_id),
            ],
            args=[
                before.seq if before else 0,
                state.seq,
                state.to_json(),
                self._ttl_ms,
                self._stream_maxlen,
                keys.terminal_channel(state.terminal_id),
                _active_action(before, decision),
                state.order_id,
                *(event.to_json() for event in decision.events),
            ],
        )
        if int(result[0]) == 1:
            return True, tuple(_text(r) for r in result[1:]), None
        stored = _text(result[2])
        return False, (), OrderState.from_json(stored) if stored else None

    async def record(
        self,
        order_id: str,
        decide: Callable[[OrderState | None], Decision],
        known: OrderState | None = None,
        *,
        trust_known: bool = False,
    ) -> Recorded:
        """Decide from the stored state of ``order_id`` and commit, deciding again on a race.

        ``known`` with ``trust_known`` skips the first read (the caller's cached state is
        usually current: one daemon owns an order); a wrong guess costs one more round trip.
        """
        state = known if trust_known else await self.load(order_id)
        for _ in range(_MAX_RACES):
            decision = decide(state)
            if not decision.publishes:
                return Recorded(decision)
            applied, ids, stored = await self.commit(state, decision)
            if applied:
                return Recorded(decision, ids)
            state = stored
        raise CommitRaceError(f"order {order_id}: state changed {_MAX_RACES} times while committing")

    async def announce(self, event: Event, once_key: str) -> str | None:
        """Publish an event that changes no order (``command.failed``), at most once per key."""
        keys = self.keys
        result = await self._announce(
            keys=[once_key, keys.terminal_stream(event.terminal_id)],
            args=[
                self._ttl_ms,
                self._stream_maxlen,
                keys.terminal_channel(event.terminal_id),
                event.to_json(),
            ],
        )
        return _text(result) if result else None


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

