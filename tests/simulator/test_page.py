"""The web page's HTTP side, without a browser: the page, its live stream, the button calls."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bridge.simulator import SimulatorServer
from tests.simulator.conftest import KEY, create


@pytest.fixture
def page_sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(speed=100) as server:
        yield server


def press(sim: SimulatorServer, terminal: str, action: str, **extra: Any) -> httpx.Response:
    body = {"terminal_id": terminal, "action": action, **extra}
    return httpx.post(sim.url + "_sim/press", json=body, timeout=10)


def shown(cards: dict[str, Any], terminal: str) -> str | None:
    return cards.get(terminal, {}).get("screen")


def cards_until(sim: SimulatorServer, done: Any, timeout: float = 30.0) -> dict[str, Any]:
    """Read the page's stream until ``done(cards by terminal)`` holds; the cards then."""
    cards: dict[str, Any] = {}
    with httpx.stream("GET", sim.url + "_sim/page/stream", timeout=timeout) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                card = json.loads(line.removeprefix("data: "))
                cards[card["terminal_id"]] = card
                if done(cards):
                    return cards
    raise AssertionError("the stream ended")


def test_the_page_shows_every_terminal_and_a_payment(page_sim: SimulatorServer) -> None:
    assert (
        create(page_sim, "SIM-MANUAL-01", 1250, description="Two <b>coffees</b>").status_code == 200
    )
    page = httpx.get(page_sim.url, timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert 'id="terminal-SIM-MANUAL-01"' in html and 'id="terminal-0000004D"' in html
    assert "€ 12.50" in html
    assert "Two &lt;b&gt;coffees&lt;/b&gt;" in html  # escaped, never markup
    assert 'data-screen="present-card"' in html
    assert httpx.get(page_sim.url + "_sim/static/page.js", timeout=10).status_code == 200
    assert httpx.get(page_sim.url + "_sim/static/page.css", timeout=10).status_code == 200


def test_buttons_drive_the_payment_and_the_stream_follows(page_sim: SimulatorServer) -> None:
    order_id = create(page_sim, "SIM-MANUAL-01").json()["data"]["order_id"]
    assert press(page_sim, "sim-manual-01", "pin", pin="1234").status_code == 409  # no PIN yet
    assert press(page_sim, "SIM-MANUAL-01", "tap-soft-declined").status_code == 200
    cards_until(page_sim, lambda c: shown(c, "SIM-MANUAL-01") == "enter-pin")
    answer = press(page_sim, "SIM-MANUAL-01", "pin", pin="12")
    assert answer.status_code == 409 and "4 to 6 digits" in answer.json()["error"]
    assert press(page_sim, "SIM-MANUAL-01", "pin", pin="4321").status_code == 200
    cards = cards_until(page_sim, lambda c: shown(c, "SIM-MANUAL-01") == "approved")
    assert "<code>declined</code>" in cards["SIM-MANUAL-01"]["html"]
    orders = httpx.get(page_sim.url + "_sim/orders", timeout=10).json()["data"]
    assert [o["events"] for o in orders if o["order_id"] == order_id] == [
        ["initialized", "declined", "initialized", "completed"]
    ]
    assert press(page_sim, "SIM-MANUAL-01", "cancel").status_code == 409  # it is over


def test_walk_away_and_the_api_cancel_end_a_manual_payment(page_sim: SimulatorServer) -> None:
    create(page_sim, "SIM-MANUAL-01")
    assert press(page_sim, "SIM-MANUAL-01", "walk-away").status_code == 200
    create(page_sim, "SIM-MANUAL-02")
    assert press(page_sim, "SIM-MANUAL-02", "tap").json()["data"]["screen"] == "processing"
    cards = cards_until(
        page_sim,
        lambda c: (
            shown(c, "SIM-MANUAL-01") == "cancelled" and shown(c, "SIM-MANUAL-02") == "approved"
        ),
    )
    assert "Expired: no activity" in cards["SIM-MANUAL-01"]["html"]
    # Cancelled through the API while the card is being authorized: the approval never comes.
    httpx.put(page_sim.url + "_sim/speed", json={"speed": 0.01})  # authorizing takes 150 s
    order_id = create(page_sim, "SIM-MANUAL-03").json()["data"]["order_id"]
    assert press(page_sim, "SIM-MANUAL-03", "tap").json()["data"]["screen"] == "processing"
    cancel = httpx.post(
        f"{page_sim.base_url}orders/{order_id}/cancel", headers={"api_key": KEY}, timeout=10
    )
    assert cancel.json()["data"]["status"] == "cancelled"
    cards = cards_until(page_sim, lambda c: shown(c, "SIM-MANUAL-03") == "cancelled")
    assert "Cancelled via API" in cards["SIM-MANUAL-03"]["html"]


def test_a_terminal_set_to_manual_waits_for_a_person(page_sim: SimulatorServer) -> None:
    url = page_sim.url + "_sim/manual"
    assert httpx.put(url, json={"terminal_id": "till-a", "manual": True}).json()["data"] == [
        "TILL-A"
    ]
    create(page_sim, "TILL-A", 1250)  # 1250 would be approved by the amount rule
    orders = httpx.get(page_sim.url + "_sim/orders", timeout=10).json()["data"]
    assert orders[0]["scenario"] == "manual"
    cards_until(page_sim, lambda c: shown(c, "TILL-A") == "present-card")
    assert press(page_sim, "TILL-A", "cancel").status_code == 200
    cards_until(page_sim, lambda c: shown(c, "TILL-A") == "cancelled")
    assert httpx.put(url, json={"terminal_id": "TILL-A", "manual": False}).json()["data"] == []


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"action": "tap"},
        {"terminal_id": "", "action": "tap"},
        {"terminal_id": "X" * 101, "action": "tap"},
        {"terminal_id": "SIM-MANUAL-01", "action": "dance"},
        {"terminal_id": "SIM-MANUAL-01", "action": "pin", "pin": 1234},
    ],
)
def test_hostile_button_calls_are_refused(page_sim: SimulatorServer, body: Any) -> None:
    assert httpx.post(page_sim.url + "_sim/press", json=body).status_code == 400
    assert httpx.post(page_sim.url + "_sim/press", content=b"\xff{").status_code == 400


