"""``pos-bridge schema``: one JSON Schema document (draft 2020-12) of what a till writes and
reads: the commands and the events, each under ``$defs`` with a ``oneOf`` of its kinds, and
the entries of the terminals' durable streams.

Generated from the models that parse and build them (:mod:`bridge.core.commands`,
:mod:`bridge.core.events`), and data-driven: every member of the ``Command`` union and every
``EventType`` appears without being listed here, so a new command or event type (a
``receipt``, an ``order.receipt``) is in the schema as soon as the core knows it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from typing import Any

from pydantic import BaseModel, TypeAdapter

from bridge.core.commands import Command
from bridge.core.events import SCHEMA_VERSION, Event, EventType

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_TIME = {"type": "string", "format": "date-time"}

#: What each event type says, for the schema's readers (README "What a till does").
EVENT_DESCRIPTIONS: dict[str, str] = {
    "order.created": "MultiSafepay accepted the order: the terminal asks for the card",
    "order.status": "a status change of the payment; final for completed/cancelled/void/expired",
    "order.failed": "a pay that never became a payment (error says why); final",
    "order.refund": "a refund of a completed order: one per new total refunded; command_id is "
    "the refund command's (null when the bridge did not ask), details.pay_command_id the pay's",
    "command.failed": "a command that could not be done; changes no order",
}


def command_models() -> list[type[BaseModel]]:
    """The command models, from the ``Command`` union (``Annotated[A | B | ..., ...]``)."""
    union = typing.get_args(Command)[0]
    return [m for m in typing.get_args(union) if isinstance(m, type) and issubclass(m, BaseModel)]


def _command_defs() -> tuple[dict[str, Any], list[str]]:
    schema = TypeAdapter(Command).json_schema(mode="validation", ref_template="#/$defs/{model}")
    defs = dict(schema.get("$defs", {}))
    names = [m.__name__ for m in command_models()]
    for model in command_models():
        kind = model.model_fields["type"].annotation
        defs[model.__name__]["description"] = (
            f"the `{typing.get_args(kind)[0]}` command" if typing.get_args(kind) else ""
        )
    return defs, names


def _event_defs() -> tuple[dict[str, Any], list[str]]:
    schema = Event.model_json_schema(
        by_alias=True, mode="serialization", ref_template="#/$defs/{model}"
    )
    defs = dict(schema.pop("$defs", {}))
    props = schema["properties"]
    # the models serialize times as ISO 8601 UTC strings ("...Z"); say so
    props["received_at"] = {**_TIME, "title": "Received At"}
    props["occurred_at"] = {
        "anyOf": [_TIME, {"type": "null"}],
        "default": None,
        "title": "Occurred At",
    }
    props["schema"] = {**props["schema"], "const": SCHEMA_VERSION}
    props["stream_id"] = {
        **props["stream_id"],
        "description": "id of the same event in the terminal's durable stream (the entry id); "
        "set on pub/sub messages and the order key, absent inside the stream entry",
    }
    defs["Event"] = {
        **schema,
        "description": "An event on {prefix}:terminal:{T} (pub/sub), in "
        "{prefix}:terminal:{T}:events (durable) and {prefix}:order:{order_id}",
    }
    names = []
    for kind in EventType:
        name = "Event_" + kind.value.replace(".", "_")
        defs[name] = {
            "description": EVENT_DESCRIPTIONS.get(kind.value, f"a `{kind.value}` event"),
            "allOf": [{"$ref": "#/$defs/Event"}],
            "properties": {"type": {"const": kind.value}},
        }
        names.append(name)
    return defs, names


def json_schema() -> dict[str, Any]:
    """The whole contract in one document: ``$defs.command`` (the ``command`` field of a
    ``{p}:commands`` entry), ``$defs.event`` (what tills receive) and
    ``$defs.terminal_stream_entry``. The document itself accepts a command or an event."""
    command_defs, commands = _command_defs()
    event_defs, events = _event_defs()
    defs: dict[str, Any] = {**command_defs, **event_defs}
    defs["command"] = {
        "description": "JSON in the field `command` of an entry of the stream {prefix}:commands "
        "(XADD {prefix}:commands * command '<json>')",
        "oneOf": [{"$ref": f"#/$defs/{name}"} for name in commands],
    }
    defs["event"] = {
        "description": "an event as tills receive it, told apart by `type`",
        "oneOf": [{"$ref": f"#/$defs/{name}"} for name in events],
    }
    defs["terminal_stream_entry"] = {
        "description": "the fields of an entry of {prefix}:terminal:{T}:events: one field "
        "`event`, the event's JSON without `stream_id`; the entry's id is its stream_id "
        "(XREAD STREAMS {prefix}:terminal:{T}:events <last stream_id> to catch up)",
        "type": "object",
        "properties": {"event": {"type": "string", "contentMediaType": "application/json"}},
        "required": ["event"],
        "additionalProperties": False,
    }
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "pos-bridge: commands a till writes, events it reads",
        "oneOf": [{"$ref": "#/$defs/command"}, {"$ref": "#/$defs/event"}],
        "$defs": defs,
    }


def schema_command(args: argparse.Namespace) -> int:
    try:
        print(json.dumps(json_schema(), indent=2), flush=True)
    except BrokenPipeError:  # `pos-bridge schema | head`: no traceback, no error at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0
