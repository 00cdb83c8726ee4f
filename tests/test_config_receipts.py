"""``[receipts]`` in the config file: defaults, limits, the example file, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import Config, ConfigError, ReceiptsConfig, load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"
GROUPS = {"terminal_groups": [{"name": "shop", "api_key": "k", "terminals": ["T1"]}]}


def test_off_by_default_and_the_example_says_the_defaults() -> None:
    assert Config.from_mapping({"multisafepay": GROUPS}).receipts == ReceiptsConfig()
    assert ReceiptsConfig().auto is False and ReceiptsConfig().attempts == 5
    assert load_config(EXAMPLE, environ={}, warn=None).receipts == ReceiptsConfig()


def test_values_and_their_limits() -> None:
    cfg = Config.from_mapping({"multisafepay": GROUPS, "receipts": {"auto": True, "attempts": 20}})
    assert (cfg.receipts.auto, cfg.receipts.attempts) == (True, 20)
    with pytest.raises(ConfigError) as info:
        Config.from_mapping(
            {"multisafepay": GROUPS, "receipts": {"auto": "yes", "attempts": 21, "retries": 1}}
        )
    message = str(info.value)
    assert "receipts.auto" in message and "receipts.attempts" in message
    assert "receipts.retries: unknown key" in message


def test_environment_override() -> None:
    cfg = Config.from_mapping(
        {"multisafepay": GROUPS},
        environ={"POS_BRIDGE__RECEIPTS__AUTO": "true", "POS_BRIDGE__RECEIPTS__ATTEMPTS": "2"},
        apply_env_overrides=True,
    )
    assert (cfg.receipts.auto, cfg.receipts.attempts) == (True, 2)
