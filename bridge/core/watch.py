"""May the bridge follow a ``watch`` command's stream? Pure checks, made before any connection.

A ``watch`` names a URL and a token the till got from MultiSafepay; the bridge connects there
with that token. So the URL's origin (scheme, host, port) must be exactly the API's, or a host
in ``events_hosts`` on the standard port of a scheme as secure as the API's; no userinfo (in
``http://evil.example@127.0.0.1/`` the host is 127.0.0.1); and the token must be something an
HTTP header can carry, with an expiry that is a time.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from bridge.core.untrusted import quote

#: Which stream schemes go with an API scheme, and their default ports.
_STREAM_SCHEMES = {"https": ("https", "wss"), "http": ("http", "ws")}
_DEFAULT_PORT = {"http": 80, "ws": 80, "https": 443, "wss": 443}
_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")  # what a header value may hold, bounded
_MAX_URL = 2048
#: An events token valid for more than this is not a token MultiSafepay issued (assumed: the
#: tokens seen live for minutes).
_MAX_TOKEN_LIFETIME = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int


def _host(name: str) -> str:
    return name.strip().lower().strip("[]").rstrip(".")


def _origin(url: str) -> Origin | str:
    """The URL's origin, or why it has none the bridge would connect to."""
    if len(url) > _MAX_URL or not url.isascii() or not url.isprintable():
        return "is not a printable ASCII URL of at most 2048 characters"
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in _DEFAULT_PORT:
        return "is not an http(s) or ws(s) URL"
    if "@" in parts.netloc:
        return "carries user information (user@host)"
    if not parts.hostname:
        return "has no host"
    return Origin(parts.scheme, _host(parts.hostname), port or _DEFAULT_PORT[parts.scheme])


def host_listed(host: str, events_hosts: Sequence[str]) -> bool:
    """Is ``host`` (normalized) in ``events_hosts``? ``*.example.com`` allows every subdomain
    of example.com, not example.com itself."""
    for allowed in events_hosts:
        allowed = _host(allowed)
        if allowed.startswith("*."):
            if host.endswith(allowed[1:]) and len(host) > len(allowed) - 1:
                return True
        elif host == allowed:
            return True
    return False


def refuse_events_url(url: str, api_base_url: str, events_hosts: Sequence[str]) -> str | None:
    """Why the bridge must not connect to ``url`` for a ``watch``; None when it may."""
    origin = _origin(url)
    if isinstance(origin, str):
        return f"events URL {quote(url)} {origin}"
    api = urlsplit(api_base_url)
    schemes = _STREAM_SCHEMES.get(api.scheme, ())
    api_port = api.port or _DEFAULT_PORT.get(api.scheme, 0)
    if origin.scheme in schemes:
        if origin.host == _host(api.hostname or "") and origin.port == api_port:
            return None
        if host_listed(origin.host, events_hosts) and origin.port == _DEFAULT_PORT[origin.scheme]:
            return None
    return (
        f"events URL {quote(url)} (scheme {origin.scheme}, host {quote(origin.host)}, port "
        f"{origin.port}) is neither the API's origin nor a host in events_hosts on the "
        f"standard port of {'/'.join(schemes)}"
    )


def refuse_events_token(
    token: str, claims: Mapping[str, Any], now: float | None = None
) -> str | None:
    """Why an events token cannot be used; None when it may be. ``claims``: its JWT claims,
    unverified ({} when it is not a readable JWT: then its expiry is simply unknown)."""
    if not _TOKEN.fullmatch(token):
        return "events_token must be 1 to 4096 printable ASCII characters"
    if "exp" not in claims:
        return None
    exp = claims["exp"]
    now = time.time() if now is None else now
    if (
        not isinstance(exp, (int, float))
        or isinstance(exp, bool)
        or not 0 < exp <= now + _MAX_TOKEN_LIFETIME  # also false for NaN and 10**400
    ):
        return "events_token's exp is not a plausible expiry time"
    return None


def refuse_watch(
    token: str,
    claims: Mapping[str, Any],
    urls: Sequence[str | None],
    api_base_url: str,
    events_hosts: Sequence[str],
    now: float | None = None,
) -> str | None:
    """Why a ``watch`` with this token and these URLs must not be followed; None when it may."""
    given = [u for u in urls if u is not None]
    if not given:
        return "a watch needs events_stream_url or events_url"
    for url in given:
        reason = refuse_events_url(url, api_base_url, events_hosts)
        if reason:
            return reason
    return refuse_events_token(token, claims, now)
