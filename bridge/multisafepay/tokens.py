"""Events tokens: JWTs read (not verified) to know when they expire."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from bridge.core.untrusted import MAX_JSON_DEPTH, json_depth

#: A token's claims are a few hundred bytes; anything much larger is not MultiSafepay's.
_MAX_PAYLOAD = 8192
#: ``exp`` beyond this (year 36812) is not a time: the expiry is then unknown.
_LATEST_EXP = 2.0**40


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified: the bridge only reads ``exp`` and ``pid``.

    Returns {} for anything that is not a readable JWT (too large or deep included): expiry is
    then unknown, not an error.
    """
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > _MAX_PAYLOAD:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        text = base64.urlsafe_b64decode(payload).decode("utf-8")
        if json_depth(text) > MAX_JSON_DEPTH:
            return {}
        claims = json.loads(text)
    except (ValueError, UnicodeError, binascii.Error):
        return {}
    return claims if isinstance(claims, dict) else {}


def token_expiry(token: str) -> float | None:
    """Unix time at which the token expires, if it says (and it is a plausible time)."""
    exp = token_claims(token).get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        return None
    if not -_LATEST_EXP < exp < _LATEST_EXP:  # 10**400 would not even convert to a float
        return None
    return float(exp)
