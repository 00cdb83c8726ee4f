"""``pos-bridge bench --fuzz``: its generators are seeded and hostile, its verdict strict, and a
short run over real processes comes out clean (the long run is not part of the tests)."""

from __future__ import annotations

import random

from bridge.bench.fuzz import FuzzReport, hostile_command, run_fuzz
from bridge.bench.hostile import MODES
from bridge.core.commands import InvalidCommand, parse_command


def test_the_same_seed_sends_the_same_commands() -> None:
    first = [hostile_command(random.Random(5), f"fz-{i}") for i in range(50)]
    again = [hostile_command(random.Random(5), f"fz-{i}") for i in range(50)]
    assert first == again


def test_the_commands_are_hostile() -> None:
    rng = random.Random(1)
    entries = [hostile_command(rng, f"fz-{i}") for i in range(500)]
    refused = 0
    for fields in entries:
        try:
            parse_command(fields.get(b"command", b""))
        except InvalidCommand:
            refused += 1
    assert refused > 400
    assert any(b"command" not in fields for fields in entries)  # bytes as field names
    assert any(len(fields.get(b"command", b"")) > 65536 for fields in entries)


def test_any_trouble_makes_the_run_fail() -> None:
    assert FuzzReport(seed=1, valid_pay_after="completed").clean
    assert not FuzzReport(seed=1, valid_pay_after="no final").clean
    assert not FuzzReport(seed=1, valid_pay_after="completed", commands_unanswered=1).clean
    assert not FuzzReport(seed=1, valid_pay_after="completed", crash_lines=1).clean
    assert not FuzzReport(seed=1, valid_pay_after="completed", payments_never_ended=1).clean


def test_a_short_run_is_clean() -> None:
    payments = len(MODES)  # one to each misbehaviour of the hostile upstream
    report = run_fuzz(commands=150, notifications=80, payments=payments, seed=3)
    assert report.commands + report.commands_skipped == 150
    assert report.notifications == 80 and report.upstream_payments == payments
    assert report.clean, report
    assert report.rss_before_mb and report.rss_after_mb
