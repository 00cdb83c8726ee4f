"""How the till tools (``pay``, ``cancel``, ``tail``) print: one line per event.

Two forms, chosen by where stdout goes, so the same command serves a person and a script:
- stdout is a terminal: one readable line per event (:func:`format_event`);
- otherwise (a pipe, a file, a till program): one JSON object per line, the event exactly as
  the bridge published it, with its ``stream_id`` (the same JSON as a pub/sub message).

Also the one-line Redis errors every till tool shares (password masked).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from datetime import UTC, date, datetime, tzinfo
from typing import Any, TextIO
from urllib.parse import urlsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bridge.config import mask_url_password
from bridge.errors import UserError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _clean(value: Any) -> str:
    """Text from an event made safe for one terminal line (no newlines, no escapes)."""
    return _CONTROL.sub(" ", str(value)).strip()


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _format_time(value: Any, tz: tzinfo | None, today: date | None) -> str:
    parsed = _parse_time(value)
    if parsed is None:
        return "--:--:--.---"
    local = parsed.astimezone(tz)  # tz None: the machine's local time zone
    clock = local.strftime("%H:%M:%S.") + f"{local.microsecond // 1000:03d}"
    today = today or datetime.now(tz).date()
    return clock if local.date() == today else f"{local.date().isoformat()} {clock}"


def format_money(cents: Any, currency: Any = None) -> str:
    """1250, "EUR" -> ``EUR 12.50``."""
    if isinstance(cents, bool) or not isinstance(cents, int):
        return ""
    sign = "-" if cents < 0 else ""
    units, rest = divmod(abs(cents), 100)
    amount = f"{sign}{units}.{rest:02d}"
    return f"{_clean(currency)} {amount}" if currency else amount


def format_event(
    event: Mapping[str, Any], *, tz: tzinfo | None = None, today: date | None = None
) -> str:
    """One readable line: time (local; with the date when not today), terminal, order, type,
    status, ``FINAL``, amount, card or refund details, error code and message, ``[source]``
    and the stream id (what ``tail --since`` takes)."""
    details = event.get("details")
    parts = [
        *_head_parts(event, tz, today),
        *(_detail_parts(details) if isinstance(details, Mapping) else []),
        *_tail_parts(event),
    ]
    return " ".join(parts).rstrip()


def _head_parts(event: Mapping[str, Any], tz: tzinfo | None, today: date | None) -> list[str]:
    """Time, terminal, order, type, status, ``FINAL`` and the amount."""
    parts = [
        _format_time(event.get("received_at"), tz, today),
        _clean(event.get("terminal_id") or "-"),
        _clean(event.get("order_id") or "-"),
        f"{_clean(event.get('type') or '?'):<14}",
    ]
    status = event.get("status")
    if status:
        parts.append(f"{_clean(status):<11}")
    if event.get("final"):
        parts.append("FINAL")
    money = format_money(event.get("amount"), event.get("currency"))
    if money:
        parts.append(money)
    return parts


#: ``details`` members shown as money, with what precedes them.
_MONEY_DETAILS = (
    ("amount_charged", "charged"),
    ("refund_amount", "refund"),
    ("amount_refunded", "refunded in all"),
)


def _detail_parts(details: Mapping[str, Any]) -> list[str]:
    """The card (or the receipt's card and result), refund amounts and the reason."""
    parts: list[str] = []
    brand: Any = details.get("card")
    last4: Any = details.get("last4")
    if isinstance(brand, Mapping):  # order.receipt: the receipt's own card object
        parts.append(f"receipt {_clean(details.get('result') or '?')}")
        brand, last4 = brand.get("brand"), brand.get("last4")
    card = [_clean(brand) if brand else "", f"****{_clean(last4)}" if last4 else ""]
    if any(card):
        parts.append(" ".join(p for p in card if p))
    parts += [
        f"{label} {format_money(details[key])}" for key, label in _MONEY_DETAILS if key in details
    ]
    if details.get("reason"):
        parts.append(f"reason: {_clean(details['reason'])}")
    return parts


def _tail_parts(event: Mapping[str, Any]) -> list[str]:
    """The error, a failed command's id, ``[source]`` and the stream id."""
    parts: list[str] = []
    error = event.get("error")
    if isinstance(error, Mapping):
        parts.append(
            f"error {_clean(error.get('code') or '?')}: {_clean(error.get('message') or '')}"
        )
    if event.get("type") == "command.failed" and event.get("command_id"):
        parts.append(f"command {_clean(event['command_id'])}")
    if event.get("source"):
        parts.append(f"[{_clean(event['source'])}]")
    if event.get("stream_id"):
        parts.append(f"id={_clean(event['stream_id'])}")
    return parts


def event_json(event: Mapping[str, Any]) -> str:
    """The event as one compact JSON line."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


class Printer:
    """Prints events and notices on stdout, readable on a terminal, JSON lines otherwise.

    ``out`` defaults to whatever ``sys.stdout`` is when printing (so tests can capture it);
    ``json_lines`` defaults to "stdout is not a terminal".
    """

    def __init__(self, *, json_lines: bool | None = None, out: TextIO | None = None) -> None:
        self._out = out
        if json_lines is None:
            stream = out or sys.stdout
            try:
                json_lines = not stream.isatty()
            except (AttributeError, ValueError):
                json_lines = True
        self.json_lines = json_lines

    @property
    def out(self) -> TextIO:
        return self._out or sys.stdout

    def _write(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def event(self, event: Mapping[str, Any]) -> None:
        self._write(event_json(event) if self.json_lines else format_event(event))

    def notice(self, text: str, data: Mapping[str, Any]) -> None:
        """A line about what the tool did (e.g. the command it sent): ``text`` for a person,
        ``data`` as JSON for a program."""
        self._write(event_json(data) if self.json_lines else text)


def warn(text: str) -> None:
    """One line on stderr, in the CLI's ``pos-bridge: ...`` form."""
    print(f"pos-bridge: {_clean(text)}", file=sys.stderr, flush=True)


def describe_error(exc: BaseException, url: str | None = None) -> str:
    """The reason in one line, never showing the password of ``url``."""
    text = _clean(exc) or type(exc).__name__
    if url:
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password:
            text = text.replace(password, "***")
    return text


def redis_failure(url: str, exc: BaseException, exit_code: int = 2) -> UserError:
    """One line for a Redis call that failed: ``cannot reach Redis at URL: reason`` when the
    connection failed, ``Redis at URL refused ...: reason`` when Redis answered with an error
    (e.g. an ACL ``NOPERM``). The password is masked."""
    where = mask_url_password(url)
    reason = describe_error(exc, url)
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)):
        return UserError(f"cannot reach Redis at {where}: {reason}", exit_code)
    return UserError(f"Redis at {where} refused the request: {reason}", exit_code)
