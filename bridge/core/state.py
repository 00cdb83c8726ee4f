"""The per-order state machine: is this observation a new transition, and what event says so?

Pure: it takes the order's current state (as stored in Redis), an observation from any channel
and the time, and returns a :class:`Decision`: the new state and the events to publish. The
Redis side commits a decision atomically only if the stored state is still the one it was made
from (compare-and-set on ``seq``), so racing channels and daemons publish each transition once.

The rules (README, "Rules a till relies on"):
- ``completed``, ``cancelled``, ``void``, ``expired`` are final; a payment has exactly one final.
- ``declined`` is not final (a soft decline asks for the PIN; a hard one lets the card be
  retried), and non-final statuses may repeat: ``initialized, declined, initialized, completed``.
- An observation equal to the current status is a duplicate, whichever channel it came from.
- A non-final webhook or poll observation older than the last transition is stale: it may
  describe a status the order has already left.
- After a final, only refunds are published: one ``order.refund`` per new ``amount_refunded``,
  and once the details of the final status when it was published without them (a stream
  carries no card details): one ``order.details``. A final is never held back for its details.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from bridge.core import formats
from bridge.core.events import (
    FINAL_STATUSES,
    REFUND_STATUSES,
    ErrorCode,
    Event,
    EventError,
    EventType,
    Source,
    make_event_id,
)
from bridge.core.normalize import Observation, canonical_terminal_id


@dataclass(frozen=True, slots=True)
class OrderState:
    """What the bridge has published about one order. Stored in Redis beside the order key."""

    order_id: str
    terminal_id: str
    #: How many events have been published for the order; the compare-and-set version.
    seq: int = 0
    status: str | None = None
    final: bool = False
    command_id: str | None = None
    session_id: str | None = None
    transaction_id: str | None = None
    amount: int | None = None
    currency: str | None = None
    amount_refunded: int = 0
    #: When the last upstream transition was received (unix seconds, our clock).
    last_transition_at: float | None = None
    #: Upstream's ``modified`` time of the last transition, when it came with one (a webhook
    #: or poll; MultiSafepay's clock, whole seconds). None after a stream transition.
    last_modified: float | None = None
    #: The ``refund`` command whose refund the bridge asked for and has not published yet:
    #: the next ``order.refund`` answers it (carries its ``command_id``).
    refund_command_id: str | None = None
    #: The ``cancel`` command the bridge asked MultiSafepay to carry out: the order's final
    #: names it (``details.cancel_command_id``).
    cancel_command_id: str | None = None
    #: The final status's details (card, last4, ...) are published, with it or after it.
    details_published: bool = False

    def to_json(self) -> str:
        # Every field is a plain value: no ``asdict`` (it deep-copies each one; it was ~1/5 of
        # a commit's CPU).
        return _COMPACT.encode({name: getattr(self, name) for name in _STATE_FIELDS})

    @classmethod
    def from_json(cls, raw: str | bytes) -> OrderState:
        """The stored state, in any format of major version 1 (``bridge.core.formats``):
        fields this release does not know are ignored; a newer major raises
        :class:`NewerFormat`. Version 1 is written without a ``format`` field: release N-1
        reads this record strictly and would refuse one."""
        return cls(**formats.read_json(raw, "order state", formats.ORDER_STATE, _STATE_FIELDS))


_STATE_FIELDS = tuple(f.name for f in fields(OrderState))
_COMPACT = json.JSONEncoder(separators=(",", ":"))


class Verdict(StrEnum):
    NEW = "new"
    DUPLICATE = "duplicate"
    STALE = "stale"
    AFTER_FINAL = "after_final"
    #: Upstream contradicted a final status it gave before: logged loudly, never published.
    CONFLICT = "conflict"
    #: No terminal is known for an order the bridge has never seen: nowhere to publish.
    UNROUTABLE = "unroutable"
    #: The stored state changes (e.g. a refund is asked for) but nothing is published yet.
    NOTE = "note"
    #: A status word MultiSafepay does not document: logged, never published.
    UNKNOWN_STATUS = "unknown_status"


#: The order statuses MultiSafepay documents (MultiSafepay/docs:
#: openapi/components/schemas/Status.yaml), and ``partial_refunded`` (assumed: seen in the
#: refund flow). Any other word is not published: a till could not know what it means.
KNOWN_STATUSES: frozenset[str] = (
    FINAL_STATUSES
    | REFUND_STATUSES
    | frozenset({"initialized", "declined", "uncleared", "reserved", "shipped", "chargeback"})
)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    state: OrderState | None
    events: tuple[Event, ...] = ()

    @property
    def publishes(self) -> bool:
        return bool(self.events)

    @property
    def commits(self) -> bool:
        """Whether the store must write this decision (events, or a noted state change)."""
        return self.publishes or (self.verdict is Verdict.NOTE and self.state is not None)


def _event(
    state: OrderState,
    type_: EventType,
    source: Source,
    now: datetime,
    *,
    status: str | None = None,
    financial_status: str | None = None,
    final: bool = False,
    occurred_at: datetime | None = None,
    details: dict[str, Any] | None = None,
    error: EventError | None = None,
    command_id: str | None = None,
    answers_command: bool = False,
) -> Event:
    """The event of ``state``'s latest transition; ``answers_command`` puts ``command_id``
    (another command than the pay, e.g. a refund; None when no command asked) in place of the
    pay's."""
    return Event(
        event_id=make_event_id(state.order_id, state.seq, type_, status, state.amount_refunded),
        type=type_,
        terminal_id=state.terminal_id,
        order_id=state.order_id,
        command_id=command_id if answers_command else state.command_id,
        session_id=state.session_id,
        transaction_id=state.transaction_id,
        status=status,
        financial_status=financial_status,
        final=final,
        amount=state.amount,
        currency=state.currency,
        source=source,
        occurred_at=occurred_at,
        received_at=now,
        details=details or {},
        error=error,
    )


