"""What a simulated terminal does with a payment, chosen by terminal ID or by amount.

Scripts are plain data: a list of steps, each "after DELAY simulated seconds, become STATUS"
(or "drop the streams"). ``app`` plays them with the clock; tests can read them directly.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Collection
from dataclasses import dataclass

TAP = 1.5  # seconds for the terminal to wake and the card to be read
AUTHORIZE = 1.5  # seconds for the scheme to answer
INACTIVITY = 60.0  # an unanswered payment expires after this (MultiSafepay: about 60 s)


class Scenario(enum.StrEnum):
    APPROVE = "approve"
    DECLINE = "decline"
    SOFTDECLINE_APPROVE = "softdecline-approve"
    SOFTDECLINE_CANCEL = "softdecline-cancel"
    CUSTOMER_CANCEL = "customer-cancel"
    TIMEOUT = "timeout"
    DROP = "drop"
    RETRY = "retry"
    SLOW = "slow"
    FAIL = "fail"
    CREATE_TIMEOUT = "create-timeout"
    UNKNOWN_TERMINAL = "unknown-terminal"
    MANUAL = "manual"  # a person plays the customer on the web page (``terminal_face``)


# terminal ID prefix (upper case, before "-NN") -> scenario; longest first when matching.
BY_TERMINAL: dict[str, Scenario] = {
    "SIM-APPROVE": Scenario.APPROVE,
    "SIM-DECLINE": Scenario.DECLINE,
    "SIM-SOFTDECLINE-APPROVE": Scenario.SOFTDECLINE_APPROVE,
    "SIM-SOFTDECLINE-CANCEL": Scenario.SOFTDECLINE_CANCEL,
    "SIM-CUSTOMER-CANCEL": Scenario.CUSTOMER_CANCEL,
    "SIM-TIMEOUT": Scenario.TIMEOUT,
    "SIM-DROP": Scenario.DROP,
    "SIM-RETRY": Scenario.RETRY,
    "SIM-SLOW": Scenario.SLOW,
    "SIM-FAIL": Scenario.FAIL,
    "SIM-CREATE-TIMEOUT": Scenario.CREATE_TIMEOUT,
    "SIM-UNKNOWN": Scenario.UNKNOWN_TERMINAL,
    "SIM-MANUAL": Scenario.MANUAL,
}

# amount in cents modulo 100 -> scenario, for terminals whose ID names none.
BY_AMOUNT: dict[int, Scenario] = {
    1: Scenario.DECLINE,
    2: Scenario.SOFTDECLINE_APPROVE,
    3: Scenario.SOFTDECLINE_CANCEL,
    4: Scenario.CUSTOMER_CANCEL,
    5: Scenario.TIMEOUT,
    6: Scenario.DROP,
    7: Scenario.RETRY,
    8: Scenario.SLOW,
    9: Scenario.FAIL,
    10: Scenario.CREATE_TIMEOUT,
}

SLOW_ANSWER = 4.0  # simulated seconds every REST answer about a SLOW order is held
CREATE_HOLD_REAL = (
    600.0  # real seconds the CREATE_TIMEOUT answer is held (not scaled: a client must time out)
)


def scenario_from_terminal(terminal_id: str) -> Scenario | None:
    tid = terminal_id.upper()
    for prefix in sorted(BY_TERMINAL, key=len, reverse=True):
        if tid == prefix or tid.startswith(prefix + "-"):
            return BY_TERMINAL[prefix]
    return None


def choose(terminal_id: str, amount: int, manual: Collection[str] = ()) -> Scenario:
    """The scenario of a payment; ``manual`` holds the (upper case) terminal IDs set to wait for
    a person, whatever their ID or the amount says."""
    if terminal_id.upper() in manual:
        return Scenario.MANUAL
    by_id = scenario_from_terminal(terminal_id)
    if by_id is not None:
        return by_id
    return BY_AMOUNT.get(amount % 100, Scenario.APPROVE)


@dataclass(frozen=True)
class Step:
    delay: float  # simulated seconds after the previous step
    status: str | None  # new status, or None for a stream drop
    reason: str = ""  # why (declines, cancels): sets reason/reason_code/response_code

    @property
    def is_drop(self) -> bool:
        return self.status is None


DROP = "drop"


def script(scenario: Scenario) -> list[Step]:
    """The status changes a payment goes through after it is created."""
    init = Step(TAP, "initialized")
    done = Step(AUTHORIZE, "completed")
    if scenario is Scenario.DECLINE:
        # A hard decline not retried: the terminal waits, then the order expires.
        return [init, Step(AUTHORIZE, "declined", "hard"), Step(INACTIVITY, "cancelled", "expired")]
    # A soft decline: the original transaction is declined (code 65/71), then the "step up"
    # transaction is initialized and ends completed or cancelled (MultiSafepay/docs:
    # content/point-of-sale/pos-card-payment-flow.md, "Notifications").
    if scenario is Scenario.SOFTDECLINE_APPROVE:
        return [init, Step(AUTHORIZE, "declined", "soft"), Step(TAP, "initialized"), done]
    if scenario is Scenario.SOFTDECLINE_CANCEL:
        return [
            init,
            Step(AUTHORIZE, "declined", "soft"),
            Step(TAP, "initialized"),
            Step(AUTHORIZE * 2, "cancelled", "customer"),
        ]
    if scenario is Scenario.CUSTOMER_CANCEL:
        return [init, Step(AUTHORIZE, "cancelled", "customer")]
    if scenario is Scenario.TIMEOUT:
        return [init, Step(INACTIVITY, "cancelled", "expired")]
    if scenario is Scenario.DROP:
        return [init, Step(2.0, None), Step(AUTHORIZE * 2, "completed")]
    if scenario is Scenario.RETRY:
        return [init, Step(AUTHORIZE, "declined", "hard"), Step(TAP, "initialized"), done]
    if scenario is Scenario.MANUAL:
        # The terminal wakes and asks for a card; then it waits for the person, with no
        # inactivity timeout (the page's "walk away" button plays that).
        return [init]
    return [init, done]  # APPROVE, SLOW, CREATE_TIMEOUT


FINAL_STATUSES = frozenset({"completed", "cancelled", "void", "expired"})


@dataclass(frozen=True)
class SimTerminal:
    """A terminal as ``GET terminals`` lists it (MultiSafepay/docs:
    openapi/components/examples/responses/listTerminals.json)."""

    id: str
    name: str
    group_id: int
    provider: str = "SMARTPOS"  # or "VERIFONE"
    active: bool = True

    def listing(self, serial: int) -> dict[str, object]:
        """The listing's object; fields absent from a terminal are null, as in the docs."""
        smartpos = self.provider == "SMARTPOS"
        return {
            "id": self.id,
            "provider": self.provider,
            "name": self.name,
            "code": str(uuid.uuid5(uuid.NAMESPACE_URL, f"pos-bridge-simulator:{self.id}")),
            "created": "2025-05-13T10:00:00Z",
            "last_updated": "2025-05-14T09:17:41Z",
            "manufacturer_id": None if smartpos else "VX680",
            "serial_number": None if smartpos else f"SN{serial:08d}",
            "active": self.active,
            "group_id": self.group_id,
            "country": "NL" if self.active else None,
        }


TERMINAL_GROUP = 1001
TERMINALS: tuple[SimTerminal, ...] = tuple(
    [
        SimTerminal(f"{prefix}-01", f"Simulated: {s.value}", TERMINAL_GROUP)
        for prefix, s in BY_TERMINAL.items()
        if s is not Scenario.UNKNOWN_TERMINAL
    ]
    + [
        SimTerminal("0000004D", "Counter 1", 1002),
        SimTerminal("00000ABC", "Counter 2", 1002, provider="VERIFONE"),
        SimTerminal("00000A01", "Counter 3", 1002),
        # listed but not active (the docs' example lists one such): not for payments
        SimTerminal("00000LQT", "Terminal 00000LQT", 1002, active=False),
    ]
)
