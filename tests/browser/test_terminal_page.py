"""The simulator's web page in a real browser: a till pays through Redis, a person plays the
customer on the page, the till receives the outcome."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers.harness import Till, bridge_config, running_bridge, statuses
from helpers.webdriver import ENTER, Browser
from redis.asyncio import Redis

from bridge.simulator.page_render import dom_id, money
from bridge.simulator.server import SimulatorServer

pytestmark = pytest.mark.anyio

MANUAL = "SIM-MANUAL-01"


def card(terminal: str) -> str:
    return f"#{dom_id(terminal.upper())}"


def has(status: str, command_id: str) -> Any:
    def check(events: list[dict[str, Any]]) -> bool:
        return any(e["command_id"] == command_id and e.get("status") == status for e in events)

    return check


async def open_page(browser: Browser, sim: SimulatorServer) -> None:
    await browser.open(sim.url)
    await browser.wait_for('#live[data-live="on"]')  # the live stream is connected


async def pay_and_wait_for_card(
    browser: Browser, till: Till, terminal: str, amount: int, description: str
) -> str:
    """The till asks for a payment; returns its command id once the page shows the amount and
    the till has seen ``initialized`` (so the bridge follows the order before the card is
    tapped)."""
    command_id = await till.pay(terminal, amount, description=description)
    shown = money(amount, "EUR")
    await browser.wait_for(f'{card(terminal)}[data-screen="present-card"] .amount', shown)
    assert await browser.text(f"{card(terminal)} .description") == description
    await till.wait_for(terminal, has("initialized", command_id), timeout=60)
    return command_id


@pytest.fixture
async def till(
    redis_server, redis_client: Redis, simulator: SimulatorServer, browser: Browser
) -> AsyncIterator[Till]:
    """The page open in the browser, a daemon running, and a till to pay with."""
    await open_page(browser, simulator)
    async with running_bridge(bridge_config(redis_server.url, simulator.base_url)):
        yield Till(redis_client)


async def test_tap_card_completes_the_tills_payment(till: Till, browser: Browser) -> None:
    command_id = await pay_and_wait_for_card(browser, till, MANUAL, 1250, "Two coffees")
    await browser.click(f'{card(MANUAL)} button[data-action="tap"]')
    events = await till.until_final(MANUAL, command_id, timeout=60)
    await browser.wait_for(f'{card(MANUAL)}[data-screen="approved"]')
    await browser.wait_for(f"{card(MANUAL)} .history", "completed")
    assert statuses(events) == ["order.created", "initialized", "completed"]
    assert events[-1]["final"]


async def test_soft_decline_answered_with_the_pin(till: Till, browser: Browser) -> None:
    command_id = await pay_and_wait_for_card(browser, till, MANUAL, 2495, "Lunch")
    await browser.click(f'{card(MANUAL)} button[data-action="tap-soft-declined"]')
    await browser.wait_for(f'{card(MANUAL)}[data-screen="enter-pin"]')
    await till.wait_for(MANUAL, has("declined", command_id), timeout=60)
    # The keyboard alone: type the PIN, Enter submits the form.
    await browser.type(f"{card(MANUAL)} input[name=pin]", "1234" + ENTER)
    events = await till.until_final(MANUAL, command_id, timeout=60)
    await browser.wait_for(f'{card(MANUAL)}[data-screen="approved"]')
    assert statuses(events) == [
        "order.created",
        "initialized",
        "declined",
        "initialized",  # the step-up transaction the PIN starts
        "completed",
    ]


async def test_cancel_on_a_terminal_set_to_manual_on_the_page(till: Till, browser: Browser) -> None:
    """TILL-A follows the amount rules (1250: approve) until the page sets it to manual."""
    terminal = "TILL-A"
    first = await till.pay(terminal, 1250)
    assert statuses(await till.until_final(terminal, first, timeout=60))[-1] == "completed"
    await browser.wait_for(f'{card(terminal)}[data-screen="approved"]')
    await browser.click(f"{card(terminal)} input[data-manual]")
    await browser.wait_for("#notice", f"{terminal}: manual")
    command_id = await pay_and_wait_for_card(browser, till, terminal, 1250, "Groceries")
    await browser.click(f'{card(terminal)} button[data-action="cancel"]')
    events = await till.until_final(terminal, command_id, timeout=60)
    await browser.wait_for(f'{card(terminal)}[data-screen="cancelled"]')
    assert statuses(events) == ["order.created", "initialized", "cancelled"]
    assert events[-1]["final"]


async def test_page_fits_a_phone_and_labels_every_control(
    simulator: SimulatorServer, browser: Browser
) -> None:
    await browser.set_window(390, 844)
    await open_page(browser, simulator)
    overflow = await browser.script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;"
    )
    assert overflow <= 0
    unlabelled = await browser.script(
        "return [...document.querySelectorAll('input, select')]"
        ".filter(e => e.labels.length === 0).map(e => e.outerHTML);"
    )
    assert unlabelled == []
    nameless = await browser.script(
        "return [...document.querySelectorAll('button')]"
        ".filter(b => !b.textContent.trim()).map(b => b.outerHTML);"
    )
    assert nameless == []


async def test_admin_forms_set_variants_and_speed(
    simulator: SimulatorServer, browser: Browser
) -> None:
    await open_page(browser, simulator)
    await browser.click("#variant-sse_ids option[value=off]")
    await browser.click("#variants-form button[type=submit]")
    await browser.wait_for("#notice", "Variants applied")
    assert simulator.simulator.variants.sse_ids == "off"
    await browser.script("document.getElementById('speed').value = '';")
    await browser.type("#speed", "42" + ENTER)
    await browser.wait_for("#speed-now", "42")
    assert simulator.simulator.clock.speed == 42.0


async def test_dropped_streams_then_a_tap_and_a_customer_who_walks_away(
    till: Till, browser: Browser
) -> None:
    """The connection drops mid-payment: the bridge still gets the tap's outcome, once."""
    command_id = await pay_and_wait_for_card(browser, till, MANUAL, 1250, "Tea")
    await browser.wait_for(f"{card(MANUAL)} .order", "streams open: 1")  # the bridge follows
    await browser.click(f'{card(MANUAL)} button[data-action="drop"]')
    await browser.click(f'{card(MANUAL)} button[data-action="tap"]')
    events = await till.until_final(MANUAL, command_id, timeout=60)
    assert statuses(events) == ["order.created", "initialized", "completed"]

    command_id = await pay_and_wait_for_card(browser, till, MANUAL, 1250, "Cake")
    await browser.click(f'{card(MANUAL)} button[data-action="walk-away"]')
    events = await till.until_final(MANUAL, command_id, timeout=60)
    await browser.wait_for(f'{card(MANUAL)}[data-screen="cancelled"] .reason', "Expired")
    assert statuses(events) == ["order.created", "initialized", "cancelled"]
