"""The events token: an HS256 JWT, as MultiSafepay issues (claims exp, pid, grt, sub)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

GRANTS = ["mbus:session.order", "mbus:session.qr"]


class TokenError(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(claims: dict[str, Any], secret: bytes) -> str:
    header = _b64(json.dumps({"alg": "HS256"}, separators=(",", ":")).encode())
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    sig = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(sig)}"


def make_events_token(session_id: str, secret: bytes, now: float, ttl: int) -> str:
    claims = {"exp": int(now) + ttl, "grt": GRANTS, "pid": session_id, "sub": "pr"}
    return encode(claims, secret)


def decode(token: str, secret: bytes, now: float) -> dict[str, Any]:
    """Verify signature and expiry; TokenError says why not."""
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("malformed token")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
        sig = _unb64(parts[2])
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenError("malformed token") from exc
    if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(claims, dict):
        raise TokenError("unsupported token")
    expected = hmac.new(secret, f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256).digest()
    if not hmac.compare_digest(sig, expected):
        raise TokenError("bad signature")
    exp = claims.get("exp")
    if not isinstance(exp, int) or exp <= now:
        raise TokenError("token expired")
    return claims


def token_from_authorization(value: str | None) -> str | None:
    """The token from an Authorization header: bare (as documented) or ``Bearer`` (as the SDK)."""
    if not value:
        return None
    value = value.strip()
    if value.lower() == "bearer":
        return None
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    return value or None
