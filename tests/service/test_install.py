"""``scripts/install-service --root DIR``: the documented install, into a temporary root."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install-service"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The script with a systemctl on PATH that records being called: with --root it must not be."""
    fake = root.parent / "fake-bin"
    fake.mkdir(exist_ok=True)
    (fake / "systemctl").write_text(
        f'#!/bin/sh\necho "$@" >> {root.parent}/systemctl-called\nexit 1\n'
    )
    (fake / "systemctl").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = f"{fake}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    python = shutil.which("python3", path=env["PATH"]) or sys.executable
    result = subprocess.run(
        [str(SCRIPT), "--root", str(root), "--python", python, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert not (root.parent / "systemctl-called").exists(), "systemctl was called with --root"
    return result


def test_install_into_a_temporary_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = run(root)
    assert result.returncode == 0, result.stderr

    venv = root / "opt/pos-bridge/venv"
    etc = root / "etc/pos-bridge"
    units = root / "etc/systemd/system"
    assert (venv / "bin/pos-bridge").is_file()
    assert (root / "opt/pos-bridge/README.md").is_file()
    config = etc / "config.toml"
    assert config.read_text() == (ROOT / "config.example.toml").read_text()
    assert mode(config) == 0o644  # the daemon (a dynamic user) reads it; no secrets belong in it
    assert (etc / "keys").is_dir() and mode(etc / "keys") == 0o700
    assert (units / "pos-bridge.service").read_text() == (
        ROOT / "systemd/pos-bridge.service"
    ).read_text()
    dropin = (units / "pos-bridge.service.d/credentials.conf").read_text()
    assert "[Service]" in dropin
    # the example config's group has its key inline (development): no credential for it
    assert not [line for line in dropin.splitlines() if line.startswith("LoadCredential=")]
    assert "# shop-amsterdam: key from its api_key setting" in dropin

    # the installed command works (from the virtualenv, not this checkout)
    help_ = subprocess.run(
        [str(venv / "bin/pos-bridge"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert help_.returncode == 0 and "usage: pos-bridge" in help_.stdout, help_.stderr
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "import bridge; print(bridge.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert where.stdout.startswith(str(venv)), where.stdout

    # a re-run upgrades and keeps the config; a group without a key setting gets its credential
    config.write_text(
        config.read_text().replace(
            '# [[multisafepay.terminal_groups]]\n# name = "shop-utrecht"\n'
            '# terminals = ["00000ABC", "00000ABD"]',
            '[[multisafepay.terminal_groups]]\nname = "shop-utrecht"\n'
            'terminals = ["00000ABC", "00000ABD"]',
        )
    )
    assert 'name = "shop-utrecht"\nterminals' in config.read_text()
    again = run(root)
    assert again.returncode == 0, again.stderr
    assert 'name = "shop-utrecht"' in config.read_text()
    lines = (units / "pos-bridge.service.d/credentials.conf").read_text().splitlines()
    assert "LoadCredential=shop-utrecht:/etc/pos-bridge/keys/shop-utrecht" in lines
    assert not any(line.startswith("LoadCredential=shop-amsterdam") for line in lines)  # inline key
    assert "put the API key of terminal group shop-utrecht" in again.stderr


def test_refuses_without_root_or_root_dir() -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: the script would really install")
    result = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "--root" in result.stderr


def test_unknown_option() -> None:
    result = subprocess.run([str(SCRIPT), "--bogus"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "unknown option --bogus" in result.stderr
