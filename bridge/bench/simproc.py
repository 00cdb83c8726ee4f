"""The simulator as the bench runs it: its own process, quiet logs, a deep listen backlog.

    python -m bridge.bench.simproc [--host H] [--port P]

Prints the base URL (``http://H:P/v1/json/``) on stdout once it listens, like ``pos-bridge
simulate``; runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys

from bridge.bench.procs import raise_nofile
from bridge.simulator.app import Simulator
from bridge.simulator.server import make_server

BACKLOG = 8192  # the kernel caps it at net.core.somaxconn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    raise_nofile()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    simulator = Simulator()
    server = make_server(simulator, log_level="warning", access_log=False)
    server.config.backlog = BACKLOG
    print(f"http://{args.host}:{sock.getsockname()[1]}/v1/json/", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


if __name__ == "__main__":
    main()
