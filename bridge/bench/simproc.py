"""The simulator as the bench runs it: its own process, quiet logs, a deep listen backlog.

    python -m bridge.bench.simproc [--host H] [--port P] [--tls-cert PEM --tls-key PEM]

Prints the base URL (``http://H:P/v1/json/``, ``https://`` with the TLS files) on stdout once
it listens, like ``pos-bridge simulate``; runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bridge import sockets
from bridge.bench.procs import raise_nofile
from bridge.simulator.app import Simulator
from bridge.simulator.certs import ServerCert
from bridge.simulator.server import serve_foreground

BACKLOG = 8192  # the kernel caps it at net.core.somaxconn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls-cert", type=Path, help="serve HTTPS/WSS with this certificate (PEM)")
    ap.add_argument("--tls-key", type=Path, help="and this key (PEM)")
    args = ap.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        ap.error("--tls-cert and --tls-key go together")
    tls = ServerCert(args.tls_cert, args.tls_key) if args.tls_cert else None
    raise_nofile()
    sock = sockets.bind(args.host, args.port, backlog=BACKLOG)
    sock.set_inheritable(True)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    scheme = "https" if tls else "http"
    print(f"{scheme}://{args.host}:{sock.getsockname()[1]}/v1/json/", flush=True)
    serve_foreground(
        Simulator(), sock, log_level="warning", access_log=False, backlog=BACKLOG, tls=tls
    )


if __name__ == "__main__":
    main()