def order_created(
    *,
    order_id: str,
    terminal_id: str,
    command_id: str | None,
    amount: int,
    currency: str,
    session_id: str | None,
    now: datetime,
) -> Decision:
    """MultiSafepay accepted the order: the terminal is asking for the card."""
    state = OrderState(
        order_id=order_id,
        terminal_id=canonical_terminal_id(terminal_id),
        seq=1,
        command_id=command_id,
        session_id=session_id,
        amount=amount,
        currency=currency,
    )  # no staleness horizon yet: nothing upstream can predate the order
    return Decision(
        Verdict.NEW, state, (_event(state, EventType.ORDER_CREATED, Source.BRIDGE, now),)
    )


def order_failed(
    current: OrderState | None,
    *,
    order_id: str,
    terminal_id: str,
    command_id: str | None,
    amount: int | None,
    currency: str | None,
    code: ErrorCode,
    message: str,
    now: datetime,
) -> Decision:
    """A ``pay`` that never became a payment. Final: its order id is spent."""
    if current is not None and current.final:
        return Decision(Verdict.AFTER_FINAL, current)
    base = current or OrderState(
        order_id=order_id,
        terminal_id=canonical_terminal_id(terminal_id),
        command_id=command_id,
        amount=amount,
        currency=currency,
    )
    state = replace(base, seq=base.seq + 1, final=True, last_transition_at=now.timestamp())
    event = _event(
        state,
        EventType.ORDER_FAILED,
        Source.BRIDGE,
        now,
        final=True,
        error=EventError(code=code, message=message),
    )
    return Decision(Verdict.NEW, state, (event,))


def outcome_unknown(
    current: OrderState | None,
    *,
    order_id: str,
    terminal_id: str,
    command_id: str | None,
    now: datetime,
) -> Decision:
    """The payment's deadline passed, it was cancelled upstream, and still MultiSafepay did not
    say how it ended (unreachable, or answering what cannot be read): end it, saying so."""
    return order_failed(
        current,
        order_id=order_id,
        terminal_id=terminal_id,
        command_id=command_id,
        amount=current.amount if current else None,
        currency=current.currency if current else None,
        code=ErrorCode.UPSTREAM_UNAVAILABLE,
        message="outcome unknown: MultiSafepay did not confirm how the payment ended by its "
        "deadline (max_payment_age), after a cancel was asked",
        now=now,
    )


