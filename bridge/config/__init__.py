"""The daemon's configuration: a TOML file, validated by pydantic-settings, overridable from
the environment (``POS_BRIDGE__SECTION__KEY``).

Public API (see also ``config.example.toml``, which documents every key):

- ``load_config(path=None, environ=None, *, warn=...) -> Config``: read, override, validate,
  then resolve the API keys.
- ``Config.from_mapping(data, environ=None, *, source="<config>") -> Config``: the same from a dict.
- ``ConfigError``: every problem at once, as one line ``SOURCE: FIELD.PATH: reason; ...``.
- ``check_config_command(args) -> int``: ``pos-bridge check-config``.

Loading registers nothing with the log redaction: the caller passes ``config.secrets()`` to
``bridge.logs.register_secrets``.

Modules: ``types`` (value types, ``parse_listen``), ``sections`` (one model per TOML table),
``sources`` (the TOML file and the environment), ``secrets`` (API keys, the sentinel
password), ``files`` (TLS files), ``settings``
(``Config``, ``load_config``), ``errors`` (messages), ``check`` (the command).
"""

from bridge.config.check import check_config_command
from bridge.config.errors import ConfigError
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
from bridge.config.settings import ENV_OVERRIDE_PREFIX, Config, load_config
from bridge.config.sources import DEFAULT_CONFIG_PATH, ENV_CONFIG_PATH, resolve_config_path
from bridge.config.types import MIN_ORDER_TTL, mask_url_password, parse_listen

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
    "ReceiptsConfig",
    "RedisConfig",
    "TerminalGroup",
    "WebhookConfig",
    "check_config_command",
    "load_config",
    "mask_url_password",
    "parse_listen",
    "resolve_config_path",
]
