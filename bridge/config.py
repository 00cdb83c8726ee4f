"""The daemon's configuration: a TOML file, validated by pydantic, overridable from the environment.

Public API (see also ``config.example.toml``, which documents every key):

- ``load_config(path=None, environ=None, *, warn=...) -> Config``: read, override, validate.
- ``Config.from_mapping(data, environ=None, *, source="<config>") -> Config``: the same from a dict.
- ``ConfigError``: every problem, as one line ``SOURCE: FIELD.PATH: reason``.
- ``check_config_command(args) -> int``: ``pos-bridge check-config``.

Every model forbids unknown keys (a typo must not silently disable a feature), is strict about
types (``enabled = "yes"`` is an error, not a truthy string) and is frozen once loaded.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import socket
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from urllib.parse import quote, unquote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bridge.errors import UserError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_CONFIG_PATH",
    "ENV_OVERRIDE_PREFIX",
    "MIN_ORDER_TTL",
    "Config",
    "ConfigError",
    "DaemonConfig",
    "HttpConfig",
    "LogConfig",
    "MultiSafepayConfig",
    "RedisConfig",
    "TerminalGroup",
    "WebhookConfig",
    "check_config_command",
    "load_config",
    "mask_url_password",
    "parse_listen",
]

DEFAULT_CONFIG_PATH = "/etc/pos-bridge/config.toml"
ENV_CONFIG_PATH = "POS_BRIDGE_CONFIG"
ENV_OVERRIDE_PREFIX = "POS_BRIDGE__"
#: MultiSafepay resends an unacknowledged webhook 3 times, 15 minutes apart: an order key that
#: expired sooner would let a resend be published again as if it were new.
MIN_ORDER_TTL = 2700
MASK = "***"

_log = logging.getLogger("bridge.config")

_GROUP_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TERMINAL_ID_RE = re.compile(r"[A-Za-z0-9-]{1,32}")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOSTNAME_RE = re.compile(
    r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?"
)
_LEVEL_ALIASES = {"warn": "warning", "err": "error"}


# --------------------------------------------------------------------------------------------
# errors


class ConfigError(UserError):
    """An invalid or unreadable configuration. ``str()`` is one line naming source, field, reason.

    ``errors`` holds every problem found as ``(field_path, reason)`` (``field_path`` may be "").
    """

    def __init__(self, source: str, errors: Iterable[tuple[str, str]], exit_code: int = 2) -> None:
        self.source = source
        self.errors = [(p, _one_line(r)) for p, r in errors] or [("", "invalid configuration")]
        parts = [f"{p}: {r}" if p else r for p, r in self.errors]
        super().__init__(f"{source}: " + "; ".join(parts), exit_code)

    def __str__(self) -> str:
        return self.message


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _loc_to_path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


_SECRETISH = ("api_key", "password", "secret", "token", "url")


def _describe_input(loc: tuple[Any, ...], value: Any) -> str:
    """A short ``(got ...)`` suffix for an error, never for anything that may hold a secret."""
    if any(isinstance(p, str) and any(s in p.lower() for s in _SECRETISH) for p in loc):
        return ""
    if isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 60):
        return f" (got {value!r})"
    if isinstance(value, (dict, list)):
        return f" (got a {'table' if isinstance(value, dict) else 'list'})"
    return ""


def _validation_errors(
    exc: ValidationError, overridden: Mapping[str, str]
) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = _loc_to_path(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            reason = "unknown key"
        elif kind == "missing":
            reason = "required key is missing"
        else:
            reason = err["msg"]
            for prefix in ("Value error, ", "Assertion failed, "):
                reason = reason.removeprefix(prefix)
            if kind not in ("value_error", "assertion_error"):
                reason += _describe_input(loc, err.get("input"))
        env = overridden.get(path)
        if env:
            path += f" (from {env})"
        out.append((path, reason))
    return out


# --------------------------------------------------------------------------------------------
# helpers usable by teammates


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
        if not _HOSTNAME_RE.fullmatch(host) or host.startswith("*"):
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


# --------------------------------------------------------------------------------------------
# models


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)


def _positive(name: str) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if v <= 0:
            raise ValueError("must be greater than 0")
        return v

    check.__name__ = f"_positive_{name}"
    return check


class TerminalGroup(_Model):
    """One MultiSafepay terminal group: its API key and its terminals.

    The resolved key is ``group.key`` (a ``SecretStr``); where it came from is ``key_source``.
    """

    name: str
    api_key_file: str | None = None
    api_key_env: str | None = None
    api_key: SecretStr | None = None  # inline: development only
    terminals: list[str] = Field(default_factory=list)
    group_id: int | None = None
    discover: bool = False

    _key: SecretStr | None = PrivateAttr(default=None)
    _key_source: str = PrivateAttr(default="")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _GROUP_NAME_RE.fullmatch(v):
            raise ValueError("must be 1 to 64 characters of A-Z a-z 0-9 _ -")
        return v

    @field_validator("api_key_env")
    @classmethod
    def _check_env(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME_RE.fullmatch(v):
            raise ValueError("must be an environment variable name")
        return v

    @field_validator("api_key_file", mode="before")
    @classmethod
    def _pathlike(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @field_validator("api_key_file")
    @classmethod
    def _check_file(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("terminals")
    @classmethod
    def _check_terminals(cls, v: list[str]) -> list[str]:
        seen: set[str] = set()
        for tid in v:
            if not _TERMINAL_ID_RE.fullmatch(tid):
                raise ValueError(f"terminal ID {tid!r} must be 1 to 32 characters of A-Z a-z 0-9 -")
            if tid.upper() in seen:
                raise ValueError(f"terminal {tid} is listed twice")
            seen.add(tid.upper())
        return v

    @field_validator("group_id")
    @classmethod
    def _check_group_id(cls, v: int | None) -> int | None:
        if v is not None and v <= 0:
            raise ValueError("must be a positive integer")
        return v

    @model_validator(mode="after")
    def _check_has_terminals(self) -> TerminalGroup:
        if not self.terminals and not self.discover:
            raise ValueError("lists no terminals: set terminals = [...] or discover = true")
        return self

    # -- the resolved key ----------------------------------------------------------------------
    @property
    def key(self) -> SecretStr:
        """The group's API key (resolved at load time). Use ``.get_secret_value()`` to send it."""
        if self._key is None:  # pragma: no cover - only if built around load/from_mapping
            raise RuntimeError(f"terminal group {self.name}: API key was not resolved")
        return self._key

    @property
    def key_source(self) -> str:
        """Where the key came from, e.g. ``"file /run/credentials/pos-bridge.service/shop"``."""
        return self._key_source

    @property
    def terminal_ids(self) -> frozenset[str]:
        """The configured terminal IDs, upper case (canonical form)."""
        return frozenset(t.upper() for t in self.terminals)

    def _resolve_key(self, environ: Mapping[str, str]) -> tuple[str, str] | None:
        """Set ``_key``/``_key_source``; return ``(field, reason)`` on failure."""
        key: str | None = None
        if self.api_key is not None:
            key, source, field = (
                self.api_key.get_secret_value().strip(),
                "inline api_key",
                "api_key",
            )
            if not key:
                return field, "is empty"
        elif self.api_key_file is not None:
            path, field = Path(self.api_key_file).expanduser(), "api_key_file"
            source = f"file {path}"
            try:
                key = path.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                return field, f"{path}: no such file"
            except IsADirectoryError:
                return field, f"{path}: is a directory"
            except PermissionError:
                return field, f"{path}: permission denied"
            except (OSError, UnicodeDecodeError) as exc:
                return field, f"{path}: cannot read ({type(exc).__name__})"
            if not key:
                return field, f"{path}: file is empty"
        elif self.api_key_env is not None:
            field = "api_key_env"
            source = f"env {self.api_key_env}"
            if self.api_key_env not in environ:
                return field, f"environment variable {self.api_key_env} is not set"
            key = environ[self.api_key_env].strip()
            if not key:
                return field, f"environment variable {self.api_key_env} is empty"
        else:
            field = ""
            cred_dir = environ.get("CREDENTIALS_DIRECTORY")
            if not cred_dir:
                return field, (
                    "no API key: set api_key_file or api_key_env, or give the daemon the "
                    f"systemd credential {self.name!r} (LoadCredential={self.name}:...); "
                    "$CREDENTIALS_DIRECTORY is not set"
                )
            path = Path(cred_dir) / self.name
            source = f"credential {path}"
            try:
                key = path.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                return field, (
                    f"no API key: no systemd credential {self.name!r} in {cred_dir} and neither "
                    "api_key_file nor api_key_env is set"
                )
            except (OSError, UnicodeDecodeError) as exc:
                return field, f"credential {path}: cannot read ({type(exc).__name__})"
            if not key:
                return field, f"credential {path}: file is empty"
        if any(c.isspace() or not c.isprintable() for c in key):
            return field, "the API key contains whitespace or control characters"
        self._key = SecretStr(key)
        self._key_source = source
        return None


