"""MultiSafepay's official Python SDK, in its own pinned virtualenv, against the simulator.

The SDK (``multisafepay`` on PyPI, pinned in ``bridge/bench/sdk-requirements.txt``) is built
into a virtualenv on first use by ``bridge.bench.sdkvenv`` (``$POS_BRIDGE_SDK_VENV``, default
``~/.cache/pos-bridge/sdk-venv-<hash of the requirements>``); PyPI must be reachable then. A
failure to build it fails the test: it never skips. ``sdk_client.py`` runs in that virtualenv
with the SDK's own code paths.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.vectors import vector_json

from bridge.bench.sdkvenv import SdkVenvError
from bridge.bench.sdkvenv import sdk_python as sdk_venv_python
from bridge.multisafepay.webhook import verify_webhook
from bridge.simulator import SimulatorServer
from tests.simulator.conftest import Receiver
from tests.simulator.test_api import wait_final

pytestmark = pytest.mark.sdk

HERE = Path(__file__).parent
SCRIPT = HERE / "sdk_client.py"
KEY = "sdk-key-123"


@pytest.fixture(scope="module")
def sdk_python() -> Path:
    """The SDK virtualenv's python, built on demand (once per requirements file)."""
    try:
        return sdk_venv_python()
    except SdkVenvError as exc:
        pytest.fail(str(exc))


def run_sdk(python: Path, *args: str, stdin: Any = None) -> Any:
    r = subprocess.run(
        [python, SCRIPT, *args],
        input=None if stdin is None else json.dumps(stdin),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_official_sdk_against_the_simulator(sdk_python: Path, receiver: Receiver) -> None:
    # speed 1: the SDK's stream opens well before the first status (1.5 s), since the default
    # stream has no ids to replay from; keep-alives every 0.5 s so the SDK meets `data: ping`.
    with SimulatorServer(speed=1, webhook_url=receiver.url, keepalive_interval=0.5) as sim:
        out = run_sdk(sdk_python, "flow", sim.url + "v1/", KEY, str(os.getpid()))
    paid = f"sdk/{os.getpid()}/paid"

    assert out["created"] == {"order_id": paid, "has_token": True, "has_stream_url": True}
    # a soft decline, then the step-up transaction, read by the SDK's SSE client; the default
    # stream has no `id:` lines and `data: ping` keep-alives (the SDK surfaces them as data)
    assert [e["status"] for e in out["events"]] == [
        "initialized",
        "declined",
        "initialized",
        "completed",
    ]
    assert all(e["event"] == "session.order" and e["id"] is None for e in out["events"])
    assert out["pings"] >= 1
    assert out["get"] == {
        "order_id": paid,
        "status": "completed",
        "terminal": "sim-softdecline-approve-41",
    }
    partial, again, rest = out["refunds"]
    assert partial["http"] == 200 and partial["order_id"] == paid
    assert again == {"http": 400, "error_code": 1034}  # the same amount within 5 minutes
    assert rest["http"] == 200  # no amount: a full refund of what remains
    assert out["after_refunds"] == {"status": "refunded", "amount_refunded": 1250}
    assert out["cancel"] == {"answer_status": "cancelled", "get_status": "cancelled"}
    terminals = {t["id"]: t for t in out["terminals"]}
    assert {"SIM-APPROVE-01", "0000004D", "00000ABC", "00000LQT"} <= set(terminals)
    assert (
        terminals["00000ABC"]["provider"] == "VERIFONE" and terminals["00000LQT"]["active"] is False
    )
    assert all(t["code"] and t["created"] and t["last_updated"] for t in terminals.values())

    # the simulator's signed notifications verify with the SDK's own validator
    posts = [r for r in receiver.requests if r["method"] == "POST"]
    assert posts, "no webhook arrived"
    for notification in posts[:3]:
        given = {
            "body": notification["raw"].decode("utf-8"),
            "auth": notification["headers"]["Auth"],
        }
        assert run_sdk(sdk_python, "validate-webhook", KEY, stdin=given | {"max_age": 0}) == {
            "valid": True
        }


def test_sdk_webhook_validator_fails_the_documented_example(sdk_python: Path) -> None:
    """Where the SDK is wrong: its validator re-serializes the body (util/webhook.py), so
    MultiSafepay's own documented example (MultiSafepay/docs:
    content/payment-management/webhook.md, with its stray space) does not verify with it. The
    bridge verifies the raw bytes and accepts it."""
    docs = vector_json("webhook-docs-example.json")
    given = {"body": docs["raw_body"], "auth": docs["auth_header"], "max_age": 0}
    assert run_sdk(sdk_python, "validate-webhook", docs["api_key"], stdin=given) == {"valid": False}
    ours = verify_webhook(
        docs["raw_body"].encode("utf-8"),
        docs["auth_header"],
        docs["api_key"],
        now=float(docs["timestamp"]),
        max_age=300,
    )
    assert ours.timestamp == docs["timestamp"]


RECEIPT_SCRIPT = HERE / "sdk_receipt.py"


@pytest.mark.parametrize(
    "terminal,status,approved",
    [
        ("SIM-APPROVE-01", "completed", True),
        ("SIM-SOFTDECLINE-CANCEL-01", "cancelled", False),
        ("SIM-CUSTOMER-CANCEL-01", "cancelled", False),
    ],
)
def test_official_sdk_reads_receipts(
    sdk_python: Path, terminal: str, status: str, approved: bool
) -> None:
    """``PosManager.get_receipt`` reads the simulator's receipts without an error or warning."""
    with SimulatorServer(speed=10) as sim:
        order_id = f"sdk-rcpt-{terminal}-{os.getpid()}"
        created = httpx.post(
            sim.base_url + "orders",
            headers={"api_key": KEY},
            json={
                "type": "redirect",
                "order_id": order_id,
                "currency": "EUR",
                "amount": 1250,
                "description": "SDK receipt test",
                "gateway_info": {"terminal_id": terminal},
            },
        )
        assert created.status_code == 200, created.text
        order = wait_final(sim, order_id, KEY, timeout=60)
        r = subprocess.run(
            [sdk_python, RECEIPT_SCRIPT, sim.url + "v1/", KEY, order_id],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        result = json.loads(r.stdout.strip().splitlines()[-1])
    assert order["status"] == status
    assert result["has_receipt"] is True and result["warnings"] == []
    assert result["merchant"] == "pos-bridge simulator" and result["amount"] == 1250
    assert result["last4"] == order["payment_details"]["last4"]
    assert (result["completed"] is not None) is approved
    assert (result["response_code"] == "00") is approved
    assert result["printed_on"]
    assert result["unknown_status"] == 404  # an unknown order: the documented 404 (1006)
