"""Bounds for input from outside (till commands, notifications, upstream payloads), checked
before anything parses it, so no input can cost more than a bounded amount or raise anything
but the caller's refusal (no ``RecursionError``, no ``UnicodeError`` from a later encode).

Pure functions, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from itertools import accumulate
from typing import Any

#: How deep JSON from outside may nest. A command is 2 levels deep, an order a handful; Python's
#: parser recurses per level and raises ``RecursionError`` near 1,000.
MAX_JSON_DEPTH = 32

#: How much of a bad input an answer or a log line quotes (characters).
QUOTE_LIMIT = 64

_STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_DEPTH_STEP = str.maketrans({"[": "\x01", "{": "\x01", "]": "\x02", "}": "\x02"})
_NOT_BRACKET = re.compile(r"[^\x01\x02]+")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def json_depth(text: str) -> int:
    """The deepest nesting of brackets outside string literals in ``text`` (which need not be
    valid JSON): linear time, no recursion."""
    skeleton = _NOT_BRACKET.sub("", _STRING_LITERAL.sub("", text).translate(_DEPTH_STEP))
    if not skeleton:
        return 0
    return max(0, max(accumulate(1 if c == "\x01" else -1 for c in skeleton)))


def decode_untrusted(value: bytes | str) -> str:
    """Bytes from outside as text, losslessly: invalid UTF-8 becomes lone surrogates (see
    :func:`is_valid_text`), never an exception."""
    if isinstance(value, str):
        return value
    return value.decode("utf-8", errors="surrogateescape")


def is_valid_text(text: str) -> bool:
    """False when ``text`` came from invalid UTF-8 (holds lone surrogates): it cannot be
    encoded again, so it must not reach Redis or a log line as it is."""
    return _SURROGATE.search(text) is None


def replace_surrogates(value: Any) -> Any:
    """``value`` (text, or JSON-shaped lists and dicts of it, keys too) with every lone
    surrogate made ``?``: JSON can write ``"\\ud800"`` and invalid UTF-8 decodes to one (see
    :func:`decode_untrusted`), but no UTF-8 text can hold it. Anything else is left as it is."""
    if isinstance(value, str):
        return value if is_valid_text(value) else _SURROGATE.sub("?", value)
    if isinstance(value, list | tuple):
        return [replace_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {replace_surrogates(k): replace_surrogates(v) for k, v in value.items()}
    return value


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """A bounded, printable ASCII rendering of a bad input for an answer or a log line: at
    most ``limit`` characters of it, escapes included (then ``…(N chars)``), safe to encode
    anywhere."""
    text = value if isinstance(value, str) else _short_repr(value, limit)
    escaped = text[:limit].encode("ascii", errors="backslashreplace").decode("ascii")
    if len(text) > limit or len(escaped) > limit:
        return f"{escaped[:limit]}…({len(text)} chars)"
    return escaped


def _short_repr(value: object, limit: int) -> str:
    """``repr`` of a parsed JSON value without rendering more than about ``limit`` chars."""
    if isinstance(value, dict):
        kind, size = "object", len(value)
    elif isinstance(value, list):
        kind, size = "array", len(value)
    else:
        return repr(value)[: limit + 1] if not isinstance(value, str) else value
    return f"<JSON {kind} of {size} items>"


_TOKEN_FIELD = re.compile(r'("events?_token"\s*:\s*)"(?:[^"\\]|\\.)*"?', re.IGNORECASE)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.?[A-Za-z0-9_-]*")
MASK = "***"


def mask_tokens(text: str) -> str:
    """``text`` with events tokens masked: the value of any ``events_token``/``event_token``
    member and anything shaped like a JWT (``eyJ….….…``), whether or not ``text`` parses."""
    return _JWT.sub(MASK, _TOKEN_FIELD.sub(rf'\1"{MASK}"', text))


def printable_fields(fields: Mapping[str, str], limit: int) -> dict[str, str]:
    """Stream-entry fields as they may be written back to Redis (a dead letter): names and
    values bounded to ``limit`` characters and encodable, invalid UTF-8 shown escaped, events
    tokens masked; at most 16 fields."""
    out: dict[str, str] = {}
    for name, value in list(fields.items())[:16]:
        safe_name = quote(name, 64) if not is_valid_text(name) or len(name) > 64 else name
        value = mask_tokens(value)
        if is_valid_text(value) and len(value) <= limit:
            out[safe_name] = value
        else:
            out[safe_name] = quote(value, limit)
    return out