def test_no_payment_no_button(page_sim: SimulatorServer) -> None:
    answer = press(page_sim, "SIM-MANUAL-01", "tap")
    assert answer.status_code == 409 and "no payment" in answer.json()["error"]


@pytest.mark.parametrize("speed", [0, -1, "fast", True, 1e9, None])
def test_speed_is_checked(page_sim: SimulatorServer, speed: Any) -> None:
    assert httpx.put(page_sim.url + "_sim/speed", json={"speed": speed}).status_code == 400
    assert httpx.get(page_sim.url + "_sim/speed").json()["data"] == {"speed": 100.0}


def test_speed_changes_at_run_time(page_sim: SimulatorServer) -> None:
    assert httpx.put(page_sim.url + "_sim/speed", json={"speed": 250}).json()["data"] == {
        "speed": 250.0
    }
    assert page_sim.simulator.clock.scaled(1.0) == pytest.approx(1 / 250)


def test_a_card_lists_the_webhooks_sent_and_their_answers(page_sim: SimulatorServer) -> None:
    page_sim.simulator.webhook_url = page_sim.url + "no-such-hook"  # answers 404: not acknowledged
    create(page_sim, "SIM-MANUAL-01")
    assert press(page_sim, "SIM-MANUAL-01", "cancel").status_code == 200
    cards = cards_until(
        page_sim,
        lambda c: "<code>cancelled</code> → HTTP 404" in c.get("SIM-MANUAL-01", {}).get("html", ""),
    )
    assert "Cancelled by customer" in cards["SIM-MANUAL-01"]["html"]
