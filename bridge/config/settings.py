"""``Config``, the whole configuration (a pydantic-settings class), and how it is built.

Building is three steps: the sources give the data (the TOML file, then ``POS_BRIDGE__*``
variables over it), pydantic validates it, then each group's API key is resolved. Every problem
of the three steps is reported at once, in one ``ConfigError`` line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, ValidationError
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from bridge.config.errors import ConfigError, validation_errors
from bridge.config.secrets import ApiKey, resolve_api_key
from bridge.config.sections import (
    DaemonConfig,
    HttpConfig,
    LogConfig,
    MultiSafepayConfig,
    ReceiptsConfig,
    RedisConfig,
    TerminalGroup,
    WebhookConfig,
)
from bridge.config.sources import (
    ENV_CONFIG_PATH,
    EnvOverrideSource,
    TomlFileSource,
    resolve_config_path,
)
from bridge.config.types import MASK
from bridge.config.webhook_url import webhook_url_problems

_log = logging.getLogger("bridge.config")

# POS_BRIDGE__SECTION__KEY overrides [section] key of the file.
ENV_OVERRIDE_PREFIX = "POS_BRIDGE__"


class Config(BaseSettings):
    """The whole configuration. Build it with ``load_config`` or ``Config.from_mapping``.

    A missing section is validated as an empty table, so what it lacks is reported with every
    other error instead of hiding them.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_OVERRIDE_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        strict=True,
        frozen=True,
        validate_default=True,
    )

    # a missing table is validated as {} (mypy cannot know pydantic validates defaults)
    multisafepay: MultiSafepayConfig = Field(default_factory=dict)  # type: ignore[assignment]
    redis: RedisConfig = Field(default_factory=dict)  # type: ignore[assignment]
    webhook: WebhookConfig = Field(default_factory=dict)  # type: ignore[assignment]
    http: HttpConfig = Field(default_factory=dict)  # type: ignore[assignment]
    daemon: DaemonConfig = Field(default_factory=dict)  # type: ignore[assignment]
    log: LogConfig = Field(default_factory=dict)  # type: ignore[assignment]
    receipts: ReceiptsConfig = Field(default_factory=dict)  # type: ignore[assignment]

    _source: str = PrivateAttr(default="<config>")
    _by_terminal: dict[str, TerminalGroup] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any) -> None:
        self._by_terminal = {
            t.upper(): g for g in self.multisafepay.terminal_groups for t in g.terminals
        }

    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        environ: Mapping[str, str] | None = None,
        *,
        source: str = "<config>",
        apply_env_overrides: bool = False,
    ) -> Config:
        """Validate a dict shaped like the TOML file (the demo and tests build config in code),
        then resolve the API keys.

        ``environ`` is where ``api_key_env`` and ``$CREDENTIALS_DIRECTORY`` are looked up
        (default ``os.environ``). ``POS_BRIDGE__*`` overrides are applied only when
        ``apply_env_overrides`` is true. Raises ``ConfigError`` naming every problem.
        """
        env = os.environ if environ is None else environ
        given = InitSettingsSource(cls, init_kwargs=dict(data))
        overrides = EnvOverrideSource(cls, data, env) if apply_env_overrides else None
        return cls._build(given, overrides, env, source)

    @classmethod
    def _build(
        cls,
        given: PydanticBaseSettingsSource,
        overrides: EnvOverrideSource | None,
        environ: Mapping[str, str],
        source: str,
    ) -> Config:
        sources = (given,) if overrides is None else (overrides, given)
        try:
            # BaseSettings.__init__ takes prebuilt sources; pydantic's mypy view hides it
            cfg = cls(_build_sources=(sources, {}))  # type: ignore[call-arg]
        except ValidationError as exc:
            problems = validation_errors(exc, overrides.overridden if overrides else {})
            raise ConfigError(source, (overrides.errors if overrides else []) + problems) from None
        problems = (overrides.errors if overrides else []) + cfg.resolve_keys(environ, source)
        problems += cfg.multisafepay.resolve_files() + cfg.redis.resolve_files(environ)
        problems += webhook_url_problems(cfg.webhook, [g.name for g in cfg.terminal_groups])
        if problems:
            raise ConfigError(source, problems)
        return cfg

    def resolve_keys(self, environ: Mapping[str, str], source: str) -> list[tuple[str, str]]:
        """Resolve every group's API key (the step after validation); return the problems."""
        self._source = source
        problems: list[tuple[str, str]] = []
        for i, g in enumerate(self.multisafepay.terminal_groups):
            key = resolve_api_key(g.name, g.api_key, g.api_key_file, g.api_key_env, environ)
            if isinstance(key, ApiKey):
                g._api_key = key
                continue
            where = f"multisafepay.terminal_groups[{i}]"
            field = f"{where}.{key.field}" if key.field else where
            problems.append((field, f"group {g.name!r}: {key.reason}"))
        return problems

    # -- queries ---------------------------------------------------------------------------------
    @property
    def warnings(self) -> list[str]:
        """Problems that do not stop the daemon (e.g. an inline API key)."""
        out: list[str] = []
        for i, g in enumerate(self.multisafepay.terminal_groups):
            where = f"multisafepay.terminal_groups[{i}]"
            if g.api_key is not None:
                out.append(
                    f"{where}.api_key: group {g.name!r} has its API key inline in the config; "
                    "use it for development only (production: LoadCredential=, api_key_file or "
                    "api_key_env)"
                )
            configured = [
                k for k in ("api_key", "api_key_file", "api_key_env") if getattr(g, k) is not None
            ]
            if len(configured) > 1:
                out.append(
                    f"{where}: group {g.name!r} sets {', '.join(configured)}; only "
                    f"{configured[0]} is used"
                )
        if self.webhook.enabled and not self.webhook.public_url:
            out.append(
                "webhook.public_url is empty: the webhook listens, but orders will not ask "
                "MultiSafepay to call it"
            )
        return out

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
        return next((g for g in self.multisafepay.terminal_groups if g.name == name), None)

    def notification_url(self, group_name: str) -> str | None:
        """Shortcut for ``config.webhook.notification_url(group_name)``."""
        return self.webhook.notification_url(group_name)

    def secrets(self) -> list[str]:
        """Every secret value in the config (API keys, the Redis password). Whoever runs with
        the config registers them for log masking (``bridge.logs.register_secrets``)."""
        out: list[str] = []
        for g in self.multisafepay.terminal_groups:
            if g._api_key is not None:
                out.append(g._api_key.value.get_secret_value())
            if g.api_key is not None and g.api_key.get_secret_value():
                out.append(g.api_key.get_secret_value())
        pw = self.redis.password
        if pw is not None and pw.get_secret_value():
            out.append(pw.get_secret_value())
            raw = urlsplit(self.redis.url).password
            if raw and raw != pw.get_secret_value():
                out.append(raw)
        sentinel_pw = self.redis.sentinel_password
        if sentinel_pw is not None and sentinel_pw.get_secret_value():
            out.append(sentinel_pw.get_secret_value())
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
    Raises ``ConfigError`` (one line: file, every field with its reason).
    """
    env = os.environ if environ is None else environ
    explicit = (path is not None and str(path) != "") or bool(env.get(ENV_CONFIG_PATH))
    file = resolve_config_path(path, env)
    hint = "" if explicit else f" (give --config PATH or set {ENV_CONFIG_PATH})"
    toml = TomlFileSource(Config, file, hint)
    cfg = Config._build(toml, EnvOverrideSource(Config, toml.toml_data, env), env, str(file))
    if warn is not None:
        for w in cfg.warnings:
            warn(w)
    return cfg
