"""The planners of cancel, refund and the create's retries: pure, tested exhaustively."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bridge.core.events import ErrorCode, Source
from bridge.core.normalize import Observation
from bridge.core.order_commands import (
    ConfirmOnly,
    Refundable,
    RefundNow,
    Refusal,
    plan_cancel,
    plan_create_failure,
    plan_refund,
    read_refundable,
    refund_precheck,
)
from bridge.core.state import (
    OrderState,
    cancel_requested,
    observe,
    refund_abandoned,
    refund_requested,
)

cents = st.integers(min_value=0, max_value=10_000_000)
statuses = st.sampled_from([None, "initialized", "declined", "completed", "cancelled", "void"])
terminals = st.sampled_from(["T-1", "t-1", "T-2"])


def order(status: str | None, terminal: str = "T-1", final: bool | None = None) -> OrderState:
    is_final = status in ("completed", "cancelled", "void") if final is None else final
    return OrderState(order_id="o-1", terminal_id=terminal, status=status, final=is_final)


@given(statuses, terminals)
def test_cancel_only_from_the_orders_terminal_and_only_in_flight(
    status: str | None, sender: str
) -> None:
    state = order(status)
    plan = plan_cancel(state, sender)
    if sender.upper() != "T-1":
        assert plan == Refusal(ErrorCode.INVALID_COMMAND, plan.message)  # type: ignore[union-attr]
        assert "belongs to terminal T-1" in plan.message  # type: ignore[union-attr]
    elif state.final:
        assert plan is not None and plan.code is ErrorCode.NOT_CANCELLABLE
    else:
        assert plan is None


@given(statuses, terminals)
def test_refund_precheck(status: str | None, sender: str) -> None:
    plan = refund_precheck(order(status), sender, "o-1")
    if sender.upper() != "T-1":
        assert plan is not None and plan.code is ErrorCode.INVALID_COMMAND
    elif status != "completed":
        assert plan is not None and plan.code is ErrorCode.NOT_REFUNDABLE
    else:
        assert plan is None
    assert refund_precheck(None, sender, "o-1") is None  # upstream decides


@given(cents, cents, st.none() | st.integers(min_value=1, max_value=10_000_000), st.none() | cents)
def test_refund_never_exceeds_what_remains_and_a_replay_never_refunds_twice(
    charged: int, refunded: int, requested: int | None, first_seen: int | None
) -> None:
    upstream = Refundable(charged=charged, refunded=refunded, currency="EUR")
    plan = plan_refund("o-1", upstream, requested, first_seen)
    if first_seen is not None and refunded > first_seen:
        assert plan == ConfirmOnly()
        return
    if isinstance(plan, RefundNow):
        assert 0 < plan.amount <= charged - refunded
        assert plan.amount == (requested if requested is not None else charged - refunded)
    else:
        assert isinstance(plan, Refusal) and plan.code is ErrorCode.NOT_REFUNDABLE
        assert charged - refunded <= 0 or (requested or 0) > charged - refunded


@given(
    st.sampled_from(["completed", "refunded", "partial_refunded", "cancelled", "", None, 7]),
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=3)),
    st.one_of(st.none(), st.integers(min_value=0), st.text(max_size=3)),
)
def test_upstream_numbers_are_parsed_not_trusted(status: Any, amount: Any, refunded: Any) -> None:
    data = {"status": status, "amount": amount, "amount_refunded": refunded, "currency": "EUR"}
    result = read_refundable("o-1", data)
    good_numbers = (
        isinstance(amount, int) and not isinstance(amount, bool) and isinstance(refunded or 0, int)
    )
    if status in ("completed", "refunded", "partial_refunded") and good_numbers:
        assert result == Refundable(amount, refunded or 0, "EUR")
    else:
        assert isinstance(result, Refusal) and result.code is ErrorCode.NOT_REFUNDABLE


@given(st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8))
def test_a_refund_asked_for_is_answered_once_then_forgotten(first: str, second: str) -> None:
    state = order("completed")
    noted = refund_requested(state, first)
    assert noted.commits and not noted.publishes
    assert noted.state is not None and noted.state.refund_command_id == first
    assert noted.state.seq == state.seq + 1  # a new version: racing commits decide again
    assert not refund_requested(noted.state, first).commits  # a replay changes nothing
    dropped = refund_abandoned(noted.state, second)
    assert dropped.commits == (first == second)  # only its own command forgets it
    assert not refund_abandoned(state, first).commits


errors = st.sampled_from(list(ErrorCode))
http = st.none() | st.sampled_from([400, 401, 403, 404, 409, 422, 429, 500, 502, 503])


@given(
    errors,
    http,
    st.none() | st.sampled_from([1006, 1000]),
    st.booleans(),
    st.booleans(),
    st.integers(min_value=1, max_value=5),
    st.data(),
)
def test_create_failures(
    code: ErrorCode,
    status: int | None,
    upstream_code: int | None,
    maybe_done: bool,
    uncertain: bool,
    attempts: int,
    data: st.DataObject,
) -> None:
    attempt = data.draw(st.integers(min_value=0, max_value=attempts - 1))
    plan = plan_create_failure(
        code=code,
        http_status=status,
        upstream_code=upstream_code,
        maybe_done=maybe_done,
        uncertain=uncertain,
        attempt=attempt,
        attempts=attempts,
    )
    transient = maybe_done or status == 429 or code is ErrorCode.UPSTREAM_UNAVAILABLE
    assert plan.uncertain == (uncertain or maybe_done)  # once uncertain, always
    assert plan.retry == (transient and attempt + 1 < attempts)  # never past the last attempt
    if status == 409:
        assert plan.look_up  # busy or duplicate: maybe our own earlier attempt made it
    if plan.uncertain and not plan.retry:
        assert plan.look_up  # never a final answer while the order may exist
    if not transient:
        assert not plan.unavailable
        if status == 409:
            expected = (
                ErrorCode.DUPLICATE_ORDER_ID if upstream_code == 1006 else ErrorCode.TERMINAL_BUSY
            )
            assert plan.code is expected
        elif code is ErrorCode.NOT_FOUND:
            assert plan.code is ErrorCode.UNKNOWN_TERMINAL
    else:
        assert plan.code is ErrorCode.UPSTREAM_UNAVAILABLE and plan.unavailable


@given(st.sampled_from(["cancelled", "void", "completed", "expired"]))
def test_the_final_after_a_cancel_names_it_only_when_cancelled(final: str) -> None:
    state = order("initialized")
    noted = cancel_requested(state, "cx-1")
    assert noted.commits and not noted.publishes and noted.state is not None
    assert not cancel_requested(order("completed"), "cx-1").commits  # nothing to cancel
    now = datetime.now(UTC)
    obs = Observation(source=Source.POLL, order_id="o-1", status=final)
    decision = observe(noted.state, obs, now)
    (event,) = decision.events
    named = event.details.get("cancel_command_id")
    assert named == ("cx-1" if final in ("cancelled", "void") else None)
    assert event.command_id is None or event.command_id == state.command_id  # still the pay's