def _is_stale(state: OrderState, obs: Observation) -> bool:
    """A webhook or poll observation that may describe a status the order has already left.

    Times are compared within one clock: a poll's send time with the bridge's receipt of the
    last transition; upstream's ``modified`` with the last transition's ``modified`` when it
    had one, else (a stream transition carries no time) with its receipt. Conservative: a
    non-final status that cannot be placed after the last transition is dropped, never
    published out of order.
    """
    if obs.final or obs.status in REFUND_STATUSES:
        return False  # a final (or a refund, which implies completed) is never stale
    if obs.source not in (Source.WEBHOOK, Source.POLL):
        return False  # a live stream delivers in order
    received = state.last_transition_at
    if obs.as_of is not None and received is not None and obs.as_of.timestamp() < received:
        return True
    if obs.modified is not None:
        horizon = state.last_modified if state.last_modified is not None else received
        return horizon is not None and obs.modified.timestamp() < horizon
    return False


def _upstream_time(obs: Observation) -> float | None:
    timed = obs.source in (Source.WEBHOOK, Source.POLL) and obs.modified is not None
    return obs.modified.timestamp() if timed and obs.modified is not None else None


def _status_details(state: OrderState, obs: Observation) -> dict[str, Any]:
    details = dict(obs.details)
    if obs.amount is not None and state.amount is not None and obs.amount != state.amount:
        details["amount_charged"] = obs.amount  # e.g. a tip added on the terminal
    return details


def _status_transition(
    state: OrderState, obs: Observation, now: datetime, status: str, extra: dict[str, Any]
) -> tuple[OrderState, Event]:
    final = status in FINAL_STATUSES
    if status in ("cancelled", "void") and state.cancel_command_id is not None:
        extra = {**extra, "cancel_command_id": state.cancel_command_id}
    new = replace(
        state,
        seq=state.seq + 1,
        status=status,
        final=final,
        session_id=obs.session_id or state.session_id,
        transaction_id=obs.transaction_id or state.transaction_id,
        last_transition_at=now.timestamp(),
        last_modified=_upstream_time(obs),
        details_published=final and bool(obs.details),
    )
    event = _event(
        new,
        EventType.ORDER_STATUS,
        obs.source,
        now,
        status=status,
        financial_status=obs.financial_status,
        final=final,
        occurred_at=obs.occurred_at,
        details={**_status_details(state, obs), **extra},
    )
    return new, event


def _refund_transition(
    state: OrderState, obs: Observation, now: datetime
) -> tuple[OrderState, Event] | None:
    refunded = obs.amount_refunded
    if refunded is None or refunded <= state.amount_refunded:
        return None
    new = replace(
        state,
        seq=state.seq + 1,
        amount_refunded=refunded,
        transaction_id=obs.transaction_id or state.transaction_id,
        last_transition_at=now.timestamp(),
        refund_command_id=None,
    )
    event = _event(
        new,
        EventType.ORDER_REFUND,
        obs.source,
        now,
        status=obs.status,
        financial_status=obs.financial_status,
        occurred_at=obs.occurred_at,
        details={
            "amount_refunded": refunded,
            "refund_amount": refunded - state.amount_refunded,
            "pay_command_id": state.command_id,
        },
        command_id=state.refund_command_id,
        answers_command=True,
    )
    return new, event


def refund_requested(current: OrderState | None, command_id: str) -> Decision:
    """The bridge is about to ask MultiSafepay for a refund on behalf of ``command_id``: the
    next ``order.refund`` of the order (whichever channel brings it) answers that command."""
    if current is None or current.refund_command_id == command_id:
        return Decision(Verdict.DUPLICATE, current)
    return Decision(
        Verdict.NOTE, replace(current, seq=current.seq + 1, refund_command_id=command_id)
    )


