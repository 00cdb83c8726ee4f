"""``pos-bridge bench`` runs end to end and its numbers agree with each other.

No timing is asserted: only that every event sent was received and the report is complete.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

import pytest

from bridge.simulator.bench import is_driven, next_status


def test_driven_terminals_and_status_alternation() -> None:
    assert is_driven("SIM-BENCH-00042") and is_driven("sim-bench")
    assert not is_driven("SIM-BENCHX-1") and not is_driven("SIM-APPROVE-01")

    class _Order:
        status = "initialized"  # as a new order is

    o = _Order()
    assert next_status(o) == "declined"  # type: ignore[arg-type]
    o.status = "declined"
    assert next_status(o) == "initialized"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("transport", "tls"), [("sse", False), ("websocket", False), ("sse", True)]
)
def test_bench_runs_and_reports_consistent_numbers(transport: str, tls: bool) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge.cli",
            "bench",
            *(["--tls"] if tls else []),
            "--transport",
            transport,
            "--streams",
            "4",
            "--rate",
            "20",
            "--duration",
            "1.5",
            "--baseline-duration",
            "1",
            "--hold",
            "0.5",
            "--log-level",
            "warning",
            "--json",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    res = json.loads(proc.stdout)
    assert res["ok"] is True and res["errors"] == []
    assert res["settings"]["tls"] is tls
    assert res["events_lost"] == res["events_duplicated"] == res["events_unexpected"] == 0
    # Each received event is a send's or the status the opening GET published (one per order).
    assert res["events_received"] == res["events_sent"] + res["events_unprompted"]
    assert res["events_unprompted"] <= 4
    assert res["streams_held"] == res["streams_requested"] == 4
    assert res["streams_by_transport"] == {transport: 4}
    assert res["events_sent"] == res["drive_events"] + res["final_events"] + res["baseline_events"]
    assert res["final_events"] == 4
    # from the first pay sent to the last stream the simulator saw open
    assert 0 < res["open_seconds"] < 60
    assert res["payments_opened_per_s"] == pytest.approx(4 / res["open_seconds"])
    for name in ("bridge", "baseline", "added", "final (bridge)"):
        assert {"p50", "p90", "p99", "max"} <= set(res["latency_ms"][name])
    assert set(res["cpu_ms_per_payment"]) == {
        "open",
        "hold_per_minute",
        "event",
        "close",
        "payment",
    }
    for key in (
        "daemon_rss_before_mb",
        "daemon_rss_streams_mb",
        "daemon_kb_per_stream",
        "daemon_cpu_s_per_1000_events",
        "drive_events_per_s",
        "implied_payments_per_s",
    ):
        assert isinstance(res[key], (int, float)), key
    assert set(res["cpu_while_driven"]) == {"daemon", "simulator", "redis", "tills"}


def test_tls_is_the_load_bench_s_only() -> None:
    from bridge.bench.command import bench_command
    from bridge.cli import build_parser
    from bridge.errors import UserError

    args = build_parser().parse_args(["bench", "--tls", "--fuzz"])
    with pytest.raises(UserError, match="--tls runs the load bench over TLS; not with --fuzz"):
        bench_command(args)


def test_the_report_labels_a_tls_run() -> None:
    from bridge.bench.report import Result, table
    from bridge.bench.settings import Settings

    plain, tls = (Result(settings=asdict(Settings(tls=t))) for t in (False, True))
    assert "over TLS" not in table(plain)
    assert table(tls).startswith("pos-bridge bench: sse over TLS (HTTPS/WSS")
