"""``check-config`` refuses a ``public_url`` MultiSafepay would never call (MultiSafepay/docs:
content/payment-management/webhook.md, "Prerequisites"; CloudModePaymentOptions.yaml: a
``notification_url`` of at most 150 characters), in one line naming the rule."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from test_config import run_cli

from bridge.config import Config, ConfigError

KEY = "live_key_0123456789abcdef"


def config(public_url: str, *, group: str = "shop", path: str | None = None) -> Config:
    webhook: dict[str, object] = {"enabled": True, "public_url": public_url}
    if path is not None:
        webhook["path"] = path
    return Config.from_mapping(
        {
            "multisafepay": {
                "terminal_groups": [{"name": group, "api_key": KEY, "terminals": ["T1"]}]
            },
            "webhook": webhook,
        }
    )


def refusal(public_url: str, **kw: str) -> str:
    with pytest.raises(ConfigError) as info:
        config(public_url, **kw)
    message = str(info.value)
    assert "\n" not in message and "webhook.public_url" in message
    return message


@pytest.mark.parametrize(
    ("public_url", "rule"),
    [
        ("http://pos.example.com", "only calls HTTPS"),
        ("https://pos.example.com:8443", "without a port"),
        ("https://pos.example.com:443", "without a port"),  # even the default one, spelled out
        ("https://pos.example.com/~shop", "characters MultiSafepay does not accept"),
        ("https://pos.example.com/" + "x" * 120, "at most 150"),
    ],
)
def test_a_url_multisafepay_would_not_call_is_refused(public_url: str, rule: str) -> None:
    assert rule in refusal(public_url)


def test_the_150_characters_count_the_whole_notification_url() -> None:
    base = "https://pos.example.com/"
    route = "/webhooks/multisafepay/shop"
    fits = base + "p" * (150 - len(base) - len(route))
    assert config(fits).notification_url("shop") == fits + route  # exactly 150
    assert len(fits + route) == 150
    message = refusal(fits + "p")
    assert "151 characters" in message and "'shop'" in message
    # a long group name counts too
    assert "at most 150" in refusal(fits[:-10], group="g" * 20)


def test_accepted_urls() -> None:
    assert config("https://pos.example.com").notification_url("shop") == (
        "https://pos.example.com/webhooks/multisafepay/shop"
    )
    assert config("https://pos.example.com/prefix/").webhook.public_url.endswith("/prefix")
    # loopback: only a local simulator can call it, so MultiSafepay's rules do not apply
    for local in ("http://127.0.0.1:8081", "http://localhost:9000", "http://[::1]:8081"):
        assert config(local).notification_url("shop")


def test_check_config_prints_one_line_naming_the_rule(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        textwrap.dedent(
            f"""
            [[multisafepay.terminal_groups]]
            name = "shop"
            api_key = "{KEY}"
            terminals = ["T1"]
            [webhook]
            enabled = true
            public_url = "http://pos.example.com"
            """
        )
    )
    res = run_cli("check-config", "--config", str(cfg))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and res.stdout == ""
    assert "webhook.public_url: MultiSafepay only calls HTTPS webhook URLs" in lines[0]
    assert KEY not in res.stderr
