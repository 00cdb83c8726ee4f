"""The Redis side of the state machine: decide from the stored order state, commit atomically.

The pure core (:mod:`bridge.core.state`) decides; ``transition.lua`` commits a decision only if
the order's stored version is still the one it was decided from, and otherwise hands back the
newer state so the decision is made again from it. Two daemons, or a stream and a webhook,
racing on one order therefore publish each transition once, with one ``event_id``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from bridge.core.events import Event, EventType
from bridge.core.state import Decision, OrderState
from bridge.redis.client import roundtrip
from bridge.redis.cluster import publishing
from bridge.redis.coalesce import Coalescer, Pending
from bridge.redis.keys import Keys

_MAX_RACES = 16


def _lua(name: str) -> str:
    return resources.files("bridge.redis").joinpath(name).read_text()


TRANSITION_LUA = _lua("transition.lua")
ANNOUNCE_LUA = _lua("announce.lua")


class LeaseLost(RuntimeError):
    """The session's lease on the order is gone (another daemon follows it): stop publishing."""


class CommitRaceError(RuntimeError):
    """The order's state kept changing under us: far more racers than exist in practice."""


class After:
    """Commands sent just after a commit's script, in its round trip (so Redis runs them after
    it, whatever the script did), and their replies once read (an error reply as a value).
    ``replies`` stays None when they were not read: the round trip failed, or nothing came to
    be sent."""

    __slots__ = ("commands", "replies")

    def __init__(self, commands: Sequence[tuple[Any, ...]]) -> None:
        self.commands = tuple(commands)
        self.replies: list[Any] | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """What :meth:`EventStore.record` did: the decision taken and the stream ids it wrote."""

    decision: Decision
    stream_ids: tuple[str, ...] = ()

    @property
    def published(self) -> tuple[Event, ...]:
        return self.decision.events if self.stream_ids else ()


def _order_key_args(before: OrderState | None, decision: Decision) -> tuple[str, str, str]:
    """What ``{p}:order:{id}`` gets: the 1-based index of the event it holds ("0": it keeps
    what it has), the refunded total to write into it ("": none), and the index of an
    ``order.details`` whose details are merged into it ("0": none). The key holds the
    payment's latest status (its final once there is one), never a refund nor an
    ``order.details`` itself: they are told on the terminal's channel and stream; the key keeps
    ``details.amount_refunded`` current and gains the final's details once they are known."""
    index = merge = 0
    for i, event in enumerate(decision.events, start=1):
        if event.type is EventType.ORDER_DETAILS:
            merge = i
        elif event.type is not EventType.ORDER_REFUND:
            index = i
    state = decision.state
    refunded = state is not None and state.amount_refunded > (
        before.amount_refunded if before else 0
    )
    total = str(state.amount_refunded) if refunded and state is not None else ""
    return str(index), total, str(merge)


def _active_action(before: OrderState | None, decision: Decision) -> str:
    if any(e.type is EventType.ORDER_CREATED for e in decision.events):
        return "set"
    if decision.state is not None and decision.state.final and not (before and before.final):
        return "clear"
    return ""


class _Transition:
    """One transition call waiting in :class:`_TransitionBatcher`'s queue."""

    __slots__ = ("after", "also", "args", "keys")

    def __init__(
        self,
        keys: list[str],
        args: list[Any],
        also: Sequence[tuple[Any, ...]],
        after: After | None = None,
    ) -> None:
        self.keys = keys
        self.args = args
        #: Commands sent just before the call, in its round trip (their errors are its own).
        self.also = also
        #: Commands sent just after it, their replies kept in it.
        self.after = after


class _TransitionBatcher:
    """Sends the transition calls of many orders as one pipeline on one connection
    (:class:`~bridge.redis.coalesce.Coalescer`).

    Every session awaits its own commit before it commits again, so one order never has two
    calls in a batch that depend on each other (and if two channels race on one order, the
    compare-and-set decides, exactly as with separate calls).

    A batch is written at once, packed here, on a connection of the client's pool: no
    pipeline object, command stack and observability hooks per commit. A dropped connection is
    retried by the client's own policy, as a pipeline would be; a transition that ran before
    the drop is refused by its compare-and-set when sent again, and its caller decides again
    from the stored state, as after any race. (The connection goes back to the pool after each
    batch: kept by the batcher, it starved a client with a pool of one.)
    """

    def __init__(self, client: Redis, script: Any) -> None:
        self._client = client
        self._script = script
        self._calls: Coalescer[_Transition] = Coalescer(self._send)

    async def call(
        self,
        keys: list[str],
        args: list[Any],
        also: Sequence[tuple[Any, ...]] = (),
        after: After | None = None,
    ) -> Any:
        return await self._calls.call(_Transition(keys, args, also, after))

    async def _send(self, batch: Sequence[Pending[_Transition]], retry: bool = True) -> None:
        sha = self._script.sha
        commands: list[tuple[Any, ...]] = []
        for p in batch:
            commands += p.item.also
            commands.append(("EVALSHA", sha, len(p.item.keys), *p.item.keys, *p.item.args))
            if p.item.after is not None:
                commands += p.item.after.commands
        try:
            replies = await roundtrip(self._client, commands)
        except Exception as exc:  # noqa: BLE001 - each caller gets it, as from its own call
            for p in batch:
                p.error = exc
            return
        results: list[Any] = []
        at = 0
        for p in batch:
            sent_first = replies[at : at + len(p.item.also)]
            failed = next((r for r in sent_first if isinstance(r, Exception)), None)
            at += len(p.item.also)
            results.append(failed if failed is not None else replies[at])
            at += 1
            after = p.item.after
            if after is not None:
                after.replies = replies[at : at + len(after.commands)]
                at += len(after.commands)
            p.item.also, p.item.after = (), None  # sent: not again with a retry
        missing = [p for p, r in zip(batch, results, strict=True) if isinstance(r, NoScriptError)]
        for p, r in zip(batch, results, strict=True):
            if isinstance(r, Exception):
                p.error = r
            else:
                p.result = r
        if missing and retry:  # Redis restarted (or SCRIPT FLUSH): load it, send those again
            await self._client.script_load(self._script.script)
            for p in missing:
                p.error = None
            await self._send(missing, retry=False)