def cancel_requested(current: OrderState | None, command_id: str) -> Decision:
    """The bridge is about to ask MultiSafepay to cancel the order for ``command_id``: the
    order's final names that command in ``details.cancel_command_id``."""
    if current is None or current.final or current.cancel_command_id == command_id:
        return Decision(Verdict.DUPLICATE, current)
    return Decision(
        Verdict.NOTE, replace(current, seq=current.seq + 1, cancel_command_id=command_id)
    )


def refund_abandoned(current: OrderState | None, command_id: str) -> Decision:
    """The refund of ``command_id`` was refused: later refunds are not its answer."""
    if current is None or current.refund_command_id != command_id:
        return Decision(Verdict.DUPLICATE, current)
    return Decision(Verdict.NOTE, replace(current, seq=current.seq + 1, refund_command_id=None))


def _details_transition(
    state: OrderState, obs: Observation, now: datetime
) -> tuple[OrderState, Event] | None:
    """The final status published without details, now learned with them: ``order.details``."""
    if state.details_published or not obs.details or obs.status != state.status:
        return None
    new = replace(
        state,
        seq=state.seq + 1,
        details_published=True,
        transaction_id=state.transaction_id or obs.transaction_id,
    )
    event = _event(
        new,
        EventType.ORDER_DETAILS,
        obs.source,
        now,
        status=state.status,
        financial_status=obs.financial_status,
        occurred_at=obs.occurred_at,
        details=_status_details(state, obs),
    )
    return new, event


def _after_final(state: OrderState, obs: Observation, now: datetime) -> Decision:
    status = obs.status
    if state.status is None:
        # order.failed said the payment was never created; upstream now says otherwise.
        return Decision(Verdict.CONFLICT, state)
    if status not in FINAL_STATUSES | REFUND_STATUSES:
        return Decision(Verdict.AFTER_FINAL, state)
    learned = _refund_transition(state, obs, now) or _details_transition(state, obs, now)
    if learned is not None:
        new, event = learned
        return Decision(Verdict.NEW, new, (event,))
    if status in REFUND_STATUSES or status == state.status:
        # a refund already published, or a repeat of the final
        return Decision(Verdict.DUPLICATE, state)
    return Decision(Verdict.CONFLICT, state)


def observe(
    current: OrderState | None,
    obs: Observation,
    now: datetime,
    *,
    terminal_id: str | None = None,
    command_id: str | None = None,
    refund_command_id: str | None = None,
) -> Decision:
    """Decide what an observation means for the order. ``now`` must be timezone-aware.

    ``terminal_id`` names the terminal for an order seen for the first time whose payload does
    not (a stream message never does); ``command_id`` (a ``watch``) is echoed in its events;
    ``refund_command_id``, for such an order, is the ``refund`` its first refund answers.
    """
    if obs.status not in KNOWN_STATUSES:
        return Decision(Verdict.UNKNOWN_STATUS, current)
    if current is None:
        terminal = obs.terminal_id or (terminal_id and canonical_terminal_id(terminal_id))
        if not terminal:
            return Decision(Verdict.UNROUTABLE, None)
        current = OrderState(
            order_id=obs.order_id,
            terminal_id=terminal,
            command_id=command_id,
            amount=obs.amount,
            currency=obs.currency,
            refund_command_id=refund_command_id,
        )
    state = current
    status = obs.status

    if state.final:
        return _after_final(state, obs, now)

    if status == state.status:
        return Decision(Verdict.DUPLICATE, current)
    if _is_stale(state, obs):
        return Decision(Verdict.STALE, current)

    if status in REFUND_STATUSES:
        # Money was taken and (partly) returned before the bridge saw the completion (e.g. it
        # was down): the payment completed. Say so, then the refund.
        state, completed = _status_transition(
            state, obs, now, "completed", {"derived_from": status}
        )
        refund = _refund_transition(state, obs, now)
        if refund is None:
            return Decision(Verdict.NEW, state, (completed,))
        state, refund_event = refund
        return Decision(Verdict.NEW, state, (completed, refund_event))

    state, event = _status_transition(state, obs, now, status, {})
    return Decision(Verdict.NEW, state, (event,))


def utcnow() -> datetime:
    return datetime.now(UTC)
