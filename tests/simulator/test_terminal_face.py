"""The terminal's screen and the customer's buttons (pure): every button on every screen, and
any sequence of presses played on a real ``OrderStore``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.simulator import scenarios
from bridge.simulator.orders import Order, OrderStore
from bridge.simulator.scenarios import AUTHORIZE, Scenario, Step
from bridge.simulator.terminal_face import (
    ALLOWED,
    Action,
    ActionRefused,
    Screen,
    plan,
    screen,
    shows_processing,
)


def new_order(store: OrderStore, terminal: str = "SIM-MANUAL-01") -> Order:
    fields = {
        "order_id": f"o-{len(store.orders) + 1}",
        "amount": 1250,
        "currency": "EUR",
        "description": "",
        "terminal_id": terminal,
        "notification_url": None,
        "var": (None, None, None),
    }
    return store.create(fields, "key", Scenario.MANUAL)


def play(store: OrderStore, order: Order, steps: list[Step]) -> None:
    """What the simulator does with the steps, without the waiting (drops change no status)."""
    for step in steps:
        if not step.is_drop:
            store.transition(order, step)


def test_screens_follow_the_order() -> None:
    store = OrderStore(lambda: "2026-01-01T12:00:00")
    assert screen(None) is Screen.IDLE
    order = new_order(store)
    assert screen(order) is Screen.PRESENT_CARD  # asked, before the terminal's first status
    assert screen(order, processing=True) is Screen.PROCESSING
    store.transition(order, Step(0, "declined", "soft"))
    assert screen(order) is Screen.ENTER_PIN
    store.transition(order, Step(0, "initialized"))
    store.transition(order, Step(0, "declined", "hard"))
    assert screen(order) is Screen.DECLINED
    store.transition(order, Step(0, "completed"))
    assert screen(order) is Screen.APPROVED
    assert screen(order, processing=True) is Screen.APPROVED  # the end outranks the wait

    cancelled = new_order(store, "SIM-MANUAL-02")
    store.transition(cancelled, Step(0, "cancelled", "customer"))
    assert screen(cancelled) is Screen.CANCELLED


@pytest.mark.parametrize("shown", list(Screen))
@pytest.mark.parametrize("action", list(Action))
def test_a_button_works_exactly_where_it_is_offered(shown: Screen, action: Action) -> None:
    if action in ALLOWED[shown]:
        assert plan(action, shown, pin="1234")
    else:
        with pytest.raises(ActionRefused, match="not possible while the terminal shows"):
            plan(action, shown, pin="1234")


def test_what_each_button_does() -> None:
    assert plan(Action.TAP, Screen.PRESENT_CARD) == [
        Step(0.0, "initialized"),
        Step(AUTHORIZE, "completed"),
    ]
    assert plan(Action.TAP_DECLINED, Screen.DECLINED)[-1] == Step(AUTHORIZE, "declined", "hard")
    assert plan(Action.TAP_SOFT_DECLINED, Screen.PRESENT_CARD)[-1] == Step(
        AUTHORIZE, "declined", "soft"
    )
    # the PIN starts the step-up transaction (pos-card-payment-flow.md)
    assert plan(Action.PIN, Screen.ENTER_PIN, "123456") == [
        Step(0.0, "initialized"),
        Step(AUTHORIZE, "completed"),
    ]
    assert plan(Action.CANCEL, Screen.ENTER_PIN) == [Step(0.0, "cancelled", "customer")]
    assert plan(Action.WALK_AWAY, Screen.PRESENT_CARD) == [Step(0.0, "cancelled", "expired")]
    assert plan(Action.DROP, Screen.PROCESSING) == [Step(0.0, None)]
    assert shows_processing(Action.PIN) and shows_processing(Action.TAP)
    assert not shows_processing(Action.CANCEL) and not shows_processing(Action.DROP)


@pytest.mark.parametrize("pin", ["", "123", "1234567", "12a4", " 1234", "１２３４"])
def test_a_pin_is_four_to_six_ascii_digits(pin: str) -> None:
    with pytest.raises(ActionRefused, match="4 to 6 digits"):
        plan(Action.PIN, Screen.ENTER_PIN, pin)


def test_manual_terminals_wait_for_a_person() -> None:
    assert scenarios.choose("SIM-MANUAL-07", 1201) is Scenario.MANUAL
    # a terminal set to manual on the page, whatever its ID or the amount says
    assert scenarios.choose("sim-decline-01", 1201, manual={"SIM-DECLINE-01"}) is Scenario.MANUAL
    assert scenarios.choose("0000004d", 1201, manual={"0000004D"}) is Scenario.MANUAL
    assert scenarios.choose("0000004d", 1201) is Scenario.DECLINE
    # it asks for a card, then nothing happens by itself: no completion, no expiry
    assert scenarios.script(Scenario.MANUAL) == [Step(scenarios.TAP, "initialized")]


@given(st.lists(st.sampled_from(list(Action)), max_size=12), st.booleans())
def test_any_sequence_of_presses_tells_a_faithful_story(presses: list[Action], woke: bool) -> None:
    store = OrderStore(lambda: "2026-01-01T12:00:00")
    order = new_order(store)
    if woke:
        store.transition(order, Step(0, "initialized"))
    accepted: list[Action] = []
    for action in presses:
        shown = screen(order)
        try:
            steps = plan(action, shown, "1234")
        except ActionRefused:
            assert action not in ALLOWED[shown]
            continue
        accepted.append(action)
        play(store, order, steps)
    statuses = [e.status for e in order.events]
    # a stream never repeats a status, and nothing follows a final one
    assert all(a != b for a, b in zip(statuses, statuses[1:], strict=False))
    assert all(s not in scenarios.FINAL_STATUSES for s in statuses[:-1])
    # approved only by a card or a PIN; a PIN only after a soft decline (a dropped connection
    # changes neither)
    chosen = [a for a in accepted if a is not Action.DROP]
    if order.status == "completed":
        assert chosen[-1] in (Action.TAP, Action.PIN)
    for i, action in enumerate(chosen):
        if action is Action.PIN:
            assert chosen[i - 1] is Action.TAP_SOFT_DECLINED
    # the terminal shows what the order says
    assert screen(order) is {
        "completed": Screen.APPROVED,
        "cancelled": Screen.CANCELLED,
        "initialized": Screen.PRESENT_CARD,
    }.get(order.status, Screen.ENTER_PIN if order.asks_for_pin else Screen.DECLINED)
