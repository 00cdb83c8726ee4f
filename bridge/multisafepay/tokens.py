"""Events tokens: JWTs read (not verified) to know when they expire."""

from __future__ import annotations

import base64
import json
from typing import Any


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified: the bridge only reads ``exp`` and ``pid``.

    Returns {} for anything that is not a readable JWT: expiry is then unknown, not an error.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, UnicodeDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def token_expiry(token: str) -> float | None:
    """Unix time at which the token expires, if it says."""
    exp = token_claims(token).get("exp")
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None
