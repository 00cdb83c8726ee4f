"""Commands a till writes to ``{p}:commands``: parsing, validation and idempotency keys.

A command that cannot be parsed still yields as much as can be read of it (terminal, command
id, order id) so its ``order.failed``/``command.failed`` reaches the right till.
"""

from __future__ import annotations

import hashlib
import json
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictInt,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from bridge.core.normalize import canonical_terminal_id
from bridge.core.untrusted import MAX_JSON_DEPTH, decode_untrusted, is_valid_text, json_depth, quote

ORDER_ID_PATTERN = r"^[A-Za-z0-9/_-]{1,50}$"
TERMINAL_ID_PATTERN = r"^[A-Za-z0-9-]{1,32}$"
COMMAND_ID_PATTERN = r"^[\x21-\x7e]{1,128}$"  # printable ASCII, no spaces
COMMAND_TYPES = ("pay", "cancel", "refund", "watch", "receipt")

#: The largest command accepted (characters). A ``watch`` with its token is about 2 KB.
MAX_COMMAND_CHARS = 64 * 1024
#: A refused command up to this size is still read for its terminal, to answer it there.
_READABLE_CHARS = 4 * 1024 * 1024
#: The longest error message an answer carries (characters).
_MESSAGE_LIMIT = 300

TerminalId = Annotated[str, Field(pattern=TERMINAL_ID_PATTERN)]
OrderId = Annotated[str, Field(pattern=ORDER_ID_PATTERN)]
CommandId = Annotated[str, Field(pattern=COMMAND_ID_PATTERN)]


class _Command(BaseModel):
    # cache_strings: as _COMMAND_ADAPTER's, for a model validated on its own
    model_config = ConfigDict(
        extra="forbid", frozen=True, str_strip_whitespace=True, cache_strings=False
    )

    command_id: CommandId | None = None
    terminal_id: TerminalId

    @property
    def terminal(self) -> str:
        """The canonical (upper case) terminal id used in keys and events."""
        return canonical_terminal_id(self.terminal_id)


class PayCommand(_Command):
    type: Literal["pay"]
    amount: StrictInt = Field(gt=0, le=100_000_000)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    order_id: OrderId | None = None
    description: str | None = Field(default=None, max_length=200)


class CancelCommand(_Command):
    type: Literal["cancel"]
    order_id: OrderId


class RefundCommand(_Command):
    type: Literal["refund"]
    order_id: OrderId
    amount: StrictInt | None = Field(default=None, gt=0, le=100_000_000)
    description: str | None = Field(default=None, max_length=200)


class WatchCommand(_Command):
    type: Literal["watch"]
    order_id: OrderId
    events_token: SecretStr = Field(validation_alias=AliasChoices("events_token", "event_token"))
    events_stream_url: str | None = Field(
        default=None, validation_alias=AliasChoices("events_stream_url", "event_stream_url")
    )
    events_url: str | None = Field(
        default=None, validation_alias=AliasChoices("events_url", "event_url")
    )

    @field_validator("events_stream_url", "events_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(https?|wss?)://[^\s/]+", value):
            raise ValueError("must be an http(s) or ws(s) URL")
        return value


class ReceiptCommand(_Command):
    """Ask for an order's receipt: answered with ``order.receipt`` (or ``command.failed``)."""

    type: Literal["receipt"]
    order_id: OrderId


Command = Annotated[
    PayCommand | CancelCommand | RefundCommand | WatchCommand | ReceiptCommand,
    Field(discriminator="type"),
]
AnyCommand = PayCommand | CancelCommand | RefundCommand | WatchCommand | ReceiptCommand
# cache_strings off: each stripped string went into pydantic-core's process-wide string cache
# (16,384 slots, not seen by the garbage collector), so the values of hostile commands (every
# unseen command id) stayed there, ~1 MB once full, which took a soak about an hour to fill
_COMMAND_ADAPTER: TypeAdapter[AnyCommand] = TypeAdapter(
    Command, config=ConfigDict(cache_strings=False)
)


