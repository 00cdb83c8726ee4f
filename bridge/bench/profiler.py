"""``pos-bridge bench --profile FILE``: the daemon recorded with py-spy during the drive."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path


def start_profiler(out: str | None, pid: int, notes: list[str]) -> subprocess.Popen[bytes] | None:
    if not out:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.path.exists(spy):
        notes.append("--profile: py-spy not found (pip install py-spy)")
        return None
    fmt = (
        "speedscope" if out.endswith(".json") else ("raw" if out.endswith(".txt") else "flamegraph")
    )
    return subprocess.Popen(
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


def stop_profiler(proc: subprocess.Popen[bytes] | None, out: str | None, notes: list[str]) -> None:
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    notes.append(f"daemon profile (drive phase): {out}")
