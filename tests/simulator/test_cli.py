"""`pos-bridge simulate` as a process: the URL line, clean stop, one-line errors."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx

from bridge.simulator.server import bind

CMD = [sys.executable, "-m", "bridge.cli", "simulate"]


def test_simulate_prints_url_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [*CMD, "--port", "0", "--speed", "50", "--variant", "sse_ids=off"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("MultiSafepay simulator: http://127.0.0.1:") and line.endswith(
            "/v1/json/"
        )
        base = line.split(": ", 1)[1]
        page = proc.stdout.readline().strip()
        assert page.startswith("Terminals page: http://127.0.0.1:")
        page_url = page.split(": ", 1)[1].split()[0]
        assert base.startswith(page_url) and page_url.endswith("/")
        assert "Simulated terminals" in httpx.get(page_url, timeout=5).text
        r = httpx.get(base + "terminals", headers={"api_key": "k"}, timeout=5)
        assert r.status_code == 200
        root = base.removesuffix("v1/json/")
        assert httpx.get(root + "_sim/variants").json()["data"]["sse_ids"] == "off"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        err = proc.stderr.read()
        assert "Traceback" not in err and "GET /v1/json/terminals" in err  # requests are logged
    finally:
        proc.kill()


def test_bad_variant_is_one_line() -> None:
    r = subprocess.run([*CMD, "--variant", "sse_ids=sometimes"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("pos-bridge: --variant") and r.stderr.count("\n") == 1


def test_port_in_use_is_one_line() -> None:
    sock = bind("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        r = subprocess.run([*CMD, "--port", str(port)], capture_output=True, text=True, timeout=10)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert "cannot listen on 127.0.0.1:" in r.stderr
    finally:
        sock.close()
