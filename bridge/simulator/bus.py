"""The WebSocket message bus protocol (pure): client frames in, replies out."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

CHANNELS = frozenset({"session.order", "session.qr"})


@dataclass
class BusSession:
    """What one WebSocket connection has subscribed to."""

    channels: set[str] = field(default_factory=set)

    def handle(self, text: str) -> dict[str, Any]:
        """The reply to one client text frame."""
        try:
            msg = json.loads(text)
        except ValueError:
            return error(None, "invalid JSON")
        if not isinstance(msg, dict):
            return error(None, "message must be a JSON object")
        msg_id = msg.get("id")
        kind = msg.get("type")
        if not isinstance(msg_id, str) or not msg_id:
            return error(msg_id, "missing id")
        if kind == "heartbeat":
            return ack(msg_id)
        if kind in ("subscribe", "unsubscribe"):
            channel = msg.get("channel")
            if channel not in CHANNELS:
                return error(msg_id, f"unknown channel: {channel}")
            if kind == "subscribe":
                self.channels.add(channel)
            else:
                self.channels.discard(channel)
            return ack(msg_id)
        return error(msg_id, f"unknown message type: {kind}")


def ack(reply_id: str) -> dict[str, Any]:
    return {"type": "ack", "replyId": reply_id}


def error(reply_id: Any, message: str) -> dict[str, Any]:
    return {"type": "error", "replyId": reply_id, "payload": {"message": message}}


def event(channel: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"type": "event", "channel": channel, "payload": payload}
