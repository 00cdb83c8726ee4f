"""Raw upstream payloads -> :class:`Observation`, the one shape the state machine reads.

MultiSafepay says the same thing in several shapes: a stream message (SSE ``session.order`` data
or a message-bus event payload) carries only the status words and ids; a webhook body and a
``GET orders/{id}`` answer carry the whole order, with a ``modified`` time that has no zone.
Pure functions, no I/O: every oddity of the wire is handled (and tested) here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

from bridge.core.events import FINAL_STATUSES, Source
from bridge.core.untrusted import MAX_JSON_DEPTH, json_depth

_STATUS_RE = re.compile(r"^[a-z_]{1,32}$")


class MalformedPayload(ValueError):
    """An upstream payload the bridge cannot read; logged and skipped, never fatal."""


def canonical_terminal_id(terminal_id: str) -> str:
    """Terminal IDs are written both ways upstream (``00000ABC``, ``0000004d``): keys use upper."""
    return terminal_id.strip().upper()


@dataclass(frozen=True, slots=True)
class Observation:
    """What one channel said about one order at one moment."""

    source: Source
    order_id: str
    status: str
    financial_status: str | None = None
    transaction_id: str | None = None
    session_id: str | None = None
    terminal_id: str | None = None
    amount: int | None = None
    currency: str | None = None
    amount_refunded: int | None = None
    #: Upstream's ``modified`` time, made timezone-aware (UTC).
    modified: datetime | None = None
    #: Set only when upstream gave a time with a zone (README, "Rules a till relies on").
    occurred_at: datetime | None = None
    #: For a poll: when the request was sent. Its answer is at least this recent, and may
    #: predate a transition the bridge received while the request was in flight.
    as_of: datetime | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise MalformedPayload(f"unexpected boolean {value!r}")
    if isinstance(value, (str, int)):
        return str(value)
    raise MalformedPayload(f"expected a string or number, got {type(value).__name__}")


def _status(value: Any) -> str:
    if not isinstance(value, str) or not _STATUS_RE.match(value.strip().lower()):
        raise MalformedPayload(f"missing or invalid status {value!r}")
    return value.strip().lower()


def _optional_status(value: Any) -> str | None:
    return None if value in (None, "") else _status(value)


def _order_id(payload: dict[str, Any]) -> str:
    order_id = _text(payload.get("order_id"))
    if order_id is None:
        raise MalformedPayload("missing order_id")
    return order_id


def _cents(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedPayload(f"{name} is not a number: {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise MalformedPayload(f"{name} is not whole cents: {value!r}")
        value = int(value)
    if value < 0:
        raise MalformedPayload(f"{name} is negative: {value!r}")
    return int(value)


def parse_upstream_time(value: Any, upstream_tz: tzinfo) -> tuple[datetime | None, bool]:
    """Parse an upstream timestamp. Returns (aware UTC time, whether upstream gave a zone).

    MultiSafepay writes ``2024-06-04T15:50:18`` with no zone; it is read in ``upstream_tz``.
    """
    if value in (None, ""):
        return None, False
    if not isinstance(value, str):
        raise MalformedPayload(f"invalid timestamp {value!r}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise MalformedPayload(f"invalid timestamp {value!r}") from exc
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=upstream_tz).astimezone(UTC), False
    return parsed.astimezone(UTC), True


def _decode(raw: str | bytes | dict[str, Any]) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        if json_depth(text) > MAX_JSON_DEPTH:  # before parsing: no RecursionError
            raise MalformedPayload(f"nests deeper than {MAX_JSON_DEPTH} levels")
        payload = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedPayload(f"not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise MalformedPayload("payload is not a JSON object")
    return payload


def _status_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """What every shape says alike: the order, its status words and its ids."""
    return {
        "order_id": _order_id(payload),
        "status": _status(payload.get("status")),
        "financial_status": _optional_status(payload.get("financial_status")),
        "transaction_id": _text(payload.get("transaction_id")),
        "session_id": _text(payload.get("session_id")),
    }


def from_stream_message(raw: str | bytes | dict[str, Any], source: Source) -> Observation:
    """A ``session.order`` message from the SSE stream or the message bus."""
    return Observation(source=source, **_status_fields(_decode(raw)))


# payment_details field -> details key, for the till's receipt and screen.
_CARD_DETAILS = {
    "type": "card",
    "last4": "last4",
    "card_entry_mode": "entry_mode",
    "authorization_code": "authorization_code",
    "response_code": "response_code",
}


def from_order(
    raw: str | bytes | dict[str, Any],
    source: Source,
    upstream_tz: tzinfo = UTC,
    as_of: datetime | None = None,
) -> Observation:
    """A whole order: a webhook body or the ``data`` of ``GET orders/{id}``."""
    payload = _decode(raw)
    modified, zoned = parse_upstream_time(payload.get("modified"), upstream_tz)
    payment = payload.get("payment_details") or {}
    if not isinstance(payment, dict):
        raise MalformedPayload("payment_details is not an object")
    details: dict[str, Any] = {}
    for upstream_key, key in _CARD_DETAILS.items():
        value = payment.get(upstream_key)
        if value not in (None, ""):
            details[key] = str(value)
    for key in ("reason", "reason_code"):
        value = payload.get(key)
        if value not in (None, ""):
            details[key] = str(value)
    terminal = _text(payment.get("terminal_id"))
    return Observation(
        source=source,
        **_status_fields(payload),
        terminal_id=canonical_terminal_id(terminal) if terminal else None,
        amount=_cents(payload.get("amount"), "amount"),
        currency=_text(payload.get("currency")),
        amount_refunded=_cents(payload.get("amount_refunded"), "amount_refunded"),
        modified=modified,
        occurred_at=modified if zoned else None,
        as_of=as_of,
        details=details,
    )
