"""Stopping a child process started with :mod:`subprocess` (the private redis-servers, the
bench's simulator, daemon and tills): one routine, so every caller ends its children alike."""

from __future__ import annotations

import subprocess
from typing import Any


def stop_process(proc: subprocess.Popen[Any], timeout: float = 5.0) -> int:
    """SIGTERM (a clean shutdown), then SIGKILL if it has not exited within ``timeout``
    seconds; reaped either way. Its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
