"""The ``receipt`` command and the ``order.receipt`` event in ``pos-bridge schema``, checked with
``jsonschema`` against what the bridge parses and publishes (MultiSafepay's documented receipts)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from bridge.core.commands import parse_command
from bridge.core.receipt import receipt_event
from bridge.till.schema import json_schema

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "receipts"


def validator(name: str) -> Draft202012Validator:
    document = json_schema()
    return Draft202012Validator({**document, "oneOf": [{"$ref": f"#/$defs/{name}"}]})


def test_receipt_command() -> None:
    good = {"type": "receipt", "command_id": "c-1", "terminal_id": "T", "order_id": "o/1"}
    parse_command(json.dumps(good))
    validator("command").validate(good)
    for bad in (
        {"type": "receipt", "terminal_id": "T"},
        {"type": "receipt", "terminal_id": "T", "order_id": "o", "amount": 5},
    ):
        with pytest.raises(ValidationError):
            validator("command").validate(bad)


def published(name: str) -> dict[str, Any]:
    data = json.loads((VECTORS / name).read_text())["data"]
    event = receipt_event(
        data,
        order_id="o-1",
        terminal_id="T",
        command_id="c-1",
        state=None,
        upstream_tz=ZoneInfo("Europe/Amsterdam"),
        now=datetime.now(UTC),
    )
    return dict(json.loads(event.to_json())) | {"stream_id": "1-0"}


@pytest.mark.parametrize("name", sorted(p.name for p in VECTORS.glob("*.json")))
def test_published_receipts_match_the_schema(name: str) -> None:
    event = published(name)
    validator("event").validate(event)
    validator("Event_order_receipt").validate(event)


def test_receipt_details_are_described() -> None:
    event = published("getReceipt.json")
    for broken in (
        {k: v for k, v in event["details"].items() if k != "result"},
        {**event["details"], "result": "maybe"},
        {**event["details"], "card": {"brand": 5}},
    ):
        with pytest.raises(ValidationError):
            validator("Event_order_receipt").validate({**event, "details": broken})
    details = json_schema()["$defs"]["ReceiptDetails"]
    assert {"result", "card", "merchant", "items", "tip", "refunds", "raw"} <= set(
        details["properties"]
    )
