"""MultiSafepay webhook signatures (pure: no I/O, the clock is passed in).

MultiSafepay signs every notification: header ``Auth`` = base64 of ``"{timestamp}:{signature}"``,
where signature = hex HMAC-SHA512, key = the API key (of the terminal group), message =
``timestamp + ":" + raw body``. The raw bytes as received are what is signed: a re-serialised
body does not verify (the documentation's own example has a stray space in it).

Nothing secret (key, signature, header) ever goes into an exception message or a result repr.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

#: How far in the future a signed timestamp may be (clock skew) before it is refused.
MAX_FUTURE_SKEW = 60.0

#: Timestamps above this are read as milliseconds (in seconds it would be the year 5138).
_MILLISECONDS_ABOVE = 100_000_000_000

_TIMESTAMP_RE = re.compile(r"^[0-9]{1,16}(\.[0-9]{1,9})?$")
_SIGNATURE_RE = re.compile(r"^[0-9a-fA-F]{128}$")
_MAX_HEADER = 1024  # a real one is ~200 characters

Reason = Literal["missing_auth", "malformed_auth", "bad_signature", "stale"]

_STATUS: dict[str, int] = {
    "missing_auth": 401,
    "malformed_auth": 401,
    "bad_signature": 401,
    "stale": 401,
}


class WebhookRejected(Exception):
    """A notification that is not (or no longer) MultiSafepay's: answer ``status``, not ``OK``.

    ``reason`` is a stable code for logs and metrics; ``str(exc)`` is a short explanation that
    never contains the key, the signature or the header.
    """

    def __init__(self, reason: Reason, detail: str = "", status: int | None = None) -> None:
        self.reason: Reason = reason
        self.status: int = status if status is not None else _STATUS[reason]
        self.detail = detail
        super().__init__(f"webhook rejected: {reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True, slots=True)
class VerifiedWebhook:
    """A notification whose signature verified, with the timestamp it was signed at."""

    timestamp: str  # as signed, e.g. "1641218884"
    signed_at: float  # unix seconds
    age: float  # seconds between signing and ``now`` (negative: signed in the future)
    raw_body: bytes = field(repr=False)

    def json(self) -> Any:
        """The body decoded as JSON (raises ``ValueError`` if it is not JSON)."""
        return json.loads(self.raw_body)


def signature_hex(raw_body: bytes, api_key: str, timestamp: str) -> str:
    message = timestamp.encode("ascii") + b":" + bytes(raw_body)
    return hmac.new(api_key.encode("utf-8"), message, hashlib.sha512).hexdigest()


def sign_webhook(raw_body: bytes, api_key: str, timestamp: str | int) -> str:
    """The ``Auth`` header MultiSafepay would send for ``raw_body`` signed at ``timestamp``."""
    ts = str(timestamp)
    if not _TIMESTAMP_RE.match(ts):
        raise ValueError("timestamp must be unix seconds in digits")
    sig = signature_hex(raw_body, api_key, ts)
    return base64.b64encode(f"{ts}:{sig}".encode("ascii")).decode("ascii")


def _timestamp_seconds(ts: str) -> float:
    value = float(ts)
    return value / 1000.0 if value >= _MILLISECONDS_ABOVE else value


def _parse_auth(auth_header: str | None) -> tuple[str, str]:
    """(timestamp, signature) from the header; raises WebhookRejected."""
    if auth_header is None or not auth_header.strip():
        raise WebhookRejected("missing_auth", "no Auth header")
    value = auth_header.strip()
    if len(value) > _MAX_HEADER:
        raise WebhookRejected("malformed_auth", "Auth header too long")
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
        decoded = raw.decode("ascii")
    except (binascii.Error, ValueError):
        raise WebhookRejected("malformed_auth", "Auth header is not base64 of ASCII text") from None
    timestamp, sep, signature = decoded.partition(":")
    if not sep:
        raise WebhookRejected("malformed_auth", "Auth header has no timestamp:signature")
    timestamp, signature = timestamp.strip(), signature.strip()
    if not _TIMESTAMP_RE.match(timestamp):
        raise WebhookRejected("malformed_auth", "Auth timestamp is not a number")
    if not _SIGNATURE_RE.match(signature):
        raise WebhookRejected("malformed_auth", "Auth signature is not 128 hex digits")
    return timestamp, signature.lower()


def verify_webhook(
    raw_body: bytes,
    auth_header: str | None,
    api_key: str,
    *,
    now: float,
    max_age: float,
    max_future: float = MAX_FUTURE_SKEW,
) -> VerifiedWebhook:
    """Check a notification's ``Auth`` header against its raw body; the order of checks:

    ``missing_auth`` (no header), ``malformed_auth`` (not base64 of ``"digits:128 hex"``),
    ``bad_signature`` (HMAC differs, compared in constant time), ``stale`` (signed more than
    ``max_age`` seconds before ``now`` or more than ``max_future`` after it).

    Only the signed timestamp counts. The URL's ``timestamp`` parameter is "the time the
    notification was triggered" (MultiSafepay/docs: content/payment-management/webhook.md); no
    source says it equals the signed one, neither official SDK compares them (multisafepay
    3.1.0: ``util/webhook.py``; MultiSafepay/php-sdk: src/Util/Notification.php), and it is not
    signed, so it decides nothing.
    A body or key of the wrong type is a programming error (``TypeError``).
    """
    if not isinstance(raw_body, (bytes, bytearray, memoryview)):
        raise TypeError("verify the raw body bytes as received, not a decoded or re-encoded body")
    if not isinstance(api_key, str) or not api_key:
        raise TypeError("api_key must be a non-empty string")
    body = bytes(raw_body)
    timestamp, signature = _parse_auth(auth_header)
    expected = signature_hex(body, api_key, timestamp)
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii")):
        raise WebhookRejected("bad_signature", "signature does not match the body and key")
    signed_at = _timestamp_seconds(timestamp)
    age = now - signed_at
    if age > max_age:
        raise WebhookRejected("stale", f"signed {age:.0f} s ago, more than {max_age:g} s")
    if -age > max_future:
        raise WebhookRejected("stale", f"signed {-age:.0f} s in the future")
    return VerifiedWebhook(timestamp=timestamp, signed_at=signed_at, age=age, raw_body=body)