class EventStore:
    """Order states, durable terminal streams, order keys and channels in one Redis."""

    def __init__(self, client: Redis, keys: Keys, *, stream_maxlen: int, order_ttl: float) -> None:
        self._client = client
        self.keys = keys
        self._stream_maxlen = str(stream_maxlen)
        self._ttl_ms = str(int(order_ttl * 1000))
        self._transition = client.register_script(publishing(TRANSITION_LUA, keys))
        self._announce = client.register_script(publishing(ANNOUNCE_LUA, keys))
        self._batcher = _TransitionBatcher(client, self._transition)
        #: ``revive(order_id, token)``: set a lapsed lease again for its token, True when the
        #: lease is (again) that token's. A fenced commit asks it before giving up.
        self.revive: Callable[[str, str], Awaitable[bool]] | None = None

    async def load(self, order_id: str) -> OrderState | None:
        raw = await self._client.hget(self.keys.order_state(order_id), "state")
        return OrderState.from_json(raw) if raw else None

    async def commit(
        self,
        before: OrderState | None,
        decision: Decision,
        fence: str = "",
        *,
        revived: bool = False,
        also: Sequence[tuple[Any, ...]] = (),
        after: After | None = None,
    ) -> tuple[bool, tuple[str, ...], OrderState | None]:
        """Commit ``decision`` if the stored state is still ``before`` (and, with ``fence``,
        only while the order's lease holds that token: else :class:`LeaseLost`). ``also``:
        idempotent writes sent just before, in the same round trip (their error is raised);
        ``after``: commands sent just after, their replies kept in it.

        Returns (applied, stream ids, the stored state when not applied).
        """
        state = decision.state
        assert state is not None and decision.commits, "only a state change is committed"
        keys = self.keys
        order_key_index, refunded_total, details_index = _order_key_args(before, decision)
        result = await self._batcher.call(
            [
                keys.order_state(state.order_id),
                keys.terminal_stream(state.terminal_id),
                keys.order(state.order_id),
                keys.terminal_active(state.terminal_id),
                keys.lease(state.order_id),
            ],
            [
                before.seq if before else 0,
                state.seq,
                state.to_json(),
                self._ttl_ms,
                self._stream_maxlen,
                keys.terminal_channel(state.terminal_id),
                _active_action(before, decision),
                state.order_id,
                fence,
                order_key_index,
                refunded_total,
                details_index,
                *(event.to_json() for event in decision.events),
            ],
            also,
            after,
        )
        if int(result[0]) == -1:
            if revived or self.revive is None or not await self.revive(state.order_id, fence):
                raise LeaseLost(f"order {state.order_id}: lease token {fence} no longer holds")
            # The lease had lapsed with nobody taking it (this daemon stalled past its TTL) and
            # is ours again: nothing was applied, so the same compare-and-set is tried once more.
            return await self.commit(before, decision, fence, revived=True)
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
        fence: str = "",
        also: Sequence[tuple[Any, ...]] = (),
        after: After | None = None,
    ) -> Recorded:
        """Decide from the stored state of ``order_id`` and commit, deciding again on a race.

        ``known`` with ``trust_known`` skips the first read (the caller's cached state is
        usually current: one daemon owns an order); a wrong guess costs one more round trip.
        ``also``: idempotent writes (commands) that go first, in the first commit's round
        trip (sent on their own when no commit is decided); ``after``: commands that go just
        after the first commit's script, in its round trip (after it, then, whether it applied
        or not: a race decides again without them), their replies kept in it.
        """
        state = known if trust_known else await self.load(order_id)
        for _ in range(_MAX_RACES):
            decision = decide(state)
            if not decision.commits:
                for command in also:
                    await self._client.execute_command(*command)  # type: ignore[no-untyped-call]
                if after is not None:
                    after.replies = [
                        await self._client.execute_command(*command)  # type: ignore[no-untyped-call]
                        for command in after.commands
                    ]
                return Recorded(decision)
            applied, ids, stored = await self.commit(state, decision, fence, also=also, after=after)
            also, after = (), None
            if applied:
                return Recorded(decision, ids)
            state = stored
        raise CommitRaceError(
            f"order {order_id}: state changed {_MAX_RACES} times while committing"
        )

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
