"""What a simulated terminal shows, and what the customer's buttons do (pure, no I/O).

A person at the simulator's web page plays the customer. Each button is an ``Action``; ``plan``
turns it, given what the terminal shows now, into the same ``Step`` list a scenario script is
made of, so the simulator plays a person's choices exactly as it plays its scripted scenarios.

Sources: a soft decline sends ``declined``, the customer enters the PIN, then the "step up"
transaction sends ``initialized`` and ``completed`` (or ``cancelled`` if it fails)
(MultiSafepay/docs: content/point-of-sale/pos-troubleshooting.md, "Soft declines for SmartPOS
payments"; content/point-of-sale/pos-card-payment-flow.md, "Notifications"); a payment is
cancelled on the terminal, via the API, or expires after 60 seconds of inactivity
(MultiSafepay/docs: content/point-of-sale/event-notifications.md). What the screen says at
each step, and that a PIN has 4 to 6 digits, are assumed (nothing public shows a SmartPOS
payment screen).
"""

from __future__ import annotations

import enum
import re

from bridge.simulator.orders import Order
from bridge.simulator.scenarios import AUTHORIZE, Step


class Screen(enum.StrEnum):
    """What a SmartPOS terminal shows during a payment."""

    IDLE = "idle"
    PRESENT_CARD = "present-card"
    ENTER_PIN = "enter-pin"  # after a soft decline
    PROCESSING = "processing"  # a card was read; the scheme has not answered yet
    APPROVED = "approved"
    DECLINED = "declined"  # a hard decline: another card may be tried
    CANCELLED = "cancelled"


class Action(enum.StrEnum):
    """A button the customer (or the network) presses."""

    TAP = "tap"
    TAP_DECLINED = "tap-declined"
    TAP_SOFT_DECLINED = "tap-soft-declined"
    PIN = "pin"
    CANCEL = "cancel"
    WALK_AWAY = "walk-away"
    DROP = "drop"


LABELS: dict[Action, str] = {
    Action.TAP: "Tap card",
    Action.TAP_DECLINED: "Tap a declined card",
    Action.TAP_SOFT_DECLINED: "Tap a card that needs the PIN",
    Action.PIN: "Enter PIN",
    Action.CANCEL: "Cancel on the terminal",
    Action.WALK_AWAY: "Walk away",
    Action.DROP: "Drop the connection",
}

TITLES: dict[Screen, str] = {
    Screen.IDLE: "Ready",
    Screen.PRESENT_CARD: "Present card",
    Screen.ENTER_PIN: "Enter PIN",
    Screen.PROCESSING: "Processing…",
    Screen.APPROVED: "Approved",
    Screen.DECLINED: "Declined",
    Screen.CANCELLED: "Cancelled",
}

_CARD_ASKED = (
    Action.TAP,
    Action.TAP_DECLINED,
    Action.TAP_SOFT_DECLINED,
    Action.CANCEL,
    Action.WALK_AWAY,
    Action.DROP,
)
ALLOWED: dict[Screen, tuple[Action, ...]] = {
    Screen.IDLE: (),
    Screen.PRESENT_CARD: _CARD_ASKED,
    Screen.DECLINED: _CARD_ASKED,  # the customer may try another card
    Screen.ENTER_PIN: (Action.PIN, Action.CANCEL, Action.WALK_AWAY, Action.DROP),
    Screen.PROCESSING: (Action.DROP,),  # the terminal does not let go while authorizing
    Screen.APPROVED: (),
    Screen.CANCELLED: (),
}

PIN_RE = re.compile(r"[0-9]{4,6}")

_TAP_OUTCOME: dict[Action, Step] = {
    Action.TAP: Step(AUTHORIZE, "completed"),
    Action.TAP_DECLINED: Step(AUTHORIZE, "declined", "hard"),
    Action.TAP_SOFT_DECLINED: Step(AUTHORIZE, "declined", "soft"),
}


class ActionRefused(ValueError):
    """The button cannot be pressed now; the message says why, for the person."""


def screen(order: Order | None, processing: bool = False) -> Screen:
    """What the terminal shows for its current order (None: no payment asked yet)."""
    if order is None:
        return Screen.IDLE
    if order.status in ("completed", "refunded", "partial_refunded"):
        return Screen.APPROVED
    if order.final:
        return Screen.CANCELLED
    if processing:
        return Screen.PROCESSING
    if order.status == "declined":
        return Screen.ENTER_PIN if order.asks_for_pin else Screen.DECLINED
    return Screen.PRESENT_CARD


def shows_processing(action: Action) -> bool:
    """True if the terminal shows "processing" until the steps of ``action`` are played."""
    return action in _TAP_OUTCOME or action is Action.PIN


def plan(action: Action, shown: Screen, pin: str = "") -> list[Step]:
    """The steps that pressing ``action`` causes while the terminal shows ``shown``."""
    if action not in ALLOWED[shown]:
        raise ActionRefused(
            f"{LABELS[action]}: not possible while the terminal shows {shown.value}"
        )
    if action is Action.DROP:
        return [Step(0.0, None)]
    if action is Action.CANCEL:
        return [Step(0.0, "cancelled", "customer")]
    if action is Action.WALK_AWAY:
        # Nobody answers the terminal: the order expires as at the end of the inactivity window.
        return [Step(0.0, "cancelled", "expired")]
    if action is Action.PIN:
        if not PIN_RE.fullmatch(pin):
            raise ActionRefused("Enter PIN: a PIN is 4 to 6 digits")
        # The PIN starts the "step up" transaction: `initialized`, then its outcome
        # (MultiSafepay/docs: content/point-of-sale/pos-card-payment-flow.md, "Notifications").
        return [Step(0.0, "initialized"), Step(AUTHORIZE, "completed")]
    # A card is tapped. After a decline the terminal asks for a card again first (as in the
    # RETRY scenario); on the "present card" screen that status is already the order's.
    return [Step(0.0, "initialized"), _TAP_OUTCOME[action]]
