"""``pos-bridge sandbox`` as a process: what it prints works as printed, any simulated
terminal works, Ctrl-C stops it cleanly."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading

from bridge.cli import main
from bridge.redis.server import free_port
from bridge.till.sandbox import simulated_terminals


def test_every_simulated_terminal_is_configured() -> None:
    terminals = set(simulated_terminals())
    assert {"SIM-APPROVE-01", "SIM-APPROVE-99", "SIM-DECLINE-00", "SIM-RETRY-42"} <= terminals


def test_the_sandbox_runs_until_ctrl_c_and_its_pay_line_works() -> None:
    redis_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "sandbox", "--redis-port", str(redis_port)]
        + ["--prefix", "box", "--speed", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "pos-bridge pay " in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(60), "\n".join(lines)
        text = "\n".join(lines)
        assert f"redis://127.0.0.1:{redis_port}/0" in text and "(prefix box)" in text
        assert "simulator:  http://127.0.0.1:" in text
        assert f"redis-cli -p {redis_port} SUBSCRIBE box:terminal:SIM-APPROVE-01" in text
        pay_line = next(x for x in lines if "pos-bridge pay " in x)
        argv = shlex.split(pay_line)[1:]
        assert "--prefix" in argv and "box" in argv
        assert main(argv) == 0  # the printed line, as printed: the payment completes
        other = [a if a != "SIM-APPROVE-01" else "SIM-APPROVE-57" for a in argv]
        assert main(other) == 0  # any SIM-<SCENARIO>-NN
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        reader.join(5)
    assert code == 0, "\n".join(lines)
    assert lines[-1] == "pos-bridge sandbox: stopped"
