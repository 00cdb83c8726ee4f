"""The value types of the configuration: ranges as ``Annotated`` types, names, hosts, URLs.

Range errors are worded by ``bridge.config.errors`` from pydantic's own error (``must be
greater than 0``, ``must be at least 1``); a range whose reason the operator needs to know
(the webhook resend window, the lease renewal) says it in its own message.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BeforeValidator, Field

MASK = "***"
#: MultiSafepay resends an unacknowledged webhook 3 times, 15 minutes apart: an order key that
#: expired sooner would let a resend be published again as if it were new.
MIN_ORDER_TTL = 2700

HOSTNAME_RE = re.compile(
    r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?"
)
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TERMINAL_ID_RE = re.compile(r"[A-Za-z0-9-]{1,32}")


def _matching(pattern: str, message: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(v: str) -> str:
        if not compiled.fullmatch(v):
            raise ValueError(message)
        return v

    return AfterValidator(check)


def _at_least(minimum: float, message: str) -> AfterValidator:
    def check(v: float) -> float:
        if v < minimum:
            raise ValueError(message)
        return v

    return AfterValidator(check)


def _check_listen(v: str) -> str:
    parse_listen(v)
    return v


def _check_fraction(v: float) -> float:
    if not 0 <= v <= 1:
        raise ValueError("must be a fraction between 0 and 1")
    return v


def _check_timezone(v: str) -> str:
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{v!r} is not a known time zone (e.g. 'Europe/Amsterdam')") from None
    return v


def _fspath(v: object) -> object:
    """A path built in code (``os.PathLike``) is taken as its string."""
    return os.fspath(v) if isinstance(v, os.PathLike) else v


def _check_not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty")
    return v


Seconds = Annotated[float, Field(gt=0)]
#: A file the config names: a string (or a path, from code), not blank.
FilePath = Annotated[str, BeforeValidator(_fspath), AfterValidator(_check_not_blank)]
Count = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, AfterValidator(_check_fraction)]
GroupName = Annotated[
    str, _matching(r"[A-Za-z0-9_-]{1,64}", "must be 1 to 64 characters of A-Z a-z 0-9 _ -")
]
KeyPrefix = Annotated[
    str, _matching(r"[A-Za-z0-9_.-]{1,32}", "must be 1 to 32 characters of A-Z a-z 0-9 _ . -")
]
EnvName = Annotated[str, _matching(ENV_NAME_RE.pattern, "must be an environment variable name")]
Listen = Annotated[str, AfterValidator(_check_listen)]
TimeZoneName = Annotated[str, AfterValidator(_check_timezone)]
OrderTtl = Annotated[
    int, _at_least(MIN_ORDER_TTL, f"must be at least {MIN_ORDER_TTL} s (the webhook resend window)")
]
LeaseTtl = Annotated[
    float, _at_least(1.0, "must be at least 1 s (it is renewed every third of it)")
]
BodyLimit = Annotated[int, _at_least(1024, "must be at least 1024 bytes")]
GroupId = Annotated[int, _at_least(1, "must be a positive integer")]


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8081"`` / ``"[::1]:8081"`` / ``":8081"`` -> ``(host, port)``.

    An empty host means all addresses (``"0.0.0.0"``). Raises ``ValueError``.
    """
    if not isinstance(value, str) or not value:
        raise ValueError("must be host:port")
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or not value[end + 1 :].startswith(":"):
            raise ValueError(f"must be [ipv6]:port, got {value!r}")
        host, port_s = value[1:end], value[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_s = value.rpartition(":")
        if not sep:
            raise ValueError(f"must be host:port, got {value!r}")
        if ":" in host:
            raise ValueError(f"an IPv6 address must be in brackets: [{host}]:{port_s}")
        host = host or "0.0.0.0"
        if not HOSTNAME_RE.fullmatch(host) or host.startswith("*"):
            raise ValueError(f"{host!r} is not a host name or address")
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"port must be a number 0..65535, got {port_s!r}")
    return host, int(port_s)


def mask_url_password(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if parts.password is None:
        return url
    userinfo = f"{parts.username or ''}:{MASK}"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{userinfo}@{host}", parts.path, parts.query, parts.fragment))
