"""The sections of the configuration file, one model each (``Config`` holds them).

Every model forbids unknown keys (a typo must not silently disable a feature), is strict about
types (``enabled = "yes"`` is an error, not a truthy string) and is frozen once loaded.
Validation only checks values: a group's API key is resolved afterwards (``bridge.config.secrets``).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from bridge.config.files import expand_path, file_problems, unloadable_ca
from bridge.config.secrets import ApiKey, resolve_api_key
from bridge.config.types import (
    HOSTNAME_RE,
    TERMINAL_ID_RE,
    BodyLimit,
    Count,
    EnvName,
    FilePath,
    Fraction,
    GroupId,
    GroupName,
    KeyPrefix,
    LeaseTtl,
    Listen,
    OrderTtl,
    Seconds,
    TimeZoneName,
    mask_url_password,
    parse_listen,
)

if TYPE_CHECKING:
    from bridge.redis.target import RedisTarget

_LEVEL_ALIASES = {"warn": "warning", "err": "error"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)


class TerminalGroup(_Model):
    """One MultiSafepay terminal group: its API key and its terminals.

    The resolved key is ``group.key`` (a ``SecretStr``); where it came from is ``key_source``.
    """

    name: GroupName
    api_key_file: FilePath | None = None
    api_key_env: EnvName | None = None
    api_key: SecretStr | None = None  # inline: development only
    terminals: list[str] = Field(default_factory=list)
    group_id: GroupId | None = None
    discover: bool = False

    _api_key: ApiKey | None = PrivateAttr(default=None)

    @field_validator("terminals")
    @classmethod
    def _check_terminals(cls, v: list[str]) -> list[str]:
        seen: set[str] = set()
        for tid in v:
            if not TERMINAL_ID_RE.fullmatch(tid):
                raise ValueError(f"terminal ID {tid!r} must be 1 to 32 characters of A-Z a-z 0-9 -")
            if tid.upper() in seen:
                raise ValueError(f"terminal {tid} is listed twice")
            seen.add(tid.upper())
        return v

    @model_validator(mode="after")
    def _check_has_terminals(self) -> TerminalGroup:
        if not self.terminals and not self.discover:
            raise ValueError("lists no terminals: set terminals = [...] or discover = true")
        return self

    @property
    def key(self) -> SecretStr:
        """The group's API key (resolved at load time). Use ``.get_secret_value()`` to send it."""
        if self._api_key is None:
            raise RuntimeError(f"terminal group {self.name}: API key was not resolved")
        return self._api_key.value

    @property
    def key_source(self) -> str:
        """Where the key came from, e.g. ``"file /run/credentials/pos-bridge.service/shop"``."""
        return self._api_key.source if self._api_key is not None else ""

    @property
    def terminal_ids(self) -> frozenset[str]:
        """The configured terminal IDs, upper case (canonical form)."""
        return frozenset(t.upper() for t in self.terminals)


class MultiSafepayConfig(_Model):
    api_base_url: str = "https://api.multisafepay.com/v1/json/"
    api_key_in: Literal["header", "query"] = "header"
    events_hosts: list[str] = Field(
        default_factory=lambda: ["api.multisafepay.com", "testapi.multisafepay.com"]
    )
    transport: Literal["auto", "sse", "websocket"] = "auto"
    events_auth: Literal["bearer", "raw"] = "bearer"
    connect_timeout: Seconds = 10.0
    request_timeout: Seconds = 30.0
    stream_idle_timeout: Seconds = 45.0
    reconnect_initial: Seconds = 1.0
    reconnect_factor: float = Field(default=2.0, ge=1)
    reconnect_cap: Seconds = 60.0
    reconnect_jitter: Fraction = 0.2
    poll_interval: Seconds = 10.0
    max_payment_age: Seconds = 300.0
    create_retries: int = Field(default=2, ge=0)
    enrich_final: bool = True
    upstream_timezone: TimeZoneName = "Europe/Amsterdam"
    #: CA certificates (PEM) to trust for MultiSafepay instead of the default store: checked
    #: when the config is loaded (:meth:`resolve_files`), read once at start (``tls_context``).
    ca_file: FilePath | None = None
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
                if not HOSTNAME_RE.fullmatch(h2):
                    raise ValueError(
                        f"{h!r} is not a host name (no scheme, port or path; '*.domain' allowed)"
                    ) from None
            out.append(h2)
        return out

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
                prev = owner.setdefault(tid.upper(), g.name)
                if prev != g.name:
                    raise ValueError(f"terminal {tid} is in two groups: {prev!r} and {g.name!r}")
        return v

    @model_validator(mode="after")
    def _check_cap(self) -> MultiSafepayConfig:
        if self.reconnect_cap < self.reconnect_initial:
            raise ValueError("reconnect_cap must not be smaller than reconnect_initial")
        return self

    def resolve_files(self) -> list[tuple[str, str]]:
        """Check ``ca_file`` (the step after validation): the problems, one line each."""
        return file_problems("multisafepay", [("ca_file", self.ca_file)], unloadable_ca)

    @property
    def tls_context(self) -> ssl.SSLContext:
        """The one TLS context of every connection to MultiSafepay (REST, streams, bus)."""
        from bridge.multisafepay.tls import client_context

        return client_context(expand_path(self.ca_file))

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
        from bridge.core.watch import host_listed  # the one rule, also for watch URLs

        h = (host or "").strip().lower().strip("[]").rstrip(".")
        return bool(h) and (h == self.api_host or host_listed(h, self.events_hosts))