class MultiSafepayConfig(_Model):
    api_base_url: str = "https://api.multisafepay.com/v1/json/"
    api_key_in: Literal["header", "query"] = "header"
    events_hosts: list[str] = Field(
        default_factory=lambda: ["api.multisafepay.com", "testapi.multisafepay.com"]
    )
    transport: Literal["auto", "sse", "websocket"] = "auto"
    events_auth: Literal["bearer", "raw"] = "bearer"
    connect_timeout: float = 10.0
    request_timeout: float = 30.0
    stream_idle_timeout: float = 45.0
    reconnect_initial: float = 1.0
    reconnect_factor: float = 2.0
    reconnect_cap: float = 60.0
    reconnect_jitter: float = 0.2
    poll_interval: float = 10.0
    max_payment_age: float = 300.0
    create_retries: int = 2
    enrich_final: bool = True
    upstream_timezone: str = "Europe/Amsterdam"
    terminal_groups: list[TerminalGroup] = Field(default_factory=list)

    @field_validator("api_base_url")
    @classmethod
    def _check_base_url(cls, v: str) -> str:
        try:
            parts = urlsplit(v)
        except ValueError as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        if parts.password is not None or parts.username is not None:
            raise ValueError("must not contain user or password (keys go in terminal groups)")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        return v if v.endswith("/") else v + "/"

    @field_validator("events_hosts")
    @classmethod
    def _check_hosts(cls, v: list[str]) -> list[str]:
        out = []
        for h in v:
            h2 = h.strip().lower().strip("[]").rstrip(".")
            try:
                ipaddress.ip_address(h2)
            except ValueError:
                if not _HOSTNAME_RE.fullmatch(h2):
                    raise ValueError(
                        f"{h!r} is not a host name (no scheme, port or path; '*.domain' allowed)"
                    ) from None
            out.append(h2)
        return out

    _pos = field_validator(
        "connect_timeout",
        "request_timeout",
        "stream_idle_timeout",
        "reconnect_initial",
        "reconnect_cap",
        "poll_interval",
        "max_payment_age",
    )(_positive("seconds"))

    @field_validator("reconnect_factor")
    @classmethod
    def _check_factor(cls, v: float) -> float:
        if v < 1:
            raise ValueError("must be at least 1")
        return v

    @field_validator("reconnect_jitter")
    @classmethod
    def _check_jitter(cls, v: float) -> float:
        if not 0 <= v <= 1:
            raise ValueError("must be a fraction between 0 and 1")
        return v

    @field_validator("create_retries")
    @classmethod
    def _check_retries(cls, v: int) -> int:
        if v < 0:
            raise ValueError("must be 0 or more")
        return v

    @field_validator("upstream_timezone")
    @classmethod
    def _check_tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not a known time zone (e.g. 'Europe/Amsterdam')") from None
        return v

    @field_validator("terminal_groups")
    @classmethod
    def _check_groups(cls, v: list[TerminalGroup]) -> list[TerminalGroup]:
        if not v:
            raise ValueError("at least one [[multisafepay.terminal_groups]] is required")
        names: dict[str, int] = {}
        owner: dict[str, str] = {}
        for i, g in enumerate(v):
            if g.name in names:
                raise ValueError(
                    f"group name {g.name!r} is used twice (groups {names[g.name]} and {i})"
                )
            names[g.name] = i
            for tid in g.terminals:
                prev = owner.get(tid.upper())
                if prev is not None:
                    raise ValueError(f"terminal {tid} is in two groups: {prev!r} and {g.name!r}")
                owner[tid.upper()] = g.name
        return v

    @model_validator(mode="after")
    def _check_cap(self) -> MultiSafepayConfig:
        if self.reconnect_cap < self.reconnect_initial:
            raise ValueError("reconnect_cap must not be smaller than reconnect_initial")
        return self

    @property
    def api_host(self) -> str:
        """The lower-case host of ``api_base_url``."""
        return (urlsplit(self.api_base_url).hostname or "").lower()

    @property
    def tzinfo(self) -> ZoneInfo:
        """The zone MultiSafepay's zone-less timestamps are in."""
        return ZoneInfo(self.upstream_timezone)

    def allows_events_host(self, host: str | None) -> bool:
        """May the bridge open an event stream on ``host``? (``events_hosts`` + the API host).

        Case-insensitive; a trailing dot and IPv6 brackets are ignored; an entry
        ``*.example.com`` allows every subdomain of example.com (not example.com itself).
        """
        if not host:
            return False
        h = host.strip().lower().strip("[]").rstrip(".")
        if not h:
            return False
        if h == self.api_host:
            return True
        for allowed in self.events_hosts:
            if allowed.startswith("*."):
                if h.endswith(allowed[1:]) and len(h) > len(allowed) - 1:
                    return True
            elif h == allowed:
                return True
        return False


