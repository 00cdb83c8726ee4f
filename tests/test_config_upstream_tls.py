"""``[multisafepay] ca_file``: the CAs the daemon trusts for MultiSafepay, checked when the config
is loaded (one line naming the key and the reason), and the one TLS context built from it."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
from test_config import ENV
from test_config import MINIMAL as GROUP

from bridge.config import Config, ConfigError, load_config
from bridge.multisafepay.tls import client_context
from bridge.simulator.certs import LocalCa, make_local_ca


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCa:
    return make_local_ca(tmp_path_factory.mktemp("ca"))


def load(tmp_path: Path, upstream: str, environ: dict[str, str] | None = None) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(f"[multisafepay]\n{upstream}\n{GROUP}", encoding="utf-8")
    return load_config(path, environ=ENV if environ is None else environ, warn=None)


def error_of(tmp_path: Path, upstream: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, upstream)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_by_default_the_context_trusts_what_httpx_trusts(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    assert cfg.multisafepay.ca_file is None
    assert cfg.multisafepay.tls_context is client_context()
    assert client_context().verify_mode is ssl.CERT_REQUIRED and client_context().check_hostname


def test_a_ca_file_is_the_one_context_trusting_that_ca(tmp_path: Path, ca: LocalCa) -> None:
    cfg = load(tmp_path, f'ca_file = "{ca.ca_file}"')
    assert cfg.multisafepay.ca_file == str(ca.ca_file)
    ctx = cfg.multisafepay.tls_context
    assert ctx is cfg.multisafepay.tls_context  # built once, shared
    assert ctx is not client_context()
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    [subject] = [dict(part[0] for part in c["subject"]) for c in ctx.get_ca_certs()]
    assert subject["organizationName"] == "pos-bridge throwaway CA"  # that CA alone


def test_ca_file_expands_the_home_folder(
    tmp_path: Path, ca: LocalCa, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(ca.ca_file.parent))
    cfg = load(tmp_path, f'ca_file = "~/{ca.ca_file.name}"')
    assert len(cfg.multisafepay.tls_context.get_ca_certs()) == 1


def test_ca_file_from_the_environment(tmp_path: Path, ca: LocalCa) -> None:
    cfg = load(tmp_path, "", {**ENV, "POS_BRIDGE__MULTISAFEPAY__CA_FILE": str(ca.ca_file)})
    assert cfg.multisafepay.ca_file == str(ca.ca_file)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d, ca: d / "missing.pem", "no such file"),
        (lambda d, ca: d, "is a directory"),
        (lambda d, ca: _write(d / "ca.txt", "not a certificate\n"), "not a PEM file"),
        (lambda d, ca: ca.server.key_file, "no CA certificate that TLS can load"),
        (
            lambda d, ca: _write(d / "bad.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END"),
            "no CA certificate that TLS can load",
        ),
    ],
    ids=["missing", "directory", "not-pem", "a-key", "garbled"],
)
def test_a_ca_file_that_cannot_be_trusted_is_one_clear_line(
    tmp_path: Path, ca: LocalCa, make: object, reason: str
) -> None:
    path = make(tmp_path, ca)  # type: ignore[operator]
    msg = error_of(tmp_path, f'ca_file = "{path}"')
    assert "multisafepay.ca_file" in msg and reason in msg and str(path) in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_ca_file(tmp_path: Path, ca: LocalCa) -> None:
    path = _write(tmp_path / "locked.pem", ca.ca_file.read_text())
    path.chmod(0)
    assert "permission denied" in error_of(tmp_path, f'ca_file = "{path}"')


def test_an_empty_ca_file_is_refused(tmp_path: Path) -> None:
    msg = error_of(tmp_path, 'ca_file = " "')
    assert "multisafepay.ca_file" in msg and "must not be empty" in msg


def test_check_config_names_the_ca_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bridge.cli import main as cli_main

    path = tmp_path / "config.toml"
    path.write_text(f'[multisafepay]\nca_file = "{tmp_path / "nope.pem"}"\n{GROUP}')
    monkeypatch.setenv("MSP_KEY", ENV["MSP_KEY"])
    assert cli_main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "multisafepay.ca_file" in err and "no such file" in err


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
