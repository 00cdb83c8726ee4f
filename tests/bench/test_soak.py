"""``pos-bridge bench --soak``: its arithmetic, and a tiny soak over real processes (a "minute"
of a few seconds) that reports every field, loses no payment and keeps the daemon's
structures bounded while hostile input with new ids keeps coming. Its slope is not asserted:
figures live in the bench, not the tests."""

from __future__ import annotations

import random

import pytest

from bridge.bench.soak import (
    TERMINALS,
    SoakReport,
    per_window,
    run_soak,
    slope_per_hour,
    table,
    unknown_terminal_command,
)


def test_the_slope_is_least_squares_in_mb_per_hour() -> None:
    assert slope_per_hour([(0.0, 10.0), (1.0, 11.0), (2.0, 12.0)]) == pytest.approx(60.0)
    assert slope_per_hour([(5.0, 80.0), (6.0, 79.0), (7.0, 81.0), (8.0, 80.0)]) == (
        pytest.approx(12.0)
    )
    assert slope_per_hour([(1.0, 5.0)]) is None
    assert slope_per_hour([(1.0, 5.0), (1.0, 6.0)]) is None


def test_leases_lost_are_counted_per_ten_minutes() -> None:
    assert per_window([0.5, 9.9, 10.0, 24.0], 25.0) == [2, 1, 1]
    assert per_window([], 15.0) == [0, 0]
    assert per_window([3.0], 0.5) == [1]


def test_every_hostile_command_names_a_new_terminal() -> None:
    rng = random.Random(1)
    names = {unknown_terminal_command(rng, n)[b"command"] for n in range(100)}
    assert len(names) == 100


def test_a_lost_payment_or_a_dead_daemon_fails_the_soak() -> None:
    assert SoakReport(1, 0.3, payments_sent=5).ok
    assert not SoakReport(1, 0.3, payments_sent=5, payments_lost=1).ok
    assert not SoakReport(1, 0.3, payments_sent=5, daemon_exited=True).ok
    assert not SoakReport(1, 0.3).ok  # nothing was paid: nothing was measured


def test_a_tiny_soak_reports_everything_and_loses_nothing() -> None:
    report = run_soak(1.5, unit=8.0, seed=2, quiet=True)
    assert report.ok, table(report)
    assert report.payments_lost == 0 and report.payments_sent >= 8
    assert report.payments_completed + report.payments_other_final == report.payments_sent
    assert report.hostile_commands >= 160 and report.hostile_webhooks >= 40
    assert len(report.rss_mb) >= 8 and all(mb > 10 for _t, mb in report.rss_mb)
    assert len(report.gc_objects) >= 2 and report.top_types_start and report.top_types_end
    assert report.leases_lost_per_10_min == [0]
    assert report.rss_slope_mb_per_hour is not None
    # a quarter of the hostile commands name a terminal, order and command never seen before:
    # nothing of the daemon's grows with them
    sizes = report.sizes_end
    assert report.hostile_commands // 4 > 40
    assert sizes["metric_series"] < 200  # label values from fixed sets, not from the ids
    assert sizes["sessions_crashed"] == 0
    assert sizes["leases_held"] <= len(TERMINALS) and sizes["sessions_running"] <= len(TERMINALS)
    assert "RSS slope" in table(report)