class RedisConfig(_Model):
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "pos"
    stream_maxlen: int = 10000
    commands_maxlen: int = 100000
    order_ttl: int = 604800
    consumer_name: str = ""
    command_claim_idle: float = 120.0

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"not a valid URL ({str(exc).split(':')[0]})") from None
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError(
                    "a unix:// URL needs a socket path, e.g. unix:///run/redis/redis.sock"
                )
        elif not parts.hostname:
            raise ValueError("must name a host, e.g. redis://127.0.0.1:6379/0")
        return v

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, v: str) -> str:
        if not _PREFIX_RE.fullmatch(v):
            raise ValueError("must be 1 to 32 characters of A-Z a-z 0-9 _ . -")
        return v

    @field_validator("stream_maxlen", "commands_maxlen")
    @classmethod
    def _check_maxlen(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be at least 1")
        return v

    @field_validator("order_ttl")
    @classmethod
    def _check_ttl(cls, v: int) -> int:
        if v < MIN_ORDER_TTL:
            raise ValueError(f"must be at least {MIN_ORDER_TTL} s (the webhook resend window)")
        return v

    @field_validator("consumer_name")
    @classmethod
    def _check_consumer(cls, v: str) -> str:
        if len(v) > 200 or any(c.isspace() or not c.isprintable() for c in v):
            raise ValueError("must be at most 200 printable characters without spaces")
        return v

    _pos = field_validator("command_claim_idle")(_positive("seconds"))

    @property
    def password(self) -> SecretStr | None:
        """The password in ``url``, if any."""
        pw = urlsplit(self.url).password
        return SecretStr(unquote(pw)) if pw is not None else None

    @property
    def masked_url(self) -> str:
        """``url`` with the password replaced by ``***`` (safe to print or log)."""
        return mask_url_password(self.url)

    @property
    def effective_consumer_name(self) -> str:
        """``consumer_name``, or ``hostname-pid`` when it is empty."""
        return self.consumer_name or f"{socket.gethostname()}-{os.getpid()}"

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        for k, v in super().__repr_args__():
            yield (k, self.masked_url) if k == "url" else (k, v)


class _ListenMixin:
    """``host`` and ``port`` of a ``listen = "host:port"`` field."""

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]  # type: ignore[attr-defined]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]  # type: ignore[attr-defined]


