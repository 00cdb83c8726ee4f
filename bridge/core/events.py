"""The normalized event a till receives: the one schema every upstream channel is turned into.

Everything here is part of the contract in README.md, "What a till does" (field names, types,
error codes; ``pos-bridge schema`` prints it as JSON Schema), and ``schema`` is the event's
format version (docs/redis-formats.md).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer
from pydantic_core import PydanticSerializationError

from bridge.core.untrusted import replace_surrogates

SCHEMA_VERSION = 1

#: Statuses after which a payment can no longer change (refunds aside).
FINAL_STATUSES: frozenset[str] = frozenset({"completed", "cancelled", "void", "expired"})
#: Statuses that say money was taken and then (partly) given back: they imply `completed`.
REFUND_STATUSES: frozenset[str] = frozenset({"refunded", "partial_refunded"})


class EventType(StrEnum):
    ORDER_CREATED = "order.created"
    ORDER_STATUS = "order.status"
    ORDER_FAILED = "order.failed"
    ORDER_REFUND = "order.refund"
    #: Details of a final status learned after it was published (card, last4, authorization
    #: code): non-final, once per order.
    ORDER_DETAILS = "order.details"
    COMMAND_FAILED = "command.failed"
    #: An order's receipt (``bridge.core.receipt``): not final, changes nothing of the order.
    ORDER_RECEIPT = "order.receipt"


class Source(StrEnum):
    STREAM = "stream"
    WEBSOCKET = "websocket"
    WEBHOOK = "webhook"
    POLL = "poll"
    BRIDGE = "bridge"


class ErrorCode(StrEnum):
    """Why a command could not be done (README lists them for till developers)."""

    INVALID_COMMAND = "invalid_command"
    UNKNOWN_TERMINAL = "unknown_terminal"
    TERMINAL_BUSY = "terminal_busy"
    DUPLICATE_ORDER_ID = "duplicate_order_id"
    UNAUTHORIZED = "unauthorized"
    UPSTREAM_REJECTED = "upstream_rejected"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    NOT_FOUND = "not_found"
    NOT_CANCELLABLE = "not_cancellable"
    NOT_REFUNDABLE = "not_refundable"


class EventError(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    code: ErrorCode
    message: str


def format_time(value: datetime) -> str:
    """ISO 8601 in UTC with microseconds and a ``Z``, the form every event uses."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Event(BaseModel):
    """One event on a terminal's channel, durable stream and order key."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_version: int = Field(default=SCHEMA_VERSION, alias="schema")
    event_id: str
    type: EventType
    terminal_id: str
    order_id: str | None = None
    command_id: str | None = None
    session_id: str | None = None
    transaction_id: str | None = None
    status: str | None = None
    financial_status: str | None = None
    final: bool = False
    amount: int | None = None
    currency: str | None = None
    source: Source
    occurred_at: datetime | None = None
    received_at: datetime
    details: dict[str, Any] = Field(default_factory=dict)
    error: EventError | None = None
    #: Set on what tills receive (pub/sub message, order key), never in the stream entry
    #: itself: the entry's id is the stream id.
    stream_id: str | None = None

    @field_serializer("occurred_at", "received_at")
    def _times(self, value: datetime | None) -> str | None:
        return None if value is None else format_time(value)

    def to_json(self) -> str:
        """The wire form, without ``stream_id`` (Redis adds it atomically when it publishes).

        Always UTF-8 text: any field from upstream (a status, a card type, a webhook body, a
        receipt) may hold a lone surrogate, which JSON can write (``"\\ud800"``) but UTF-8
        cannot; it is replaced with ``?`` here, for every event, so it can always be published.
        """
        try:
            return self.model_dump_json(by_alias=True, exclude={"stream_id"})
        except PydanticSerializationError:
            fields = replace_surrogates(self.model_dump(by_alias=True))
            safe = type(self).model_validate(fields)
            return safe.model_dump_json(by_alias=True, exclude={"stream_id"})


_EVENT_NAMESPACE = uuid.UUID("6f1c2d0e-8a4b-4d7e-9b3a-5c0f1e2d3a4b")


def make_event_id(*parts: object) -> str:
    """A deterministic id: the same transition gets the same id on every daemon and channel."""
    name = "\x1f".join("" if p is None else str(p) for p in parts)
    # uuid5 by hand: uuid.uuid5 encodes strictly, and a part from upstream may hold a lone
    # surrogate; "surrogatepass" gives valid text the very bytes (and id) uuid5 would
    digest = hashlib.sha1(_EVENT_NAMESPACE.bytes + name.encode("utf-8", "surrogatepass"))
    return str(uuid.UUID(bytes=digest.digest()[:16], version=5))
