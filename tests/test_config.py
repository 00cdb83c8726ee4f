"""bridge.config: loading, validation errors (one line naming the field), overrides, check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import SecretStr

from bridge.config import (
    MIN_ORDER_TTL,
    Config,
    ConfigError,
    load_config,
    mask_url_password,
    parse_listen,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config.example.toml"
CLI = [sys.executable, "-m", "bridge.cli"]
_VENV_CLI = ROOT / ".venv" / "bin" / "pos-bridge"

MINIMAL = """
[[multisafepay.terminal_groups]]
name = "shop"
api_key_env = "MSP_KEY"
terminals = ["0000004D"]
"""
ENV = {"MSP_KEY": "live_key_0123456789abcdef"}


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(
        write(tmp_path, text), environ=ENV if environ is None else environ, warn=None
    )


def error_of(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, environ)
    msg = str(info.value)
    assert "\n" not in msg
    assert "Traceback" not in msg
    return msg


# --------------------------------------------------------------------------------------------
# valid configs


def test_example_loads() -> None:
    cfg = load_config(EXAMPLE, environ={}, warn=None)
    assert cfg.multisafepay.api_base_url == "http://127.0.0.1:8765/v1/json/"
    g = cfg.group_for_terminal("sim-approve-01")
    assert g is not None and g.name == "shop-amsterdam"
    assert g.key.get_secret_value() == "sim-dev-key"
    assert g.key_source == "inline api_key"
    assert any("inline" in w for w in cfg.warnings)
    assert cfg.redis.order_ttl == 604800


def test_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL)
    m = cfg.multisafepay
    assert m.api_base_url == "https://api.multisafepay.com/v1/json/"
    assert (m.api_key_in, m.transport, m.events_auth) == ("header", "auto", "bearer")
    assert (m.connect_timeout, m.request_timeout, m.stream_idle_timeout) == (10, 30, 45)
    assert (m.reconnect_initial, m.reconnect_factor, m.reconnect_cap, m.reconnect_jitter) == (
        1.0,
        2.0,
        60.0,
        0.2,
    )
    assert (m.poll_interval, m.max_payment_age, m.create_retries) == (10, 300, 2)
    assert m.upstream_timezone == "Europe/Amsterdam" and m.tzinfo.key == "Europe/Amsterdam"
    r = cfg.redis
    assert (r.url, r.prefix, r.stream_maxlen, r.commands_maxlen) == (
        "redis://127.0.0.1:6379/0",
        "pos",
        10000,
        100000,
    )
    assert (r.order_ttl, r.consumer_name, r.command_claim_idle) == (604800, "", 120)
    assert r.effective_consumer_name.endswith(f"-{os.getpid()}")
    w = cfg.webhook
    assert (w.enabled, w.listen, w.path, w.public_url, w.max_age, w.max_body) == (
        False,
        "127.0.0.1:8081",
        "/webhooks/multisafepay",
        "",
        300,
        65536,
    )
    assert (cfg.http.enabled, cfg.http.listen, cfg.http.host, cfg.http.port) == (
        True,
        "127.0.0.1:9108",
        "127.0.0.1",
        9108,
    )
    assert (cfg.log.level, cfg.log.format) == ("info", "auto")
    g = cfg.terminal_groups[0]
    assert g.key.get_secret_value() == ENV["MSP_KEY"]
    assert g.key_source == "env MSP_KEY"
    assert cfg.warnings == []


def test_helpers(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        """
        [multisafepay]
        api_base_url = "https://api.example.net/v1/json"
        events_hosts = ["Events.MultiSafepay.com", "*.example.org"]
        [[multisafepay.terminal_groups]]
        name = "a"
        api_key_env = "MSP_KEY"
        terminals = ["00000abc"]
        [[multisafepay.terminal_groups]]
        name = "b"
        api_key = "inline-dev-key"
        discover = true
        group_id = 7
        [webhook]
        enabled = true
        public_url = "https://pos.example.com/"
        path = "/hooks/"
        listen = "[::1]:8081"
        [log]
        level = "WARNING"
        """,
    )
    m = cfg.multisafepay
    assert m.api_base_url == "https://api.example.net/v1/json/"
    assert m.allows_events_host("API.example.net")  # the API host is implied
    assert m.allows_events_host("events.multisafepay.com.")
    assert m.allows_events_host("x.example.org")
    assert not m.allows_events_host("example.org")
    assert not m.allows_events_host("evil.com")
    assert not m.allows_events_host("api.multisafepay.com")  # replaced by the configured list
    assert not m.allows_events_host("")
    assert cfg.group_for_terminal("00000ABC").name == "a"  # type: ignore[union-attr]
    assert cfg.group_for_terminal("nope") is None
    assert cfg.notification_url("a") == "https://pos.example.com/hooks/a"
    assert cfg.webhook.route("b") == "/hooks/b"
    assert (cfg.webhook.host, cfg.webhook.port) == ("::1", 8081)
    assert cfg.log.level == "warning"
    assert sorted(cfg.secrets()) == sorted([ENV["MSP_KEY"], "inline-dev-key"])


def test_notification_url_none_when_disabled(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL + '\n[webhook]\npublic_url = "https://pos.example.com"\n')
    assert cfg.notification_url("shop") is None


def test_redis_password_masked_and_secret(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL + '\n[redis]\nurl = "rediss://bridge:p%40ss-w0rd@redis:6380/1"\n')
    assert cfg.redis.password == SecretStr("p@ss-w0rd")
    assert cfg.redis.masked_url == "rediss://bridge:***@redis:6380/1"
    assert "p@ss-w0rd" in cfg.secrets() and "p%40ss-w0rd" in cfg.secrets()
    assert "p%40ss" not in repr(cfg) and "p%40ss" not in json.dumps(cfg.masked_dict())
    assert mask_url_password("unix://:secretpw@/run/redis.sock?db=0") == (
        "unix://:***@/run/redis.sock?db=0"
    )


def test_key_file_and_credentials_dir(tmp_path: Path) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_text("  file-key-0123456789\n")
    cfg = load(
        tmp_path,
        f"""
        [[multisafepay.terminal_groups]]
        name = "shop"
        api_key_file = "{keyfile}"
        terminals = ["T1"]
        """,
    )
    assert cfg.terminal_groups[0].key.get_secret_value() == "file-key-0123456789"
    assert cfg.terminal_groups[0].key_source == f"file {keyfile}"

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "shop").write_text("cred-key-0123456789\n")
    text = '[[multisafepay.terminal_groups]]\nname = "shop"\nterminals = ["T1"]\n'
    cfg = load(tmp_path, text, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert cfg.terminal_groups[0].key.get_secret_value() == "cred-key-0123456789"
    assert cfg.terminal_groups[0].key_source == f"credential {creds / 'shop'}"


def test_from_mapping() -> None:
    cfg = Config.from_mapping(
        {
            "multisafepay": {
                "api_base_url": "http://127.0.0.1:9/v1/json/",
                "terminal_groups": [{"name": "sim", "api_key": "anything", "terminals": ["SIM-1"]}],
            },
            "redis": {"url": "redis://127.0.0.1:1234/0"},
        },
        environ={},
    )
    assert cfg.group_for_terminal("sim-1").name == "sim"  # type: ignore[union-attr]
    with pytest.raises(ConfigError) as info:
        Config.from_mapping({"redis": {"bogus": 1}, "multisafepay": {"terminal_groups": []}})
    assert str(info.value) == (
        "<config>: multisafepay.terminal_groups: at least one [[multisafepay.terminal_groups]] "
        "is required; redis.bogus: unknown key"
    )


def test_path_from_environment(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL, "env.toml")
    cfg = load_config(None, environ={**ENV, "POS_BRIDGE_CONFIG": str(p)}, warn=None)
    assert cfg.source == str(p)


def test_inline_key_warns(tmp_path: Path) -> None:
    seen: list[str] = []
    text = (
        '[[multisafepay.terminal_groups]]\nname = "dev"\napi_key = "dev-key-123"\n'
        'terminals = ["T1"]\n'
    )
    load_config(write(tmp_path, text), environ={}, warn=seen.append)
    assert len(seen) == 1 and "development only" in seen[0] and "dev-key-123" not in seen[0]


# --------------------------------------------------------------------------------------------
# errors: one line, naming file, field and reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bogus = 1\n" + MINIMAL, "config.toml: bogus: unknown key"),
        (MINIMAL + "[redis]\nstream_maxln = 5\n", "config.toml: redis.stream_maxln: unknown key"),
        (MINIMAL + "[redsi]\nurl = 'x'\n", "config.toml: redsi: unknown key"),
        (
            MINIMAL + "api_kye = 'x'\n",
            "config.toml: multisafepay.terminal_groups[0].api_kye: unknown key",
        ),
        (
            MINIMAL + "[redis]\nstream_maxlen = 'many'\n",
            "config.toml: redis.stream_maxlen: Input should be a valid integer (got 'many')",
        ),
        (
            MINIMAL + "[webhook]\nenabled = 'yes'\n",
            "config.toml: webhook.enabled: Input should be a valid boolean (got 'yes')",
        ),
        (MINIMAL + "[redis]\nprefix = 'a'\nprefix = 'b'\n", None),  # duplicate key: invalid TOML
        (
            "[multisafepay]\ntransport = 'carrier-pigeon'\n" + MINIMAL,
            "config.toml: multisafepay.transport: Input should be 'auto', 'sse' or 'websocket' "
            "(got 'carrier-pigeon')",
        ),
        (
            MINIMAL + "[redis]\norder_ttl = 600\n",
            f"config.toml: redis.order_ttl: must be at least {MIN_ORDER_TTL} s (the webhook "
            "resend window)",
        ),
        (
            MINIMAL + "[log]\nlevel = 'loud'\n",
            "config.toml: log.level: Input should be 'debug', 'info', 'warning' or 'error' (got "
            "'loud')",
        ),
        (MINIMAL + "[webhook]\npath = 'hooks'\n", "config.toml: webhook.path: must start with '/'"),
        (
            MINIMAL + "[webhook]\nlisten = 'localhost'\n",
            "config.toml: webhook.listen: must be host:port, got 'localhost'",
        ),
        (
            MINIMAL + "[redis]\nurl = 'http://x'\n",
            "config.toml: redis.url: must be a redis://, rediss:// or unix:// URL",
        ),
        (
            MINIMAL + "[redis]\nprefix = 'a b'\n",
            "config.toml: redis.prefix: must be 1 to 32 characters of A-Z a-z 0-9 _ . -",
        ),
        (
            "[multisafepay]\napi_base_url = 'ftp://x'\n" + MINIMAL,
            "config.toml: multisafepay.api_base_url: must be an http:// or https:// URL",
        ),
        (
            "[multisafepay]\nupstream_timezone = 'Mars/Olympus'\n" + MINIMAL,
            "config.toml: multisafepay.upstream_timezone: 'Mars/Olympus' is not a known time zone "
            "(e.g. 'Europe/Amsterdam')",
        ),
        (
            "[multisafepay]\nreconnect_jitter = 1.5\n" + MINIMAL,
            "config.toml: multisafepay.reconnect_jitter: must be a fraction between 0 and 1",
        ),
        (
            "[multisafepay]\nconnect_timeout = 0\n" + MINIMAL,
            "config.toml: multisafepay.connect_timeout: must be greater than 0",
        ),
        (
            "[multisafepay]\n",
            "config.toml: multisafepay.terminal_groups: at least one "
            "[[multisafepay.terminal_groups]] is required",
        ),
        (
            MINIMAL.replace('"shop"', '"bad name"'),
            "config.toml: multisafepay.terminal_groups[0].name: must be 1 to 64 characters of A-Z "
            "a-z 0-9 _ -",
        ),
        (
            MINIMAL.replace('name = "shop"\n', ""),
            "config.toml: multisafepay.terminal_groups[0].name: required key is missing",
        ),
        (
            MINIMAL.replace('"0000004D"', '"0000/04D"'),
            "config.toml: multisafepay.terminal_groups[0].terminals: terminal ID '0000/04D' must "
            "be 1 to 32 characters of A-Z a-z 0-9 -",
        ),
        (
            MINIMAL.replace('terminals = ["0000004D"]', "terminals = []"),
            "config.toml: multisafepay.terminal_groups[0]: lists no terminals: set terminals = "
            "[...] or discover = true",
        ),
        (
            MINIMAL + MINIMAL.replace('"shop"', '"other"').replace("0000004D", "0000004d"),
            "config.toml: multisafepay.terminal_groups: terminal 0000004d is in two groups: "
            "'shop' and 'other'",
        ),
        (
            MINIMAL + MINIMAL.replace("0000004D", "T2"),
            "config.toml: multisafepay.terminal_groups: group name 'shop' is used twice (groups 0 "
            "and 1)",
        ),
    ],
)
def test_errors(tmp_path: Path, text: str, expected: str | None) -> None:
    msg = error_of(tmp_path, text)
    if expected is not None:
        assert msg == f"{tmp_path}/{expected}"
    else:
        assert "invalid TOML" in msg


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + "\n\n[redis]\nurl = \n")  # MINIMAL is 5 lines + "\n"
    assert msg == f"{tmp_path / 'config.toml'}: line 9: invalid TOML: Invalid value (column 7)"


def test_not_utf8(tmp_path: Path) -> None:
    p = tmp_path / "config.toml"
    p.write_bytes(b"# \xff\n")
    with pytest.raises(ConfigError, match="line 1: invalid TOML: not UTF-8"):
        load_config(p, environ={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml", environ={})
    assert str(info.value) == f"{tmp_path / 'nope.toml'}: no such file"
    if not Path("/etc/pos-bridge/config.toml").exists():
        with pytest.raises(ConfigError) as info:
            load_config(None, environ={})
        assert str(info.value) == (
            "/etc/pos-bridge/config.toml: no such file (give --config PATH or set "
            "POS_BRIDGE_CONFIG)"
        )
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, environ={})


def test_missing_key_env(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL, environ={})
    assert msg.endswith(
        "config.toml: multisafepay.terminal_groups[0].api_key_env: group 'shop': "
        "environment variable MSP_KEY is not set"
    )
    msg = error_of(tmp_path, MINIMAL, environ={"MSP_KEY": "  "})
    assert msg.endswith("api_key_env: group 'shop': environment variable MSP_KEY is empty")


def test_key_file_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n  \n")
    text = (
        '[[multisafepay.terminal_groups]]\nname = "shop"\napi_key_file = "{f}"\nterminals = ["T"]\n'
    )
    msg = error_of(tmp_path, text.format(f=empty))
    assert msg.endswith(
        f"multisafepay.terminal_groups[0].api_key_file: group 'shop': {empty}: file is empty"
    )
    msg = error_of(tmp_path, text.format(f=tmp_path / "absent"))
    assert msg.endswith(f"api_key_file: group 'shop': {tmp_path / 'absent'}: no such file")


def test_key_with_inner_whitespace_is_rejected_without_showing_it(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL, environ={"MSP_KEY": "abc def-secret"})
    assert "whitespace" in msg and "def-secret" not in msg


def test_credentials_dir_errors(tmp_path: Path) -> None:
    text = '[[multisafepay.terminal_groups]]\nname = "shop"\nterminals = ["T1"]\n'
    msg = error_of(tmp_path, text, environ={})
    assert "multisafepay.terminal_groups[0]: group 'shop': no API key" in msg
    assert "$CREDENTIALS_DIRECTORY is not set" in msg
    creds = tmp_path / "creds"
    creds.mkdir()
    msg = error_of(tmp_path, text, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert f"no systemd credential 'shop' in {creds}" in msg
    (creds / "shop").write_text("")
    msg = error_of(tmp_path, text, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert msg.endswith(f"credential {creds / 'shop'}: file is empty")


def test_wrong_type_does_not_echo_secrets(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + "\n[redis]\nurl = 12\n")
    assert msg.endswith("redis.url: Input should be a valid string")
    msg = error_of(tmp_path, MINIMAL.replace('api_key_env = "MSP_KEY"', "api_key = 123456789"))
    assert "123456789" not in msg


def test_several_errors_joined(tmp_path: Path) -> None:
    msg = error_of(tmp_path, MINIMAL + "[redis]\nprefix = ''\nstream_maxlen = 0\n")
    assert (
        "redis.prefix: " in msg and "; " in msg and "redis.stream_maxlen: must be at least 1" in msg
    )


# --------------------------------------------------------------------------------------------
# environment overrides


def test_env_overrides(tmp_path: Path) -> None:
    env = {
        **ENV,
        "POS_BRIDGE__REDIS__URL": "redis://:pw-override@10.0.0.1:6379/2",
        "pos_bridge__log__LEVEL": "DEBUG",
        "POS_BRIDGE__MULTISAFEPAY__TRANSPORT": "websocket",
        "POS_BRIDGE__MULTISAFEPAY__POLL_INTERVAL": "2.5",
        "POS_BRIDGE__WEBHOOK__ENABLED": "true",
        "POS_BRIDGE__REDIS__PREFIX": "123",  # a string field keeps digits as text
        "POS_BRIDGE__MULTISAFEPAY__EVENTS_HOSTS": '["a.example", "b.example"]',
        "POS_BRIDGE__MULTISAFEPAY__TERMINAL_GROUPS__0__TERMINALS": '["X1", "X2"]',
        "POS_BRIDGE_CONFIG": "ignored-because-path-given",
    }
    cfg = load(tmp_path, MINIMAL, env)
    assert cfg.redis.url == "redis://:pw-override@10.0.0.1:6379/2"
    assert cfg.log.level == "debug"
    assert cfg.multisafepay.transport == "websocket"
    assert cfg.multisafepay.poll_interval == 2.5
    assert cfg.webhook.enabled is True
    assert cfg.redis.prefix == "123"
    assert cfg.multisafepay.events_hosts == ["a.example", "b.example"]
    assert cfg.group_for_terminal("x2") is not None and cfg.group_for_terminal("0000004D") is None
    assert "pw-override" in cfg.secrets()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"POS_BRIDGE__REDIS__URLL": "x"},
            "redis.urll (from POS_BRIDGE__REDIS__URLL): unknown key",
        ),
        ({"POS_BRIDGE__NOPE__X": "1"}, "nope (from POS_BRIDGE__NOPE__X): unknown key"),
        ({"POS_BRIDGE__REDIS": "1"}, "POS_BRIDGE__REDIS: must be POS_BRIDGE__SECTION__KEY"),
        (
            {"POS_BRIDGE__REDIS__STREAM_MAXLEN": "lots"},
            "redis.stream_maxlen (from POS_BRIDGE__REDIS__STREAM_MAXLEN): Input should be a valid "
            "integer (got 'lots')",
        ),
        (
            {"POS_BRIDGE__REDIS__ORDER_TTL": "60"},
            "redis.order_ttl (from POS_BRIDGE__REDIS__ORDER_TTL): must be at least 2700 s",
        ),
        (
            {"POS_BRIDGE__MULTISAFEPAY__TERMINAL_GROUPS__5__NAME": "x"},
            "has no item [5] to override",
        ),
        (
            {"POS_BRIDGE__LOG__LEVEL__X": "x"},
            "log.level (from POS_BRIDGE__LOG__LEVEL__X): is not a section",
        ),
    ],
)
def test_env_override_errors(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    msg = error_of(tmp_path, MINIMAL, {**ENV, **env})
    assert expected in msg


# --------------------------------------------------------------------------------------------
# small helpers


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_listen("[::]:9108") == ("::", 9108)
    assert parse_listen(":9108") == ("0.0.0.0", 9108)
    assert parse_listen("localhost:0") == ("localhost", 0)
    for bad in ("::1:80", "host:99999", "host:", "[::1]80", "[zz]:80", "a b:1"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_frozen(tmp_path: Path) -> None:
    cfg = load(tmp_path, MINIMAL)
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        cfg.redis.prefix = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# the CLI


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    cmd = [str(_VENV_CLI)] if _VENV_CLI.exists() else CLI
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("POS_BRIDGE")}
    full_env.pop("CREDENTIALS_DIRECTORY", None)
    full_env.update(env or {})
    return subprocess.run(
        [*cmd, *args],
        check=False,
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=60,
    )


def test_cli_check_config_example() -> None:
    res = run_cli("check-config", "--config", "config.example.toml")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    group = data["multisafepay"]["terminal_groups"][0]
    assert group["api_key"] == "***" and group["key_source"] == "inline api_key"
    assert "sim-dev-key" not in res.stdout + res.stderr
    assert "warning" in res.stderr and "development only" in res.stderr
    assert "Traceback" not in res.stderr


def test_cli_masks_every_secret(tmp_path: Path) -> None:
    keyfile = tmp_path / "k"
    keyfile.write_text("file-secret-abcdef123\n")
    cfg = write(
        tmp_path,
        f"""
        [[multisafepay.terminal_groups]]
        name = "a"
        api_key_file = "{keyfile}"
        terminals = ["T1"]
        [[multisafepay.terminal_groups]]
        name = "b"
        api_key_env = "B_KEY"
        terminals = ["T2"]
        [redis]
        url = "redis://bridge:redis-secret-pw@127.0.0.1:6379/0"
        """,
    )
    res = run_cli("check-config", "--config", str(cfg), env={"B_KEY": "env-secret-xyz987"})
    assert res.returncode == 0, res.stderr
    out = res.stdout + res.stderr
    for secret in ("file-secret-abcdef123", "env-secret-xyz987", "redis-secret-pw"):
        assert secret not in out
    data = json.loads(res.stdout)
    assert data["redis"]["url"] == "redis://bridge:***@127.0.0.1:6379/0"
    assert [g["key_source"] for g in data["multisafepay"]["terminal_groups"]] == [
        f"file {keyfile}",
        "env B_KEY",
    ]


def test_cli_env_config_path(tmp_path: Path) -> None:
    cfg = write(tmp_path, MINIMAL)
    res = run_cli("check-config", env={"POS_BRIDGE_CONFIG": str(cfg), **ENV})
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (MINIMAL + "[redis]\nstream_maxln = 1\n", "redis.stream_maxln: unknown key"),
        ("[redis\n", "invalid TOML"),
        (
            MINIMAL.replace("MSP_KEY", "NOT_SET_ANYWHERE_XYZ"),
            "environment variable NOT_SET_ANYWHERE_XYZ is not set",
        ),
    ],
)
def test_cli_broken_config(tmp_path: Path, text: str, needle: str) -> None:
    res = run_cli("check-config", "--config", str(write(tmp_path, text)))
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("pos-bridge: ") and needle in lines[0]
    assert "Traceback" not in res.stderr


def test_cli_missing_file(tmp_path: Path) -> None:
    res = run_cli("check-config", "--config", str(tmp_path / "absent.toml"))
    assert res.returncode == 2
    assert res.stderr.strip() == f"pos-bridge: {tmp_path / 'absent.toml'}: no such file"


# --------------------------------------------------------------------------------------------
# every problem at once


def test_missing_section_does_not_hide_other_errors(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "[redis]\nbogus = 1\nprefix = ''\n[log]\nlevel = 'loud'\n")
    assert msg == (
        f"{tmp_path}/config.toml: "
        "multisafepay.terminal_groups: at least one [[multisafepay.terminal_groups]] is required; "
        "redis.prefix: must be 1 to 32 characters of A-Z a-z 0-9 _ . -; "
        "redis.bogus: unknown key; "
        "log.level: Input should be 'debug', 'info', 'warning' or 'error' (got 'loud')"
    )


def test_environment_and_file_errors_reported_together(tmp_path: Path) -> None:
    env = {**ENV, "POS_BRIDGE__NOPE__X": "1", "POS_BRIDGE__REDIS__STREAM_MAXLEN": "0"}
    msg = error_of(tmp_path, MINIMAL + "[webhook]\npath = 'hooks'\n", env)
    assert "nope (from POS_BRIDGE__NOPE__X): unknown key" in msg
    assert "redis.stream_maxlen (from POS_BRIDGE__REDIS__STREAM_MAXLEN): must be at least 1" in msg
    assert "webhook.path: must start with '/'" in msg


def test_every_group_without_a_key_is_named(tmp_path: Path) -> None:
    text = MINIMAL + MINIMAL.replace('"shop"', '"other"').replace("0000004D", "T2")
    msg = error_of(tmp_path, text.replace("MSP_KEY", "UNSET_KEY"), environ={})
    assert "terminal_groups[0].api_key_env: group 'shop'" in msg
    assert "terminal_groups[1].api_key_env: group 'other'" in msg


def test_loading_registers_no_secret_with_the_logs(tmp_path: Path) -> None:
    from bridge import logs

    logs.clear_secrets()
    cfg = load(tmp_path, MINIMAL)
    assert logs.redact_text(f"x {ENV['MSP_KEY']} y") == f"x {ENV['MSP_KEY']} y"
    logs.register_secrets(cfg.secrets())  # the caller's step
    try:
        assert logs.redact_text(f"x {ENV['MSP_KEY']} y") == "x *** y"
    finally:
        logs.clear_secrets()