class RedisConfig(_Model):
    """``[redis]``: one node (``url``, the default), a Sentinel deployment (``sentinels``,
    ``master_name``; ``url`` then gives only the scheme, credentials and database) or a Redis
    Cluster (``layout = "cluster"``, ``url`` any node; no sentinels),
    TLS with ``rediss://`` and the ``tls_*`` files, and what a commit waits for
    (``wait_replicas``)."""

    url: str = "redis://127.0.0.1:6379/0"
    prefix: KeyPrefix = "pos"
    #: "single" (one server) or "cluster" (a Redis Cluster: bridge.redis.keys, .cluster)
    layout: Literal["single", "cluster"] = "single"
    stream_maxlen: Count = 10000
    commands_maxlen: Count = 100000
    order_ttl: OrderTtl = 604800
    consumer_name: str = ""
    command_claim_idle: Seconds = 120.0
    command_max_deliveries: Count = 5
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    sentinels: list[str] = Field(default_factory=list)
    master_name: str = ""
    sentinel_username: str | None = None
    sentinel_password_file: str | None = None
    sentinel_password_env: EnvName | None = None
    wait_replicas: int | None = Field(default=None, ge=0, le=16)
    wait_timeout: Seconds = 10.0

    _sentinel_password: ApiKey | None = PrivateAttr(default=None)

    @field_validator(
        "tls_ca_file", "tls_cert_file", "tls_key_file", "sentinel_password_file", mode="before"
    )
    @classmethod
    def _pathlike(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v

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

    @field_validator("sentinels")
    @classmethod
    def _check_sentinels(cls, v: list[str]) -> list[str]:
        from bridge.redis.target import parse_host_port  # pure parsing, no I/O

        for entry in v:
            parse_host_port(entry)
        if len(set(v)) != len(v):
            raise ValueError("lists a sentinel twice")
        return v

    @field_validator("consumer_name")
    @classmethod
    def _check_consumer(cls, v: str) -> str:
        if len(v) > 200 or any(c.isspace() or not c.isprintable() for c in v):
            raise ValueError("must be at most 200 printable characters without spaces")
        return v

    @model_validator(mode="after")
    def _check_modes(self) -> RedisConfig:
        scheme = urlsplit(self.url).scheme
        tls_files = [
            k for k in ("tls_ca_file", "tls_cert_file", "tls_key_file") if getattr(self, k)
        ]
        if tls_files and scheme != "rediss":
            raise ValueError(f"{', '.join(tls_files)} need a rediss:// url (TLS)")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together (a client certificate)")
        if self.sentinels and not self.master_name:
            raise ValueError("sentinels need master_name (the name the sentinels monitor)")
        if self.master_name and not self.sentinels:
            raise ValueError('master_name needs sentinels = ["host:port", ...]')
        if self.sentinels and scheme == "unix":
            raise ValueError("with sentinels, url must be redis:// or rediss:// (not unix://)")
        if self.layout == "cluster":
            self._check_cluster(scheme)
        sentinel_auth = (self.sentinel_password_file, self.sentinel_password_env)
        if any(a is not None for a in sentinel_auth) and not self.sentinels:
            raise ValueError("sentinel_password_file/_env need sentinels")
        return self

    def _check_cluster(self, scheme: str) -> None:
        if self.sentinels:
            raise ValueError('layout = "cluster" and sentinels do not go together (pick one)')
        if scheme == "unix":
            raise ValueError("url: a Redis Cluster is reached over TCP, not a unix:// socket")
        if urlsplit(self.url).path.strip("/") not in ("", "0"):
            raise ValueError("url: a Redis Cluster has only database 0")

    def resolve_files(self, environ: Mapping[str, str]) -> list[tuple[str, str]]:
        """Check the TLS files and resolve the sentinel password (the step after validation);
        return the problems, one line each."""
        names = ("tls_ca_file", "tls_cert_file", "tls_key_file")
        problems = file_problems("redis", ((name, getattr(self, name)) for name in names))
        if self.sentinel_password_file is not None or self.sentinel_password_env is not None:
            key = resolve_api_key(
                "redis-sentinel",
                None,
                self.sentinel_password_file,
                self.sentinel_password_env,
                environ,
            )
            if isinstance(key, ApiKey):
                self._sentinel_password = key
            else:
                field = key.field.replace("api_key", "sentinel_password") or "sentinels"
                problems.append((f"redis.{field}", key.reason.replace("API key", "password")))
        return problems

    @property
    def sentinel_password(self) -> SecretStr | None:
        """The resolved sentinel password (``sentinel_password_file`` or ``_env``), if any."""
        return self._sentinel_password.value if self._sentinel_password else None

    @property
    def effective_wait_replicas(self) -> int:
        """``wait_replicas``, else 1 with sentinels or in a cluster (a failover promotes a
        replica: what it does not hold is lost), else 0 (one node: nothing to wait for)."""
        if self.wait_replicas is not None:
            return self.wait_replicas
        return 1 if self.sentinels or self.layout == "cluster" else 0

    @property
    def target(self) -> RedisTarget:
        """What :func:`bridge.redis.client.connect` opens."""
        from bridge.redis.target import RedisTarget, parse_host_port

        pw = self.sentinel_password
        return RedisTarget(
            url=self.url,
            tls_ca_file=expand_path(self.tls_ca_file),
            tls_cert_file=expand_path(self.tls_cert_file),
            tls_key_file=expand_path(self.tls_key_file),
            sentinels=tuple(parse_host_port(s) for s in self.sentinels),
            master_name=self.master_name,
            sentinel_username=self.sentinel_username,
            sentinel_password=pw.get_secret_value() if pw is not None else None,
            wait_replicas=self.effective_wait_replicas,
            wait_timeout=self.wait_timeout,
            cluster=self.layout == "cluster",
        )

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


class _Listening:
    """``host`` and ``port`` of a section's ``listen = "host:port"`` (declared by the section,
    so that its keys keep the file's order)."""

    if TYPE_CHECKING:
        listen: str

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


class WebhookConfig(_Listening, _Model):
    enabled: bool = False
    listen: Listen = "127.0.0.1:8081"
    path: str = "/webhooks/multisafepay"
    public_url: str = ""
    max_age: Seconds = 300.0
    max_body: BodyLimit = 65536
    header_timeout: Seconds = 10.0
    body_timeout: Seconds = 10.0
    max_connections: Count = 256

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

    def route(self, group_name: str) -> str:
        """The URL path the webhook of ``group_name`` is served on: ``{path}/{group}``."""
        return f"{self.path.rstrip('/')}/{group_name}"

    def notification_url(self, group_name: str) -> str | None:
        """The ``notification_url`` to give MultiSafepay for orders of this group, or None."""
        if not (self.enabled and self.public_url):
            return None
        return f"{self.public_url}{self.route(group_name)}"


class HttpConfig(_Listening, _Model):
    enabled: bool = True
    listen: Listen = "127.0.0.1:9108"


class DaemonConfig(_Model):
    shutdown_grace: Seconds = 10.0
    lease_ttl: LeaseTtl = 3.0
    max_in_flight: Count = 64


class ReceiptsConfig(_Model):
    """``[receipts]``: receipts the bridge fetches by itself after each final (read at start)."""

    auto: bool = False
    attempts: int = Field(default=5, ge=1, le=20)


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
