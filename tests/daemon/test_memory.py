"""What the daemon keeps is bounded: its memory report (``/memory``) is cheap, names types
only, and the structures hostile input could grow stay within their documented limits."""

from __future__ import annotations

import gc
import tracemalloc

from bridge import logs, metrics
from bridge.daemon.memory import (
    MAX_TRACE_FRAMES,
    TRACEMALLOC_ENV,
    MemoryReport,
    count_types,
    fix_mmap_threshold,
    growth,
    start_tracing,
    trace_frames,
)


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


def test_tracing_is_asked_for_by_a_number_of_frames() -> None:
    assert trace_frames({}) == 0
    assert trace_frames({TRACEMALLOC_ENV: "0"}) == 0
    assert trace_frames({TRACEMALLOC_ENV: "yes"}) == 0  # not a number: off
    assert trace_frames({TRACEMALLOC_ENV: "-3"}) == 0
    assert trace_frames({TRACEMALLOC_ENV: " 5 "}) == 5
    assert trace_frames({TRACEMALLOC_ENV: "1000"}) == MAX_TRACE_FRAMES
    assert start_tracing({}) is tracemalloc.is_tracing()  # asked for nothing: nothing changes


def test_a_traced_report_names_the_lines_that_grew() -> None:
    started_here = not tracemalloc.is_tracing()
    if started_here:
        assert start_tracing({TRACEMALLOC_ENV: "1"})
    kept: list[str] = []
    try:
        report = MemoryReport(min_interval=0.0)
        assert report.get()["tracemalloc"]["traced_bytes"] > 0
        kept += ["sk-very-secret-value" * 20 + str(n) for n in range(2000)]  # ~800 KB held
        grown = report.get()["tracemalloc"]
    finally:
        if started_here:
            tracemalloc.stop()
    where, size, count, _held = grown["top_growth"][0]
    assert where.rsplit(":", 1)[0].endswith("test_memory.py")  # a file and a line number
    assert size > 500_000 and count >= 2000
    assert "sk-very-secret-value" not in repr(grown)
    assert len(kept) == 2000


def test_an_untraced_report_says_nothing_of_tracing() -> None:
    if tracemalloc.is_tracing():  # the suite run under tracing: nothing to check here
        return
    assert "tracemalloc" not in MemoryReport(min_interval=0.0).get()


def test_growth_ranks_the_lines_by_bytes_grown() -> None:
    first = {"a.py:1": (100, 1), "b.py:2": (500, 5)}
    now = {"a.py:1": (1100, 11), "b.py:2": (400, 4), "c.py:3": (300, 3)}
    assert growth(first, now) == [
        ["a.py:1", 1000, 10, 1100],
        ["c.py:3", 300, 3, 300],  # new since the first report
        ["b.py:2", -100, -1, 400],
    ]
    assert len(growth(first, now, top=1)) == 1
