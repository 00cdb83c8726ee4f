"""Webhook signature: header ``Auth`` = base64("{timestamp}:{hex HMAC-SHA512(key, ts:body)}").

The HMAC covers the timestamp, a colon and the body: ``ts + ':' + body``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def signature_hex(api_key: str, timestamp: str, raw_body: bytes) -> str:
    message = timestamp.encode("ascii") + b":" + raw_body
    return hmac.new(api_key.encode("utf-8"), message, hashlib.sha512).hexdigest()


def auth_header(api_key: str, timestamp: str, raw_body: bytes) -> str:
    sig = signature_hex(api_key, timestamp, raw_body)
    return base64.b64encode(f"{timestamp}:{sig}".encode("ascii")).decode("ascii")
