"""Helpers for the simulator tests: a running simulator and small clients for its API."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bridge.simulator import SimulatorServer

KEY = "test-key-1"
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(speed=100) as server:
        yield server


@pytest.fixture(autouse=False)
def reset_variants(sim: SimulatorServer) -> Iterator[None]:
    yield
    httpx.put(
        sim.url + "_sim/variants",
        json={
            "sse_ids": "on",
            "keepalive": "comment",
            "field_spelling": "events",
            "transaction_id": "string",
            "events_url": "on",
            "token_ttl": 600,
        },
    )


def new_order_id(prefix: str = "t") -> str:
    return f"{prefix}-{next(_ids)}"


def order_body(
    terminal: str, amount: int = 1250, order_id: str | None = None, **extra: Any
) -> dict[str, Any]:
    body = {
        "type": "redirect",
        "order_id": order_id or new_order_id(),
        "gateway": "",
        "currency": "EUR",
        "amount": amount,
        "description": "test sale",
        "gateway_info": {"terminal_id": terminal},
    }
    body.update(extra)
    return body


def create(
    sim: SimulatorServer, terminal: str, amount: int = 1250, key: str = KEY, **extra: Any
) -> httpx.Response:
    return httpx.post(
        sim.base_url + "orders",
        headers={"api_key": key},
        json=order_body(terminal, amount, **extra),
        timeout=10,
    )


def read_sse(
    url: str, authorization: str, last_event_id: str | None = None, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Read a whole SSE stream; each message as {"event", "id", "data"} (pings included)."""
    headers = {"Accept": "text/event-stream", "Authorization": authorization}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    messages: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line == "":
                if current:
                    messages.append(current)
                current = {}
            elif line.startswith(":"):
                messages.append({"comment": line})
            else:
                name, _, value = line.partition(":")
                current[name] = value.removeprefix(" ")
    for m in messages:
        if "data" in m and m["data"] != "ping":
            m["data"] = json.loads(m["data"])
    return messages


def statuses(messages: list[dict[str, Any]]) -> list[str]:
    return [m["data"]["status"] for m in messages if m.get("event") == "session.order"]
