"""``pos-bridge schema``: the JSON Schema of commands and events, from the models themselves."""

from __future__ import annotations

import json

import pytest

from bridge.cli import main
from bridge.core.schema import json_schemas


def test_commands_schema_is_the_discriminated_union() -> None:
    commands = json_schemas()["commands"]
    assert commands["$schema"].startswith("https://json-schema.org/")
    mapping = commands["discriminator"]["mapping"]
    assert set(mapping) == {"pay", "cancel", "refund", "watch"}
    defs = commands["$defs"]
    pay = defs["PayCommand"]
    assert set(pay["required"]) == {"type", "terminal_id", "amount"}
    assert pay["properties"]["amount"]["type"] == "integer"
    assert pay["additionalProperties"] is False
    token = defs["WatchCommand"]["properties"]["events_token"]
    assert token["type"] == "string" and token.get("writeOnly") is True


def test_event_schema_uses_the_wire_names() -> None:
    event = json_schemas()["event"]
    props = event["properties"]
    design_example = {
        "schema": 1,
        "event_id": "e",
        "type": "order.status",
        "terminal_id": "0000004D",
        "order_id": "till7-000123",
        "command_id": "c-8f2",
        "session_id": "s",
        "transaction_id": "890001",
        "status": "completed",
        "financial_status": "completed",
        "final": True,
        "amount": 1250,
        "currency": "EUR",
        "source": "stream",
        "occurred_at": None,
        "received_at": "2026-11-24T10:15:02.123456Z",
        "details": {"card": "VISA", "last4": "1234"},
    }
    assert set(design_example) | {"error", "stream_id"} == set(props)
    assert "schema_version" not in props and props["schema"]["const"] == 1
    assert props["received_at"]["format"] == "date-time"
    assert set(event["required"]) >= {"event_id", "type", "terminal_id", "source", "received_at"}
    types = event["$defs"]["EventType"]["enum"]
    assert set(types) == {
        "order.created",
        "order.status",
        "order.failed",
        "order.refund",
        "command.failed",
    }
    codes = event["$defs"]["ErrorCode"]["enum"]
    assert "terminal_busy" in codes and "not_refundable" in codes


def test_schema_command_prints_one_json_document(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == json_schemas()
