"""``pos-bridge bench --workers N`` and ``--peer`` end to end (tiny loads), the comparison's
arithmetic, and the peer's clear error when PyPI cannot be reached. No timing is asserted."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bridge.bench.peer import comparison, side_by_side
from bridge.bench.procs import cpu_seconds, rss_bytes, tree
from bridge.bench.report import Result

TINY = ["--streams", "4", "--rate", "20", "--duration", "1.5", "--hold", "0.5"]
TINY += ["--baseline-duration", "1", "--log-level", "warning", "--json"]


def bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", "bench", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def assert_complete(res: dict[str, Any], streams: int = 4) -> None:
    assert res["ok"] is True and res["errors"] == [], res["errors"]
    assert res["events_lost"] == res["events_duplicated"] == res["events_unexpected"] == 0
    assert res["streams_held"] == res["streams_requested"] == streams
    assert res["final_events"] == streams
    assert res["drive_events"] > 0 and res["drive_events_per_s"] > 0


def test_bench_drives_two_workers() -> None:
    proc = bench(*TINY, "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    res = json.loads(proc.stdout)
    assert_complete(res)
    assert res["settings"]["workers"] == 2
    # the supervisor and both workers were measured: each worker holds its own connections
    assert res["daemon_cpu_s_per_1000_events"] > 0
    assert res["daemon_rss_before_mb"] > 0
    assert any("supervisor" in note for note in res["notes"])


@pytest.mark.sdk
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_bench_peer_runs_both_bridges_side_by_side(tls: bool) -> None:
    """Over TLS too: the peer trusts the run's CA through its environment, the daemon through
    ``ca_file``; neither could pay otherwise (a payment failed is an error of the run)."""
    proc = bench(*TINY, "--peer", *(["--tls"] if tls else []))
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    out = json.loads(proc.stdout)
    assert out["comparison"]["tls"] is tls
    assert out["bridge"]["settings"]["tls"] is out["peer"]["settings"]["tls"] is tls
    assert_complete(out["bridge"])
    peer = out["peer"]
    assert_complete(peer)
    assert peer["baseline_events"] == 0  # the peer's run has no baseline phase
    assert peer["streams_by_transport"] == {"sse": 4}  # the SDK's SSE client held them
    rows = out["comparison"]["rows"]
    assert rows["events/s reached"][1] == peer["drive_events_per_s"]
    assert rows["memory per held stream (KB)"] == [
        out["bridge"]["daemon_kb_per_stream"],
        peer["daemon_kb_per_stream"],
    ]


def test_peer_says_pypi_is_unreachable(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["POS_BRIDGE_SDK_VENV"] = str(tmp_path / "sdk-venv")  # not built yet
    env["PIP_INDEX_URL"] = "http://127.0.0.1:9/simple/"  # discard port: nothing answers
    env.pop("PIP_FIND_LINKS", None)
    proc = bench(*TINY, "--peer", env=env)
    assert proc.returncode == 1, proc.stdout
    assert "installing MultiSafepay's Python SDK from PyPI" in proc.stderr
    assert "cannot install the multisafepay SDK from PyPI" in proc.stderr
    assert "reachable" in proc.stderr
    assert not (tmp_path / "sdk-venv" / ".installed").exists()


def result(kb_per_stream: float, eps: float, payment_ms: float) -> Result:
    res = Result(settings={"workers": 1})
    res.daemon_kb_per_stream = kb_per_stream
    res.drive_events_per_s = eps
    res.cpu_ms_per_payment = {"payment": payment_ms}
    return res


def test_comparison_reports_streams_per_gb_as_a_ratio() -> None:
    cmp = comparison(result(5.0, 5000.0, 4.0), result(50.0, 900.0, 12.0))
    assert cmp["streams_per_gb_ratio"] == pytest.approx(10.0)
    assert cmp["rows"]["streams per GB"] == (1024 * 1024 / 5.0, 1024 * 1024 / 50.0)
    assert cmp["rows"]["CPU per payment, payment (ms)"] == (4.0, 12.0)
    text = side_by_side(result(5.0, 5000.0, 4.0), result(50.0, 900.0, 12.0))
    assert "10.00x the peer's" in text and "events/s reached" in text


def test_process_figures_include_children() -> None:
    # the child spends 50 ms of CPU first: a process that ran less than a clock tick can read
    # 0 s in /proc (its time is sampled at ticks), and the test then failed on a fast start
    code = (
        "import sys, time\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < 0.05: pass\n"
        "print('up', flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=-1, stdout=-1, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "up\n"  # settled
        me = os.getpid()
        assert child.pid in tree(me)
        with open("/proc/self/statm") as f:
            own = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        # the child's resident size is counted with ours (a margin: sizes move)
        assert rss_bytes(me) - own >= 0.8 * rss_bytes(child.pid) > 0
        assert cpu_seconds(me) >= cpu_seconds(child.pid) > 0
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()


def test_a_bridge_that_falls_behind_is_a_figure_not_the_end_of_the_run() -> None:
    # The SDK peer's thread per payment falls behind at 1,000 events/s on a small machine: the
    # run records how many it received, as an error of its result, and goes on.
    from bridge.bench.child import Progress
    from bridge.bench.main import Bench
    from bridge.bench.settings import settings_from_args

    bench = Bench(settings_from_args(argparse.Namespace(quick=True)), Progress())
    bench._check_alive = lambda: None  # type: ignore[method-assign]  # no children here
    arrived = iter(range(0, 1000, 10))
    assert bench._drained(lambda: next(arrived), 500, 0.5, "driven events") < 500
    assert bench.result.errors[-1].startswith("fell behind: ")
    assert "of 500 driven events received 0 s after" in bench.result.errors[-1]
    assert bench._drained(lambda: 500, 500, 0.5, "driven events") == 500
    assert len(bench.result.errors) == 1
    bench.tmp.rmdir()
