"""``pos-bridge schema``: the JSON Schema of the commands a till writes and the events it reads.

Generated from the models that parse and build them (:mod:`bridge.core.commands`,
:mod:`bridge.core.events`), so it cannot drift from what the bridge accepts and publishes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from pydantic import TypeAdapter

from bridge.core.commands import Command
from bridge.core.events import SCHEMA_VERSION, Event

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_TIME = {"type": "string", "format": "date-time"}


def command_schema() -> dict[str, Any]:
    """What the ``command`` field of a ``{p}:commands`` entry may hold: one of the command
    objects, told apart by ``type``. (``watch``'s ``events_token`` is a write-only string.)"""
    schema = TypeAdapter(Command).json_schema(mode="validation")
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "pos-bridge command",
        "description": "JSON in the field `command` of an entry of the stream {prefix}:commands",
        **schema,
    }


def event_schema() -> dict[str, Any]:
    """An event as tills receive it (pub/sub message, order key; a stream entry's ``event``
    field is the same without ``stream_id``), with the wire's field names (``schema``)."""
    schema = Event.model_json_schema(by_alias=True, mode="serialization")
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
        "description": "id of the same event in the terminal's durable stream; set on "
        "pub/sub messages and the order key, absent inside the stream entry",
    }
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "pos-bridge event",
        "description": "An event on {prefix}:terminal:{T}, {prefix}:terminal:{T}:events "
        "and {prefix}:order:{order_id}",
        **schema,
    }


def json_schemas() -> dict[str, Any]:
    """``{"commands": <schema>, "event": <schema>}``: what ``pos-bridge schema`` prints."""
    return {"commands": command_schema(), "event": event_schema()}


def schema_command(args: argparse.Namespace) -> int:
    try:
        print(json.dumps(json_schemas(), indent=2), flush=True)
    except BrokenPipeError:  # `pos-bridge schema | head`: no traceback, no error at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0
