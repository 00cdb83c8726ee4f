"""The unit file: ``systemd-analyze verify`` is clean and ``security`` rates it 2.0 or lower."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "pos-bridge.service"
EXEC_START = (
    "ExecStart=/opt/pos-bridge/venv/bin/pos-bridge run --config /etc/pos-bridge/config.toml"
)
MAX_EXPOSURE = 2.0

analyze = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(analyze is None, reason="systemd-analyze is not installed")


def settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_unit_settings() -> None:
    s = settings(UNIT.read_text())
    assert s["Type"] == ["notify"]
    assert EXEC_START in UNIT.read_text().splitlines()
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    assert s["DynamicUser"] == ["yes"]
    assert s["NotifyAccess"] == ["main"]
    watchdog = float(s["WatchdogSec"][0])
    assert 5 <= watchdog <= 120
    assert float(s["TimeoutStopSec"][0]) > 10  # above the daemon's 10 s shutdown grace
    families = s["RestrictAddressFamilies"][0].split()
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert s["ProtectSystem"] == ["strict"]  # no writes to disk
    assert "ReadWritePaths" not in s and "StateDirectory" not in s
    assert "2" in s["RestartPreventExitStatus"][0].split()  # an invalid config is not retried
    # the key credentials are documented in the unit, named after the terminal groups
    assert "LoadCredential=shop-amsterdam:/etc/pos-bridge/keys/shop-amsterdam" in UNIT.read_text()


def _testable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's pos-bridge (verify checks that the
    binary exists; /opt/pos-bridge is not installed here). Nothing else changes."""
    text = UNIT.read_text()
    local = Path(sys.executable).with_name("pos-bridge")
    copy = tmp_path / "pos-bridge.service"
    copy.write_text(
        text.replace(
            EXEC_START, EXEC_START.replace("/opt/pos-bridge/venv/bin/pos-bridge", str(local))
        )
    )
    assert copy.read_text() != text
    return copy


@needs_analyze
def test_verify_is_clean(tmp_path: Path) -> None:
    unit = _testable_copy(tmp_path)
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "" and result.stdout.strip() == "", (
        result.stderr + result.stdout
    )


@needs_analyze
def test_security_exposure_is_ok(tmp_path: Path) -> None:
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0 and "offline" in result.stderr:
        pytest.skip(f"this systemd-analyze has no --offline: {result.stderr.strip()}")
    match = re.search(
        r"Overall exposure level for pos-bridge\.service: (\d+\.\d+) (\w+)", result.stdout
    )
    assert match, result.stdout + result.stderr
    score = float(match.group(1))
    print(f"systemd-analyze security: {score} {match.group(2)}")
    assert score <= MAX_EXPOSURE, result.stdout
