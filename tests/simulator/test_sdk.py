"""MultiSafepay's official Python SDK, in its own virtualenv, against the simulator."""

from __future__ import annotations

import json
import os
import subprocess
import time
import venv
from pathlib import Path

import pytest

from bridge.simulator import SimulatorServer
from bridge.simulator.signing import auth_header
from bridge.simulator.webhooks import encode_body

SCRIPT = Path(__file__).with_name("sdk_client.py")
VENV = Path(os.environ.get("POS_BRIDGE_SDK_VENV", Path.home() / ".cache/pos-bridge/sdk-venv"))


def sdk_python() -> Path:
    python = VENV / "bin" / "python"
    if (
        python.exists()
        and subprocess.run(
            [python, "-c", "import multisafepay, requests"], capture_output=True
        ).returncode
        == 0
    ):
        return python
    venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    r = subprocess.run(
        [python, "-m", "pip", "install", "-q", "multisafepay[requests]>=3,<4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot install the multisafepay SDK (no network?): {r.stderr.strip()[-300:]}")
    return python


@pytest.mark.sdk
@pytest.mark.parametrize(
    "terminal,expected",
    [
        ("SIM-APPROVE-01", ["initialized", "completed"]),
        ("SIM-RETRY-01", ["initialized", "declined", "initialized", "completed"]),
    ],
)
def test_official_sdk_creates_and_follows_order(terminal: str, expected: list[str]) -> None:
    python = sdk_python()
    # A webhook body exactly as the simulator encodes it (compact JSON, non-ASCII kept).
    body = encode_body({"status": "completed", "order_id": "x", "description": "café"}).decode()
    ts = str(int(time.time()))
    with SimulatorServer(speed=10) as sim:
        order_id = f"sdk-{terminal}-{os.getpid()}"
        r = subprocess.run(
            [
                python,
                SCRIPT,
                sim.url + "v1/",
                "sdk-key-123",
                terminal,
                order_id,
                body,
                auth_header("sdk-key-123", ts, body.encode()),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["order_id"] == order_id and result["has_token"]
    assert [e["status"] for e in result["events"]] == expected
    assert [e["id"] for e in result["events"]] == [str(i) for i in range(1, len(expected) + 1)]
    assert result["get_status"] == "completed"
    assert result["terminal"] == terminal.lower()
    assert result["webhook_valid"] is True
