"""The simulator as the bench runs it: its own process, quiet logs, a deep listen backlog.

    python -m bridge.bench.simproc [--host H] [--port P]

Prints the base URL (``http://H:P/v1/json/``) on stdout once it listens, like ``pos-bridge
simulate``; runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import sys

from bridge import sockets
from bridge.bench.procs import raise_nofile
from bridge.simulator.app import Simulator
from bridge.simulator.server import serve_foreground

BACKLOG = 8192  # the kernel caps it at net.core.somaxconn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    raise_nofile()
    sock = sockets.bind(args.host, args.port, backlog=BACKLOG)
    sock.set_inheritable(True)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(f"http://{args.host}:{sock.getsockname()[1]}/v1/json/", flush=True)
    serve_foreground(Simulator(), sock, log_level="warning", access_log=False, backlog=BACKLOG)


if __name__ == "__main__":
    main()