class InvalidCommand(ValueError):
    """A command that cannot be done as written, with what could be read of it."""

    def __init__(self, message: str, raw: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        raw = raw or {}

        def pick(key: str, pattern: str) -> str | None:
            value = raw.get(key)
            return value if isinstance(value, str) and re.match(pattern, value) else None

        self.command_type = raw.get("type") if isinstance(raw.get("type"), str) else None
        self.command_id = pick("command_id", COMMAND_ID_PATTERN)
        terminal = pick("terminal_id", TERMINAL_ID_PATTERN)
        self.terminal_id = canonical_terminal_id(terminal) if terminal else None
        self.order_id = pick("order_id", ORDER_ID_PATTERN)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(quote(p, 40) for p in err["loc"] if p not in COMMAND_TYPES)
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)


def _load_object(text: str) -> dict[str, Any]:
    """``text`` as a JSON object, its depth bounded before parsing (:class:`InvalidCommand`)."""
    if json_depth(text) > MAX_JSON_DEPTH:
        raise InvalidCommand(f"command nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and ints too long to convert
        raise InvalidCommand(f"command is not JSON: {quote(str(exc), 120)}") from exc
    if not isinstance(data, dict):
        raise InvalidCommand("command is not a JSON object")
    return data


_NAMED_MEMBER = re.compile(r'"(type|command_id|terminal_id|order_id)"\s*:\s*"([^"\\]{1,128})"')


def readable_part(raw: str | bytes, message: str) -> InvalidCommand:
    """What can be read of a command that will not be done (its terminal, command id, order
    id), to answer it there with ``message``. When it does not parse (too deep, too large, not
    JSON), the first ``"terminal_id": "…"`` (etc.) string members found in its first 4 MB."""
    text = decode_untrusted(raw)[:_READABLE_CHARS]
    try:
        data: dict[str, Any] = _load_object(text)
    except InvalidCommand:
        data = {}
        for match in _NAMED_MEMBER.finditer(text):
            data.setdefault(match[1], match[2])
    return InvalidCommand(message, data)


def parse_command(raw: str | bytes) -> AnyCommand:
    """Parse the JSON in a stream entry's ``command`` field. Raises :class:`InvalidCommand`,
    and nothing else, whatever ``raw`` holds (any bytes, any JSON shape, any size)."""
    text = decode_untrusted(raw)
    if len(text) > MAX_COMMAND_CHARS:
        raise readable_part(
            text, f"command is {len(text)} characters long, more than {MAX_COMMAND_CHARS}"
        )
    if not is_valid_text(text):
        raise readable_part(text, "command is not valid UTF-8")
    try:
        data = _load_object(text)
    except InvalidCommand as exc:
        raise readable_part(text, exc.message) from None
    kind = data.get("type")
    label = quote(kind, 32) if isinstance(kind, str) and kind else "command"
    try:
        command: AnyCommand = _COMMAND_ADAPTER.validate_python(data)
    except ValidationError as exc:
        message = quote(f"invalid {label}: {_describe(exc)}", _MESSAGE_LIMIT)
        raise InvalidCommand(message, data) from exc
    return command


def command_fingerprint(command: _Command) -> str:
    """Hash of a command's body, to tell a replay (same body) from a reused command id."""
    body = command.model_dump(mode="json", exclude={"command_id"})
    if isinstance(command, WatchCommand):  # json mode masks the token; hash the real one
        body["events_token"] = hashlib.sha256(
            command.events_token.get_secret_value().encode()
        ).hexdigest()
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def derive_order_id(command_id: str) -> str:
    """The order id of a ``pay`` without one: derived from the command id, so a replayed
    command cannot create a second payment. Meets MultiSafepay's rule (<= 50, a-zA-Z0-9/-_)."""
    return "pb-" + hashlib.sha256(command_id.encode()).hexdigest()[:32]


class AmountError(ValueError):
    pass


def parse_amount(text: str) -> int:
    """``12.50`` or ``12,50`` (currency units) -> 1250 cents. Refuses more than two decimals."""
    cleaned = text.strip().replace(",", ".")
    if not re.fullmatch(r"\d+(\.\d{1,2})?", cleaned):
        if re.fullmatch(r"\d+\.\d{3,}", cleaned):
            raise AmountError(f"amount {text!r} has more than two decimals")
        raise AmountError(f"amount {text!r} is not a positive number like 12.50")
    try:
        cents = int(Decimal(cleaned) * 100)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise AmountError(f"amount {text!r} is not a number") from exc
    if cents <= 0:
        raise AmountError("amount must be more than zero")
    if cents > 100_000_000:
        raise AmountError("amount is larger than 1,000,000.00")
    return cents
