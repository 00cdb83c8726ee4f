"""``pos-bridge bench --profile FILE``: the daemon recorded with py-spy, phase by phase.

The drive is recorded into ``FILE`` itself; the opening, the quiet hold and the finish into
files beside it named after the phase (``out.svg``: ``out-open.svg``, ``out-hold.svg``,
``out-close.svg``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: py-spy takes a moment to attach: a phase starts this much after its recording does.
ATTACH_SECONDS = 0.5


def phase_path(out: str, phase: str) -> str:
    """Where the recording of ``phase`` goes: ``out`` for the drive, else beside it."""
    if phase == "drive":
        return out
    path = Path(out)
    return str(path.with_name(f"{path.stem}-{phase}{path.suffix}"))


def start_profiler(out: str | None, pid: int, notes: list[str]) -> subprocess.Popen[bytes] | None:
    if not out:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.path.exists(spy):
        if not any(n.startswith("--profile") for n in notes):
            notes.append("--profile: py-spy not found (pip install py-spy)")
        return None
    fmt = (
        "speedscope" if out.endswith(".json") else ("raw" if out.endswith(".txt") else "flamegraph")
    )
    proc = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--output",
            out,
            "--format",
            fmt,
            "--rate",
            "250",
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(ATTACH_SECONDS)
    return proc


def stop_profiler(
    proc: subprocess.Popen[bytes] | None, out: str | None, notes: list[str], phase: str = "drive"
) -> None:
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    notes.append(f"daemon profile ({phase} phase): {out}")


@contextmanager
def profiling(out: str | None, phase: str, pid: int, notes: list[str]) -> Iterator[None]:
    """Record the daemon with py-spy while the block runs (nothing without ``out``)."""
    path = phase_path(out, phase) if out else None
    proc = start_profiler(path, pid, notes)
    try:
        yield
    finally:
        stop_profiler(proc, path, notes, phase)
