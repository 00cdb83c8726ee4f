"""``pos-bridge schema``: one JSON Schema document (draft 2020-12) of commands and events,
generated from the models themselves, checked with the ``jsonschema`` package against what
the bridge really accepts and publishes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from bridge.cli import main
from bridge.core.commands import parse_command
from bridge.core.events import ErrorCode, Event, EventError, EventType, Source, make_event_id
from bridge.till.schema import command_models, json_schema


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    document = json_schema()
    Draft202012Validator.check_schema(document)  # a valid draft 2020-12 schema
    return Draft202012Validator(document)


def sub_validator(name: str) -> Draft202012Validator:
    document = json_schema()
    return Draft202012Validator({**document, "oneOf": [{"$ref": f"#/$defs/{name}"}]})


COMMANDS: list[dict[str, Any]] = [
    {"type": "pay", "command_id": "c-1", "terminal_id": "0000004D", "amount": 1250},
    {"type": "pay", "terminal_id": "T", "amount": 5, "currency": "EUR", "order_id": "o/1"},
    {"type": "cancel", "terminal_id": "T", "order_id": "o-1"},
    {"type": "refund", "terminal_id": "T", "order_id": "o-1", "amount": 300},
    {"type": "watch", "terminal_id": "T", "order_id": "o-1", "events_token": "tok"},
]
NOT_COMMANDS: list[dict[str, Any]] = [
    {"type": "pay", "terminal_id": "T", "amount": -5},
    {"type": "pay", "terminal_id": "T", "amount": 5, "tip": 1},
    {"type": "cancel", "terminal_id": "T"},
    {"type": "teleport", "terminal_id": "T"},
]


@pytest.mark.parametrize("command", COMMANDS)
def test_what_the_bridge_accepts_the_schema_accepts(command: dict[str, Any]) -> None:
    parse_command(json.dumps(command))  # the bridge's own parser: the authority
    sub_validator("command").validate(command)


@pytest.mark.parametrize("command", NOT_COMMANDS)
def test_what_the_bridge_refuses_the_schema_refuses(command: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        sub_validator("command").validate(command)


def _event(kind: EventType, **fields: Any) -> dict[str, Any]:
    event = Event(
        event_id=make_event_id(kind),
        type=kind,
        terminal_id="0000004D",
        order_id="o-1",
        command_id="c-1",
        source=Source.BRIDGE,
        received_at=datetime.now(UTC),
        **fields,
    )
    return json.loads(event.to_json()) | {"stream_id": "1795496224406-0"}


def test_every_event_type_is_a_kind_of_event(validator: Draft202012Validator) -> None:
    document = json_schema()
    kinds = [ref["$ref"] for ref in document["$defs"]["event"]["oneOf"]]
    assert len(kinds) == len(EventType)  # data-driven: a new event type is in the schema
    for kind in EventType:
        event = _event(kind, error=EventError(code=ErrorCode.NOT_FOUND, message="m"))
        sub_validator("event").validate(event)
        validator.validate(event)
    wrong = _event(EventType.ORDER_STATUS) | {"surprise": 1}
    with pytest.raises(ValidationError):
        sub_validator("event").validate(wrong)
    with pytest.raises(ValidationError):
        sub_validator("event").validate(_event(EventType.ORDER_STATUS) | {"type": "order.nope"})


def test_the_document_lists_every_command_model_and_the_stream_entry() -> None:
    defs = json_schema()["$defs"]
    names = [ref["$ref"].rsplit("/", 1)[1] for ref in defs["command"]["oneOf"]]
    assert names == [m.__name__ for m in command_models()]
    assert {"PayCommand", "CancelCommand", "RefundCommand", "WatchCommand"} <= set(names)
    pay = defs["PayCommand"]
    assert set(pay["required"]) == {"type", "terminal_id", "amount"}
    assert pay["additionalProperties"] is False
    token = defs["WatchCommand"]["properties"]["events_token"]
    assert token["type"] == "string" and token.get("writeOnly") is True
    event = defs["Event"]["properties"]
    assert "schema_version" not in event and event["schema"]["const"] == 1
    assert event["received_at"]["format"] == "date-time"
    entry = sub_validator("terminal_stream_entry")
    entry.validate({"event": "{}"})
    with pytest.raises(ValidationError):
        entry.validate({"event": "{}", "stream_id": "1-0"})


def test_schema_command_prints_one_json_document(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    out = capsys.readouterr().out
    document = json.loads(out)
    assert document == json_schema()
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
