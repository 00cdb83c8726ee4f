"""``pos-bridge run`` as the bench starts it, with the garbage collector as asked.

    python -m bridge.bench.daemonproc --gc {default,freeze} -- run --config PATH

``default`` is exactly ``pos-bridge run``. ``freeze`` imports what the daemon runs on, then
``gc.collect(); gc.freeze()`` before it starts, so the long-lived start-up heap (modules,
pydantic schemas, structlog, httpx, redis) is left out of every later collection. Either way,
every collection that takes 5 ms or more is reported on stderr as one JSON line
(``{"event": "bench.gc_pause", ...}``), so a latency tail can be told apart from GC.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from typing import Any

PAUSE_REPORT_S = 0.005


def _watch_gc() -> None:
    started = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        took = time.perf_counter() - started[0]
        if took >= PAUSE_REPORT_S:
            sys.stderr.write(
                json.dumps(
                    {
                        "event": "bench.gc_pause",
                        "generation": info.get("generation"),
                        "ms": round(took * 1000, 2),
                        "collected": info.get("collected"),
                    }
                )
                + "\n"
            )

    gc.callbacks.append(callback)


def main() -> None:
    argv = sys.argv[1:]
    mode = "default"
    if argv[:1] == ["--gc"]:
        mode, argv = argv[1], argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    from bridge import cli

    if mode == "freeze":
        import bridge.daemon.main  # noqa: F401 - the daemon's whole import graph

        gc.collect()
        gc.freeze()
    _watch_gc()
    sys.exit(cli.main(argv))


if __name__ == "__main__":
    main()
