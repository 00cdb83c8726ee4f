"""What a ``cancel`` or ``refund`` of an order may do, and how a failed ``POST orders`` goes
on: pure decisions, taken from the order's state, upstream's answer and the command. The
handlers (:mod:`bridge.daemon.order_commands`, :mod:`bridge.daemon.pay_command`) only perform
what these planners decide.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.core.events import ErrorCode
from bridge.core.normalize import canonical_terminal_id
from bridge.core.state import OrderState

#: Upstream statuses of an order that took money (and may have given part of it back).
REFUNDABLE_UPSTREAM_STATUSES = frozenset({"completed", "partial_refunded", "refunded"})
#: MultiSafepay's code for an invalid or already used order id (assumed from the API's 409
#: answers; MultiSafepay/docs: api/general/error-reference.md lists 1006 "Invalid transaction ID").
UPSTREAM_INVALID_ORDER_ID = 1006


@dataclass(frozen=True, slots=True)
class Refusal:
    """The command is answered ``command.failed`` with this code and message."""

    code: ErrorCode
    message: str


def wrong_terminal(state: OrderState, sender: str) -> Refusal | None:
    """A command about an order of another terminal is refused: it would be carried out (and
    answered) on a terminal that did not ask."""
    if canonical_terminal_id(sender) == state.terminal_id:
        return None
    return Refusal(
        ErrorCode.INVALID_COMMAND,
        f"order {state.order_id} belongs to terminal {state.terminal_id}, "
        f"not {canonical_terminal_id(sender)}",
    )


# -- cancel -------------------------------------------------------------------------------------


def plan_cancel(state: OrderState, sender: str) -> Refusal | None:
    """None: cancel the order upstream; else the refusal."""
    refusal = wrong_terminal(state, sender)
    if refusal is not None:
        return refusal
    if state.final:
        return Refusal(
            ErrorCode.NOT_CANCELLABLE,
            f"order {state.order_id} is already {state.status or 'failed'}",
        )
    return None


def upstream_error_code(code: ErrorCode, refused: ErrorCode) -> ErrorCode:
    """The till's code for a failed ``cancel`` or ``refund`` call (or its ``GET``): the order
    is missing, the key refused, MultiSafepay away, or else the order's state ``refused`` it."""
    if code in (ErrorCode.NOT_FOUND, ErrorCode.UNAUTHORIZED, ErrorCode.UPSTREAM_UNAVAILABLE):
        return code
    return refused


def never_arrived(order_id: str) -> Refusal:
    """A cancel whose order does not exist and whose pay can no longer arrive."""
    return Refusal(
        ErrorCode.NOT_FOUND,
        f"order {order_id} does not exist, and no pay for it is waiting to be handled",
    )


# -- refund -------------------------------------------------------------------------------------


def refund_precheck(state: OrderState | None, sender: str, order_id: str) -> Refusal | None:
    """What the bridge's own record already refuses, before asking MultiSafepay."""
    if state is None:
        return None  # an order the bridge never saw (made elsewhere): upstream decides
    refusal = wrong_terminal(state, sender)
    if refusal is not None:
        return refusal
    if state.status != "completed":
        return Refusal(
            ErrorCode.NOT_REFUNDABLE,
            f"order {order_id} is {state.status or 'failed'}, not completed",
        )
    return None


@dataclass(frozen=True, slots=True)
class Refundable:
    """What ``GET orders/{id}`` says of an order that took money."""

    charged: int
    refunded: int
    currency: str | None

    @property
    def remaining(self) -> int:
        return self.charged - self.refunded


