"""Server-sent events framing, byte for byte as MultiSafepay's stream example."""

from __future__ import annotations

import json
from typing import Any

EVENT_KEYS = ("financial_status", "order_id", "session_id", "status", "transaction_id")


def compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def format_event(
    payload: dict[str, Any], event_id: int | None, event: str = "session.order"
) -> bytes:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"data: {compact(payload)}")
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def format_keepalive(style: str) -> bytes:
    # A comment is invisible to SSE parsers; `data: ping` is a message a client must skip.
    return b": ping\n\n" if style == "comment" else b"data: ping\n\n"


def half_written(payload: dict[str, Any], event_id: int | None) -> bytes:
    """A message cut in the middle of its data line: what a dropped connection leaves behind."""
    whole = format_event(payload, event_id)
    cut = whole.index(b"data: ") + 20
    return whole[:cut]
