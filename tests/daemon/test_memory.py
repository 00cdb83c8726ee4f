"""What the daemon keeps is bounded: its memory report (``/memory``) is cheap, names types
only, and the structures hostile input could grow stay within their documented limits."""

from __future__ import annotations

import gc

from bridge import logs, metrics
from bridge.daemon.memory import MemoryReport, count_types, fix_mmap_threshold


def test_the_report_is_counted_at_most_once_per_interval() -> None:
    now = [100.0]
    calls = []

    def sizes() -> dict[str, int]:
        calls.append(now[0])
        return {"things": len(calls)}

    report = MemoryReport(sizes, min_interval=5.0, clock=lambda: now[0])
    first = report.get()
    now[0] += 4.9
    assert report.get() is first  # asked again too soon: the same report
    now[0] += 0.2
    second = report.get()
    assert second is not first and second["sizes"] == {"things": 2}
    assert len(calls) == 2


def test_the_report_names_types_and_counts_only() -> None:
    secret = {"api_key": "sk-very-secret-value"}  # a tracked object with a secret inside
    report = MemoryReport(min_interval=0.0).get()
    assert report["gc_objects"] > 1000 and report["rss_bytes"] > 1_000_000
    assert all(isinstance(n, str) and isinstance(c, int) for n, c in report["top_types"])
    assert "sk-very-secret-value" not in repr(report)
    assert secret  # kept alive through the count


def test_types_are_counted() -> None:
    class Marker:
        pass

    objects = [Marker() for _ in range(7)] + [1, 2]
    assert dict(count_types(objects))["test_types_are_counted.<locals>.Marker"] == 7
    assert len(count_types(gc.get_objects(), top=5)) == 5


def test_the_mmap_threshold_is_pinned_where_glibc_is() -> None:
    # this host runs glibc (the daemon's Debian target); elsewhere the call is a no-op
    assert fix_mmap_threshold() is True


def test_hostile_command_types_add_no_metric_series() -> None:
    before = metrics.series()
    for n in range(500):
        for kind in (f"type-{n}", "p" * (n + 100)):
            label = metrics.command_type({"command": f'{{"type": "{kind}"}}'})
            metrics.COMMANDS.labels(label, "handled").inc()
    # at most the one ("invalid", "handled") child: its _total and _created samples
    assert metrics.series() - before <= 2


def test_the_redaction_caches_stay_within_their_size() -> None:
    for n in range(10_000):
        logs.redact_text(f"hostile-value-{n}-" + "x" * (n % 200))
        logs.redact({f"field-{n}": 1})
    sizes = logs.cache_sizes()
    assert sizes["log_redact_cache"] == 8192
    assert sizes["log_secret_name_cache"] == 4096