def _check_listen(v: str) -> str:
    parse_listen(v)
    return v


class WebhookConfig(_ListenMixin, _Model):
    enabled: bool = False
    listen: str = "127.0.0.1:8081"
    path: str = "/webhooks/multisafepay"
    public_url: str = ""
    max_age: float = 300.0
    max_body: int = 65536

    _listen = field_validator("listen")(_check_listen)
    _pos = field_validator("max_age")(_positive("seconds"))

    @field_validator("path")
    @classmethod
    def _check_path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        if any(c.isspace() or c in "?#" for c in v):
            raise ValueError("must be a plain URL path (no spaces, '?' or '#')")
        return v.rstrip("/") or "/"

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, v: str) -> str:
        if not v:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an https:// URL (the base MultiSafepay calls), or empty")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("must be a plain base URL (no query, fragment or credentials)")
        return v.rstrip("/")

    @field_validator("max_body")
    @classmethod
    def _check_max_body(cls, v: int) -> int:
        if v < 1024:
            raise ValueError("must be at least 1024 bytes")
        return v

    def route(self, group_name: str) -> str:
        """The URL path the webhook of ``group_name`` is served on: ``{path}/{group}``."""
        return f"{self.path.rstrip('/')}/{group_name}"

    def notification_url(self, group_name: str) -> str | None:
        """The ``notification_url`` to give MultiSafepay for orders of this group, or None."""
        if not (self.enabled and self.public_url):
            return None
        return f"{self.public_url}{self.route(group_name)}"


