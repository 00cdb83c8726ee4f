"""The people at the simulated terminals: which terminals wait for a person ("manual"), and what
happens when one presses a button on the web page.

The decisions are ``terminal_face``'s (pure); this class holds the little state a person's
presence adds (manual terminals, card being processed) and asks the simulator to play the steps.
"""

from __future__ import annotations

from typing import Any, Protocol

from bridge.simulator import terminal_face
from bridge.simulator.changes import Changes
from bridge.simulator.orders import Order, OrderStore
from bridge.simulator.scenarios import Step
from bridge.simulator.terminal_face import Action, ActionRefused, Screen


class Simulator(Protocol):
    """What the customers use of the simulator (``app.Simulator``), so they need not import it."""

    changes: Changes
    store: OrderStore

    def drop(self, order: Order) -> int: ...

    def take_over(self, order: Order, func: Any, *args: Any) -> None: ...

    async def play_steps(self, order: Order, steps: list[Step]) -> None: ...


class Customers:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.manual: set[str] = set()  # upper-case terminal IDs that wait for a person
        self.processing: set[str] = set()  # order IDs whose card is being authorized

    def set_manual(self, terminal_id: str, manual: bool) -> None:
        """From the next payment on, the terminal waits for a person (or follows its scenario)."""
        tid = terminal_id.upper()
        if manual:
            self.manual.add(tid)
        else:
            self.manual.discard(tid)
        self.sim.changes.touch()

    def order_on(self, terminal_id: str) -> Order | None:
        return self.sim.store.active.get(terminal_id.upper())

    def screen(self, order: Order | None) -> Screen:
        processing = order is not None and order.order_id in self.processing
        return terminal_face.screen(order, processing)

    def press(self, terminal_id: str, action: Action, pin: str = "") -> Order:
        """Play the customer's ``action`` on the terminal's payment; ActionRefused if it cannot
        be pressed now. Whatever the terminal was scripted to do next is abandoned."""
        order = self.order_on(terminal_id)
        if order is None:
            raise ActionRefused(f"{terminal_face.LABELS[action]}: no payment on {terminal_id}")
        steps = terminal_face.plan(action, self.screen(order), pin)
        if all(step.is_drop for step in steps):
            # The network, not the customer: whatever the terminal is doing goes on.
            self.sim.drop(order)
            return order
        if terminal_face.shows_processing(action):
            self.processing.add(order.order_id)
        self.sim.take_over(order, self._play, order, steps)
        self.sim.changes.touch()
        return order

    async def _play(self, order: Order, steps: list[Step]) -> None:
        try:
            await self.sim.play_steps(order, steps)
        finally:
            self.processing.discard(order.order_id)
            self.sim.changes.touch()
