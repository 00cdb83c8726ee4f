"""``[redis]`` beyond one node: TLS files, Sentinel, what a commit waits for, and the target
every part of the bridge connects with (``RedisConfig.target``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bridge.cli import build_parser
from bridge.config import Config, ConfigError, load_config
from bridge.errors import UserError
from bridge.redis.target import RedisTarget, parse_host_port
from bridge.till.options import redis_target, tail_hint

GROUP = """
[[multisafepay.terminal_groups]]
name = "shop"
api_key_env = "MSP_KEY"
terminals = ["0000004D"]
"""
ENV = {"MSP_KEY": "live_key_0123456789abcdef", "SENTINEL_PW": "s3ntinel-pw-value"}
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def load(tmp_path: Path, redis: str, environ: dict[str, str] | None = None) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(f"[redis]\n{redis}\n{GROUP}", encoding="utf-8")
    return load_config(path, environ=ENV if environ is None else environ, warn=None)


def error_of(tmp_path: Path, redis: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, redis, environ)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_default_is_the_single_node_url_unchanged(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    target = cfg.redis.target
    assert target == RedisTarget(url="redis://127.0.0.1:6379/0")
    assert not target.sentinel and not target.tls and target.tls_kwargs() == {}
    assert target.wait_replicas == 0  # nothing to wait for on one node


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("10.0.0.1:26380", ("10.0.0.1", 26380)),
        ("sentinel-a", ("sentinel-a", 26379)),
        ("[::1]:26381", ("::1", 26381)),
        ("[fe80::1]", ("fe80::1", 26379)),
    ],
)
def test_sentinel_addresses(text: str, want: tuple[str, int]) -> None:
    assert parse_host_port(text) == want


@pytest.mark.parametrize("text", ["", "h:0", "h:70000", "h:x", "::1:26379", "[::1", "a b:1", ":1"])
def test_bad_sentinel_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(text)


def test_tls_files_are_checked_at_load_one_line_each(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text(PEM)
    (tmp_path / "not.pem").write_text("hello")
    msg = error_of(
        tmp_path,
        f'url = "rediss://h:6380/0"\ntls_ca_file = "{tmp_path / "ca.pem"}"\n'
        f'tls_cert_file = "{tmp_path / "missing.pem"}"\ntls_key_file = "{tmp_path / "not.pem"}"',
    )
    assert "redis.tls_cert_file" in msg and "no such file" in msg
    assert "redis.tls_key_file" in msg and "not a PEM file" in msg
    assert "tls_ca_file" not in msg


def test_tls_target(tmp_path: Path) -> None:
    for name in ("ca", "crt", "key"):
        (tmp_path / f"{name}.pem").write_text(PEM)
    cfg = load(
        tmp_path,
        f'url = "rediss://till:pw@h:6380/2"\ntls_ca_file = "{tmp_path / "ca.pem"}"\n'
        f'tls_cert_file = "{tmp_path / "crt.pem"}"\ntls_key_file = "{tmp_path / "key.pem"}"',
    )
    kwargs = cfg.redis.target.tls_kwargs()
    assert kwargs["ssl_ca_certs"] == str(tmp_path / "ca.pem")
    assert kwargs["ssl_certfile"] == str(tmp_path / "crt.pem")
    assert kwargs["ssl_keyfile"] == str(tmp_path / "key.pem")
    assert kwargs["ssl_cert_reqs"] == "required"


@pytest.mark.parametrize(
    ("redis", "reason"),
    [
        ('tls_ca_file = "/x"', "need a rediss:// url"),
        ('url = "rediss://h/0"\ntls_cert_file = "/x"', "go together"),
        ('sentinels = ["h:1"]', "need master_name"),
        ('master_name = "m"', "needs sentinels"),
        ('sentinels = ["h:1", "h:1"]\nmaster_name = "m"', "twice"),
        ('sentinels = ["h:x"]\nmaster_name = "m"', "port must be"),
        ('sentinel_password_env = "X"', "need sentinels"),
        ('url = "unix:///r.sock"\nsentinels = ["h:1"]\nmaster_name = "m"', "not unix"),
        ("wait_replicas = -1", "wait_replicas"),
    ],
)
def test_redis_mode_mistakes(tmp_path: Path, redis: str, reason: str) -> None:
    assert reason in error_of(tmp_path, redis)


def test_sentinel_target_and_its_password(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        'url = "redis://bridge:node-pw@ignored:1/3"\n'
        'sentinels = ["10.0.0.1:26379", "10.0.0.2"]\nmaster_name = "pos"\n'
        'sentinel_username = "watcher"\nsentinel_password_env = "SENTINEL_PW"',
    )
    t = cfg.redis.target
    assert t.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379))
    assert t.master_name == "pos" and t.sentinel_username == "watcher"
    assert t.sentinel_password == "s3ntinel-pw-value"
    assert t.wait_replicas == 1  # with sentinels, a replica to wait for by default
    assert t.node_kwargs() == {"username": "bridge", "password": "node-pw", "db": 3}
    assert "s3ntinel-pw-value" in cfg.secrets()
    shown = str(t) + repr(t) + repr(cfg.redis)
    assert "s3ntinel-pw-value" not in shown and "node-pw" not in shown
    assert "10.0.0.1:26379" in str(t)


def test_sentinel_password_problems_name_the_key(tmp_path: Path) -> None:
    base = 'sentinels = ["h:1"]\nmaster_name = "m"\n'
    msg = error_of(tmp_path, base + 'sentinel_password_env = "NOPE"')
    assert "redis.sentinel_password_env" in msg and "NOPE is not set" in msg
    msg = error_of(tmp_path, base + f'sentinel_password_file = "{tmp_path / "none"}"')
    assert "redis.sentinel_password_file" in msg and "no such file" in msg
    (tmp_path / "pw").write_text("file-pw\n")
    cfg = load(tmp_path, base + f'sentinel_password_file = "{tmp_path / "pw"}"')
    assert cfg.redis.target.sentinel_password == "file-pw"


def test_wait_replicas_explicit(tmp_path: Path) -> None:
    cfg = load(tmp_path, 'sentinels = ["h:1"]\nmaster_name = "m"\nwait_replicas = 0')
    assert cfg.redis.target.wait_replicas == 0
    cfg = load(tmp_path, "wait_replicas = 2\nwait_timeout = 0.25")
    assert (cfg.redis.target.wait_replicas, cfg.redis.target.wait_timeout) == (2, 0.25)


def _till_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["tail", *argv])


def test_till_flags_build_the_same_target() -> None:
    args = _till_args(
        "--redis-url", "redis://till:pw@x/0", "--sentinel", "h1:26379", "--sentinel", "h2",
        "--master-name", "pos",
    )  # fmt: skip
    t = redis_target(args)
    assert t.sentinels == (("h1", 26379), ("h2", 26379)) and t.master_name == "pos"
    assert t.wait_replicas == 1
    args.wait_replicas, args.wait_timeout = 0, 2.5
    assert (redis_target(args).wait_replicas, redis_target(args).wait_timeout) == (0, 2.5)
    hint = tail_hint(args, "T1", None)
    assert "--sentinel h1:26379 --sentinel h2 --master-name pos" in hint
    assert "--wait-replicas 0 --wait-timeout 2.5" in hint
    assert "pw" not in hint.replace("***", "")


def test_till_flags_are_checked_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        redis_target(_till_args("--sentinel", "h1"))
    assert "need master_name" in info.value.message and "\n" not in info.value.message
    with pytest.raises(UserError) as info:
        redis_target(
            _till_args("--redis-url", "rediss://h/0", "--tls-ca-file", str(tmp_path / "no"))
        )
    assert "redis.tls_ca_file" in info.value.message and "no such file" in info.value.message


@pytest.mark.parametrize(
    ("redis", "reason"),
    [
        (
            'layout = "cluster"\nsentinels = ["h:1"]\nmaster_name = "m"',
            'layout = "cluster" and sentinels do not go together',
        ),
    ],
)
def test_cluster_refuses_sentinels(tmp_path: Path, redis: str, reason: str) -> None:
    assert reason in error_of(tmp_path, redis)


def test_cluster_target(tmp_path: Path) -> None:
    cfg = load(tmp_path, 'url = "rediss://h:7000"\nlayout = "cluster"\nwait_replicas = 0')
    t = cfg.redis.target
    assert t.cluster and not t.sentinel and t.wait_replicas == 0 and t.tls
    assert str(t) == "cluster via rediss://h:7000"
    with pytest.raises(ValueError, match="no sentinels"):
        RedisTarget(url="redis://h:7000", cluster=True, sentinels=(("h", 1),), master_name="m")
    # commits wait for a replica by default in a cluster (bridge.redis.cluster), as with
    # sentinels; 0 turns it off
    cfg = load(tmp_path, 'url = "redis://h:7000"\nlayout = "cluster"')
    assert cfg.redis.target.wait_replicas == 1
    assert RedisTarget(url="redis://h:7000", cluster=True, wait_replicas=2).wait_replicas == 2


def test_till_cluster_flag() -> None:
    args = _till_args("--redis-url", "redis://h:7000", "--cluster")
    assert redis_target(args).cluster
    assert tail_hint(args, "T1", None).endswith("--cluster")
    # the tools opt in (--wait-replicas 1): they have no probe to tell a cluster without
    # replicas, where every WAIT would last its whole timeout
    assert redis_target(args).wait_replicas == 0
    waiting = _till_args("--redis-url", "redis://h:7000", "--cluster", "--wait-replicas", "1")
    assert redis_target(waiting).wait_replicas == 1
    with pytest.raises(UserError) as info:
        redis_target(
            _till_args(
                "--redis-url",
                "redis://h:7000",
                "--cluster",
                "--sentinel",
                "h1",
                "--master-name",
                "m",
            )  # fmt: skip
        )
    assert "cluster" in info.value.message and "\n" not in info.value.message