class HttpConfig(_ListenMixin, _Model):
    enabled: bool = True
    listen: str = "127.0.0.1:9108"

    _listen = field_validator("listen")(_check_listen)


class DaemonConfig(_Model):
    shutdown_grace: float = 10.0
    lease_ttl: float = 15.0
    max_in_flight: int = 64

    _pos = field_validator("shutdown_grace", "lease_ttl")(_positive("seconds"))

    @field_validator("lease_ttl")
    @classmethod
    def _check_lease(cls, v: float) -> float:
        if v < 1.0:
            raise ValueError("must be at least 1 s (it is renewed every third of it)")
        return v

    @field_validator("max_in_flight")
    @classmethod
    def _check_in_flight(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be at least 1")
        return v


class LogConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip().lower()
            return _LEVEL_ALIASES.get(v, v)
        return v


class Config(_Model):
    """The whole configuration. Build it with ``load_config`` or ``Config.from_mapping``."""

    multisafepay: MultiSafepayConfig = Field(default_factory=MultiSafepayConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    webhook: WebhookConfig = Field(default_factory=WebhookConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    _warnings: list[str] = PrivateAttr(default_factory=list)
    _source: str = PrivateAttr(default="<config>")
    _by_terminal: dict[str, TerminalGroup] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> Config:
        ctx = info.context or {}
        environ = ctx.get("environ")
        if environ is None:
            environ = os.environ
        source = ctx.get("source", "<config>")
        self._source = source
        errors = []
        warnings = []
        for i, g in enumerate(self.multisafepay.terminal_groups):
            where = f"multisafepay.terminal_groups[{i}]"
            problem = g._resolve_key(environ)
            if problem:
                field, reason = problem
                errors.append(
                    (f"{where}.{field}" if field else where, f"group {g.name!r}: {reason}")
                )
            configured = [
                k for k in ("api_key", "api_key_file", "api_key_env") if getattr(g, k) is not None
            ]
            if g.api_key is not None:
                warnings.append(
                    f"{where}.api_key: group {g.name!r} has its API key inline in the config; "
                    "use it for development only (production: LoadCredential=, api_key_file or "
                    "api_key_env)"
                )
            if len(configured) > 1:
                warnings.append(
                    f"{where}: group {g.name!r} sets {', '.join(configured)}; only "
                    f"{configured[0]} is used"
                )
        if errors:
            raise ConfigError(source, errors)
        if self.webhook.enabled and not self.webhook.public_url:
            warnings.append(
                "webhook.public_url is empty: the webhook listens, but orders will not ask "
                "MultiSafepay to call it"
            )
        self._warnings = warnings
        self._by_terminal = {
            t.upper(): g for g in self.multisafepay.terminal_groups for t in g.terminals
        }
        return self

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        environ: Mapping[str, str] | None = None,
        *,
        source: str = "<config>",
        apply_env_overrides: bool = False,
    ) -> Config:
        """Validate a dict shaped like the TOML file (the demo and tests build config in code).

        ``environ`` is where ``api_key_env`` and ``$CREDENTIALS_DIRECTORY`` are looked up
        (default ``os.environ``). ``POS_BRIDGE__*`` overrides are applied only when
        ``apply_env_overrides`` is true. Registers every secret with ``bridge.logs``.
        """
        env = os.environ if environ is None else environ
        data = _deep_copy(data)
        overridden: dict[str, str] = {}
        if apply_env_overrides:
            overridden = _apply_overrides(data, env, source)
        try:
            cfg = cls.model_validate(data, context={"environ": env, "source": source})
        except ValidationError as exc:
            raise ConfigError(source, _validation_errors(exc, overridden)) from None
        _register_secrets(cfg)
        return cfg

    # -- queries ---------------------------------------------------------------------------------
    @property
    def warnings(self) -> list[str]:
        """Problems that do not stop the daemon (e.g. an inline API key)."""
        return list(self._warnings)

    @property
    def source(self) -> str:
        """The file (or ``<config>``) this config was read from."""
        return self._source

    @property
    def terminal_groups(self) -> list[TerminalGroup]:
        return self.multisafepay.terminal_groups

    def group_for_terminal(self, terminal_id: str) -> TerminalGroup | None:
        """The configured group that lists ``terminal_id`` (case-insensitive), or None."""
        return self._by_terminal.get(terminal_id.upper()) if terminal_id else None

    def group(self, name: str) -> TerminalGroup | None:
        """The group called ``name`` (exact), or None."""
        for g in self.multisafepay.terminal_groups:
            if g.name == name:
                return g
        return None

    def notification_url(self, group_name: str) -> str | None:
        """Shortcut for ``config.webhook.notification_url(group_name)``."""
        return self.webhook.notification_url(group_name)

    def secrets(self) -> list[str]:
        """Every secret value in the config (API keys, the Redis password), for log masking."""
        out: list[str] = []
        for g in self.multisafepay.terminal_groups:
            if g._key is not None:
                out.append(g._key.get_secret_value())
            if g.api_key is not None and g.api_key.get_secret_value():
                out.append(g.api_key.get_secret_value())
        pw = self.redis.password
        if pw is not None and pw.get_secret_value():
            out.append(pw.get_secret_value())
            raw = urlsplit(self.redis.url).password
            if raw and raw != pw.get_secret_value():
                out.append(raw)
        return list(dict.fromkeys(out))

    def masked_dict(self) -> dict[str, Any]:
        """The effective config as plain data, every secret masked, plus each group's key source
        (and notification URL): what ``check-config`` prints."""
        d = self.model_dump(mode="json")
        d["redis"]["url"] = self.redis.masked_url
        for gd, g in zip(d["multisafepay"]["terminal_groups"], self.terminal_groups, strict=True):
            if gd.get("api_key") is not None:
                gd["api_key"] = MASK
            gd["key_source"] = g.key_source
            nurl = self.notification_url(g.name)
            if nurl:
                gd["notification_url"] = nurl
        return d


def _register_secrets(cfg: Config) -> None:
    try:
        from bridge import logs
    except ImportError:  # pragma: no cover
        return
    logs.register_secrets(cfg.secrets())


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_deep_copy(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# environment overrides: POS_BRIDGE__SECTION__KEY=value


def _unwrap(annotation: Any) -> list[Any]:
    """The non-None members of an annotation (``X | None`` -> [X])."""
    args = get_args(annotation)
    if args and get_origin(annotation) is not list and get_origin(annotation) is not Literal:
        return [a for a in args if a is not type(None)]
    return [annotation]


def _is_stringish(annotation: Any) -> bool:
    for a in _unwrap(annotation):
        if a in (str, SecretStr):
            return True
        if get_origin(a) is Literal and all(isinstance(x, str) for x in get_args(a)):
            return True
    return False


def _parse_override(raw: str, annotation: Any) -> Any:
    if _is_stringish(annotation):
        # a string field takes the text as is, but a TOML-quoted string is unquoted
        s = raw.strip()
        if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
            try:
                return tomllib.loads(f"v = {s}")["v"]
            except tomllib.TOMLDecodeError:
                pass
        return raw
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_overrides(
    data: dict[str, Any], environ: Mapping[str, str], source: str
) -> dict[str, str]:
    """Apply ``POS_BRIDGE__A__B=value`` to ``data`` in place; return {field path: env name}.

    Segments are case-insensitive; a numeric segment indexes a list of tables, e.g.
    ``POS_BRIDGE__MULTISAFEPAY__TERMINAL_GROUPS__0__API_KEY_ENV=SHOP_KEY``.
    """
    overridden: dict[str, str] = {}
    errors: list[tuple[str, str]] = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_OVERRIDE_PREFIX):
            continue
        segs = [s.lower() for s in name[len(ENV_OVERRIDE_PREFIX) :].split("__")]
        if len(segs) < 2 or not all(segs):
            errors.append((name, "must be POS_BRIDGE__SECTION__KEY (e.g. POS_BRIDGE__REDIS__URL)"))
            continue
        problem = _apply_one(data, segs, environ[name], name, overridden)
        if problem:
            errors.append(problem)
    if errors:
        raise ConfigError(source, errors)
    return overridden


def _apply_one(
    data: dict[str, Any], segs: list[str], raw: str, name: str, overridden: dict[str, str]
) -> tuple[str, str] | None:
    model: type[BaseModel] = Config
    node: dict[str, Any] = data
    loc: list[Any] = []
    i = 0
    while True:
        seg = segs[i]
        field = model.model_fields.get(seg)
        loc.append(seg)
        where = f"{_loc_to_path(loc)} (from {name})"
        if field is None:
            return where, "unknown key"
        ann = field.annotation
        if i == len(segs) - 1:
            node[seg] = _parse_override(raw, ann)
            overridden[_loc_to_path(loc)] = name
            return None
        sub = node.get(seg)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if sub is None:
                sub = node[seg] = {}
            if not isinstance(sub, dict):
                return where, "is not a table"
            node, model, i = sub, ann, i + 1
            continue
        item = get_args(ann)[0] if get_origin(ann) is list and get_args(ann) else None
        if not (isinstance(item, type) and issubclass(item, BaseModel)):
            return where, "is not a section"
        idx = segs[i + 1]
        if not isinstance(sub, list) or not idx.isdigit() or int(idx) >= len(sub):
            return where, f"has no item [{idx}] to override"
        if i + 1 == len(segs) - 1:
            return where, "name a key inside the item, e.g. ...__0__API_KEY_ENV"
        loc.append(int(idx))
        if not isinstance(sub[int(idx)], dict):
            return f"{_loc_to_path(loc)} (from {name})", "is not a table"
        node, model, i = sub[int(idx)], item, i + 2


# --------------------------------------------------------------------------------------------
# loading


_TOML_POS_RE = re.compile(r"^(?P<msg>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)\s*$")


def resolve_config_path(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path:
    """``path``, else ``$POS_BRIDGE_CONFIG``, else ``/etc/pos-bridge/config.toml``."""
    if path is not None and str(path) != "":
        return Path(path)
    env = environ.get(ENV_CONFIG_PATH)
    if env:
        return Path(env)
    return Path(DEFAULT_CONFIG_PATH)


def _read_toml(path: Path, source: str, explicit: bool) -> dict[str, Any]:
    hint = "" if explicit else f" (give --config PATH or set {ENV_CONFIG_PATH})"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, [("", f"no such file{hint}")]) from None
    except IsADirectoryError:
        raise ConfigError(source, [("", "is a directory, not a config file")]) from None
    except PermissionError:
        raise ConfigError(source, [("", "permission denied")]) from None
    except OSError as exc:
        raise ConfigError(source, [("", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(source, [(f"line {line}", "invalid TOML: not UTF-8 text")]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = _TOML_POS_RE.match(msg)
        if m:
            raise ConfigError(
                source,
                [(f"line {m['line']}", f"invalid TOML: {m['msg']} (column {m['col']})")],
            ) from None
        raise ConfigError(source, [("", f"invalid TOML: {msg}")]) from None


def _default_warn(message: str) -> None:
    _log.warning("config warning: %s", message)


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    warn: Callable[[str], None] | None = _default_warn,
) -> Config:
    """Read the TOML file, apply ``POS_BRIDGE__SECTION__KEY`` overrides, validate, resolve keys.

    Path: ``path``, else ``$POS_BRIDGE_CONFIG``, else ``/etc/pos-bridge/config.toml``.
    ``environ`` defaults to ``os.environ``. Each warning (``config.warnings``) is passed to
    ``warn`` (default: the stdlib logger ``bridge.config``; None: stay quiet).
    Raises ``ConfigError`` (one line: file, field, reason).
    """
    env = os.environ if environ is None else environ
    explicit = path is not None and str(path) != ""
    file = resolve_config_path(path, env)
    source = str(file)
    data = _read_toml(file, source, explicit or bool(env.get(ENV_CONFIG_PATH)))
    cfg = Config.from_mapping(data, env, source=source, apply_env_overrides=True)
    if warn is not None:
        for w in cfg.warnings:
            warn(w)
    return cfg


# --------------------------------------------------------------------------------------------
# pos-bridge check-config


def check_config_command(args: Any) -> int:
    """``pos-bridge check-config [--config PATH]``: 0 valid (config printed as JSON), 2 invalid."""
    path = getattr(args, "config", None)

    def warn(message: str) -> None:
        print(f"pos-bridge: warning: {message}", file=sys.stderr)

    try:
        cfg = load_config(path, warn=warn)
    except ConfigError as exc:
        raise UserError(str(exc), exc.exit_code) from None
    text = json.dumps(cfg.masked_dict(), indent=2, ensure_ascii=False)
    # belt and braces: nothing secret may leave, whatever a future field does
    for secret in sorted(cfg.secrets(), key=len, reverse=True):
        for form in {secret, quote(secret, safe="")}:
            text = text.replace(form, MASK)
    print(text)
    groups = cfg.terminal_groups
    n_term = sum(len(g.terminals) for g in groups)
    print(
        f"pos-bridge: {cfg.source}: valid ({len(groups)} terminal group(s), {n_term} terminal(s))",
        file=sys.stderr,
    )
    return 0