def read_refundable(order_id: str, order: Mapping[str, Any]) -> Refundable | Refusal:
    """Upstream's numbers, or the refusal when the order took no money (or says nonsense)."""
    status = str(order.get("status") or "").lower()
    charged, refunded = order.get("amount"), order.get("amount_refunded") or 0
    if (
        status not in REFUNDABLE_UPSTREAM_STATUSES
        or not isinstance(charged, int)
        or isinstance(charged, bool)
        or not isinstance(refunded, int)
        or isinstance(refunded, bool)
    ):
        return Refusal(
            ErrorCode.NOT_REFUNDABLE, f"order {order_id} is {status or 'unknown'}, not completed"
        )
    currency = order.get("currency")
    return Refundable(charged, refunded, currency if isinstance(currency, str) else None)


@dataclass(frozen=True, slots=True)
class RefundNow:
    amount: int


@dataclass(frozen=True, slots=True)
class ConfirmOnly:
    """A replayed command whose refund already happened: publish what ``GET`` says, no POST."""


def plan_refund(
    order_id: str,
    upstream: Refundable,
    requested: int | None,
    refunded_at_first_handling: int | None,
) -> RefundNow | ConfirmOnly | Refusal:
    """Refund what was asked (default: what remains), at most once per command.

    ``refunded_at_first_handling``: the refunded total upstream reported when this command
    was first handled (None: this is the first time). If upstream's total grew since, the
    command's refund happened (the daemon died before acknowledging it): only confirm it.
    """
    if refunded_at_first_handling is not None and upstream.refunded > refunded_at_first_handling:
        return ConfirmOnly()
    remaining = upstream.remaining
    amount = requested if requested is not None else remaining
    if remaining <= 0:
        return Refusal(ErrorCode.NOT_REFUNDABLE, f"order {order_id} is already fully refunded")
    if amount > remaining:
        return Refusal(
            ErrorCode.NOT_REFUNDABLE,
            f"order {order_id}: {remaining} cents remain to refund, not {amount}",
        )
    return RefundNow(amount)


# -- the create of a pay ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateFailure:
    """How a failed ``POST orders`` goes on."""

    #: An attempt so far may have created the order (a timeout, a 5xx): GET before any final.
    uncertain: bool
    #: Ask ``GET`` now: if the order exists, that is the outcome.
    look_up: bool
    #: Try the create again after a backoff.
    retry: bool
    #: When neither found nor retried: the pay fails with this code.
    code: ErrorCode
    #: Whether the failure is MultiSafepay's being away (message: "did not create the order").
    unavailable: bool


def create_refusal(
    code: ErrorCode, http_status: int | None, upstream_code: int | None
) -> ErrorCode:
    """The till's error code for a refused ``POST orders``."""
    if http_status == 409:
        if upstream_code == UPSTREAM_INVALID_ORDER_ID:
            return ErrorCode.DUPLICATE_ORDER_ID
        return ErrorCode.TERMINAL_BUSY
    if code is ErrorCode.NOT_FOUND:  # the order is new: what was not found is the terminal
        return ErrorCode.UNKNOWN_TERMINAL
    return code


def plan_create_failure(
    *,
    code: ErrorCode,
    http_status: int | None,
    upstream_code: int | None,
    maybe_done: bool,
    uncertain: bool,
    attempt: int,
    attempts: int,
) -> CreateFailure:
    """Attempt ``attempt`` (0-based) of ``attempts`` failed. ``uncertain``: an earlier attempt
    may have created the order."""
    transient = maybe_done or http_status == 429 or code is ErrorCode.UPSTREAM_UNAVAILABLE
    # refused as busy or duplicate: if an earlier attempt made the order, GET finds it; and
    # no final answer is given while an attempt may have made it
    refused_maybe_ours = http_status == 409 or uncertain
    uncertain = uncertain or maybe_done
    if not transient:
        return CreateFailure(
            uncertain,
            look_up=refused_maybe_ours,
            retry=False,
            code=create_refusal(code, http_status, upstream_code),
            unavailable=False,
        )
    retry = attempt + 1 < attempts
    return CreateFailure(
        uncertain,
        look_up=refused_maybe_ours or (not retry and uncertain),
        retry=retry,
        code=ErrorCode.UPSTREAM_UNAVAILABLE,
        unavailable=True,
    )
