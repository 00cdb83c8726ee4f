"""What the daemon holds in memory, for ``GET /memory`` on ``[http].listen``, and how glibc's
allocator is told to give large buffers back.

A leak shows as a Python type whose count only grows (``pos-bridge bench --soak`` reads this
every minute). The report names types and counts only, never an object's content, so nothing a
till or MultiSafepay sent (nor a secret) can reach it. Counting walks every object the garbage
collector tracks (about 10 ms per 100,000 objects, on the event loop), so a report is computed
at most once per ``MIN_INTERVAL`` seconds: a scraper asking more often gets the last one again.

With ``$POS_BRIDGE_TRACEMALLOC`` set to a number of frames (1-25; unset or 0: off) the daemon
runs under :mod:`tracemalloc` from its start, and every report adds ``tracemalloc``: the bytes
Python has allocated and still holds (``traced_bytes``; flat while RSS grows means the
allocator, not Python, keeps the memory) and the ``TRACE_TOP`` source lines whose held memory
grew most since the first report (file and line numbers only, never content). Tracing costs
CPU and about 60 bytes per live block: for a leak hunt (``pos-bridge bench --soak``), not for
production.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from typing import Any

#: Seconds between two counts, at least (a report asked for sooner is the previous one).
MIN_INTERVAL = 5.0
#: Types named in a report, the most numerous first.
TOP_TYPES = 25

_PAGE = os.sysconf("SC_PAGE_SIZE")

#: The environment variable that turns tracing on: frames kept per allocation.
TRACEMALLOC_ENV = "POS_BRIDGE_TRACEMALLOC"
MAX_TRACE_FRAMES = 25
#: Source lines named in a report's ``tracemalloc.top_growth``.
TRACE_TOP = 15

#: glibc's ``mallopt`` parameter (``<malloc.h>``): blocks at least this large get their own
#: ``mmap`` and go back to the system when freed.
M_MMAP_THRESHOLD = -3
#: glibc's default threshold. Set explicitly, it stays put: left to itself, glibc raises it
#: (up to 32 MB on 64-bit) each time a mapped block is freed, so after one hostile 1 MB command
#: every later large buffer (a 200 KB webhook body, a 70 KB command) comes from the heap
#: instead, where freed space is kept by the process: about 15 MB of resident memory kept
#: after the first few thousand hostile inputs of ``pos-bridge bench --fuzz``, never used again.
MMAP_THRESHOLD = 128 * 1024


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold at ``threshold`` bytes; False where there is no glibc
    ``mallopt`` (musl, macOS): nothing changes there."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    return mallopt is not None and mallopt(M_MMAP_THRESHOLD, threshold) == 1


def rss_bytes() -> int:
    """This process's resident set size (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def trace_frames(environ: dict[str, str] | None = None) -> int:
    """Frames per allocation ``$POS_BRIDGE_TRACEMALLOC`` asks for (0: no tracing); a value that
    is not a number is off, a larger one is capped at ``MAX_TRACE_FRAMES``."""
    value = (os.environ if environ is None else environ).get(TRACEMALLOC_ENV, "").strip()
    return min(int(value), MAX_TRACE_FRAMES) if value.isdigit() else 0


def start_tracing(environ: dict[str, str] | None = None) -> bool:
    """Start :mod:`tracemalloc` if ``$POS_BRIDGE_TRACEMALLOC`` asks for it; True if it runs."""
    frames = trace_frames(environ)
    if frames > 0 and not tracemalloc.is_tracing():
        tracemalloc.start(frames)
    return tracemalloc.is_tracing()


def _snapshot() -> tracemalloc.Snapshot:
    # this module's own snapshots and the tracer's bookkeeping are not the daemon's memory
    return tracemalloc.take_snapshot().filter_traces(
        [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, __file__),  # this hook's own tables and reports
            tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
        ]
    )


#: Per source line (``file:line`` of the innermost frame): (bytes held, blocks held).
LineTotals = dict[str, tuple[int, int]]


def line_totals(snapshot: tracemalloc.Snapshot) -> LineTotals:
    """What each source line holds in ``snapshot``: a small table, where a snapshot kept for
    later would hold a tuple per live block."""
    out: LineTotals = {}
    for stat in snapshot.statistics("lineno"):
        frame = stat.traceback[0]
        out[f"{frame.filename}:{frame.lineno}"] = (stat.size, stat.count)
    return out


def growth(first: LineTotals, now: LineTotals, top: int = TRACE_TOP) -> list[list[Any]]:
    """The ``top`` source lines whose held memory grew most from ``first`` to ``now``:
    ``[file:line, bytes grown, blocks grown, bytes held now]``."""
    rows = [
        (where, size - first.get(where, (0, 0))[0], count - first.get(where, (0, 0))[1], size)
        for where, (size, count) in now.items()
    ]
    rows.sort(key=lambda row: row[1], reverse=True)
    return [list(row) for row in rows[:top]]


def count_types(objects: list[Any], top: int = TOP_TYPES) -> list[tuple[str, int]]:
    """The ``top`` most numerous type names among ``objects``, with their counts."""
    counts = Counter(type(o).__qualname__ for o in objects)
    return counts.most_common(top)


class MemoryReport:
    """The last report, recomputed when older than ``min_interval``. ``sizes`` names the
    bounded structures of the daemon (their current lengths), beside the counts."""

    def __init__(
        self,
        sizes: Callable[[], dict[str, int]] = dict,
        *,
        min_interval: float = MIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sizes = sizes
        self._min_interval = min_interval
        self._clock = clock
        self._last: dict[str, Any] | None = None
        self._at = 0.0
        self._first_lines: LineTotals | None = None

    def get(self) -> dict[str, Any]:
        now = self._clock()
        if self._last is None or now - self._at >= self._min_interval:
            self._last, self._at = self._compute(), now
        return self._last

    def _compute(self) -> dict[str, Any]:
        objects = gc.get_objects()
        try:
            top = count_types(objects)
            total = len(objects)
        finally:
            del objects  # not kept alive (nor counted) a moment longer than needed
        report = {
            "rss_bytes": rss_bytes(),
            "gc_objects": total,
            "gc_counts": list(gc.get_count()),
            "top_types": [[name, n] for name, n in top],
            "sizes": self._sizes(),
            "at": time.time(),
        }
        if tracemalloc.is_tracing():
            report["tracemalloc"] = self._traced()
        return report

    def _traced(self) -> dict[str, Any]:
        traced, peak = tracemalloc.get_traced_memory()
        lines = line_totals(_snapshot())
        if self._first_lines is None:
            self._first_lines = lines
        return {
            "traced_bytes": traced,
            "peak_bytes": peak,
            "top_growth": growth(self._first_lines, lines),
        }
