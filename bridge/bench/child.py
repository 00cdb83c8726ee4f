"""The bench's process plumbing: children with line-based stdin/stdout, waiting, progress."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bridge.processes import stop_process


class Progress:
    """One line on stderr: rewritten in place on a terminal, else printed every few seconds."""

    def __init__(self, quiet: bool = False) -> None:
        self.tty = sys.stderr.isatty()
        self.quiet = quiet
        self._last = 0.0
        self._shown = False

    def __call__(self, text: str, force: bool = False) -> None:
        if self.quiet:
            return
        if self.tty:
            sys.stderr.write("\r\x1b[K" + text)
            sys.stderr.flush()
            self._shown = True
        elif force or time.monotonic() - self._last >= 5.0:
            self._last = time.monotonic()
            print(text, file=sys.stderr, flush=True)

    def done(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            sys.stderr.write("\r\x1b[K" + text + "\n")
            sys.stderr.flush()
        else:
            print(text, file=sys.stderr, flush=True)


def wait_for(
    pred: Callable[[], bool],
    timeout: float,
    what: str,
    tick: float = 0.1,
    on_tick: Callable[[], None] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        if on_tick:
            on_tick()
        time.sleep(tick)


class BenchError(Exception):
    pass


class Child:
    """A child process with line-based stdin/stdout, stderr to a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        logdir: Path,
        *,
        stdin: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        """``env``: variables set for the child on top of this process's environment."""
        self.name = name
        self.log_path = logdir / f"{name}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed below, kept by the child
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env={**os.environ, **env} if env else None,
        )
        log.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise BenchError(f"{self.name}: no answer within {timeout:.0f} s ({self.tail()})")
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"{self.name} exited ({self.tail()})")
        return line.strip()

    def ask(self, command: str, timeout: float = 30.0) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.readline(timeout)

    def tail(self, n: int = 600) -> str:
        try:
            text = self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""
        return " ".join(text.split())

    def stop(self, timeout: float = 15.0) -> None:
        stop_process(self.proc, timeout)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
