"""``pos-bridge simulate``: run the simulator in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import sys

from bridge.errors import UserError
from bridge.simulator.app import Simulator
from bridge.simulator.server import bind, serve_foreground
from bridge.simulator.variants import VariantError, Variants


def simulate_command(args: argparse.Namespace) -> int:
    try:
        variants = Variants.parse(list(args.variant or []))
    except VariantError as exc:
        raise UserError(f"--variant: {exc}") from None
    if not args.speed or args.speed <= 0:
        raise UserError("--speed must be > 0")
    if args.webhook_url and not args.webhook_url.startswith(("http://", "https://")):
        raise UserError("--webhook-url must be an http:// or https:// URL")
    keys = [k.strip() for k in (args.api_key or [])]
    if any(not k for k in keys):
        raise UserError("--api-key must not be empty")
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        raise UserError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from None

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    simulator = Simulator(
        speed=args.speed, api_keys=keys, webhook_url=args.webhook_url, variants=variants
    )
    host = f"[{args.host}]" if ":" in args.host else args.host
    port = sock.getsockname()[1]
    print(f"MultiSafepay simulator: http://{host}:{port}/v1/json/", flush=True)
    print(f"Terminals page: http://{host}:{port}/ (play the customer there)", flush=True)
    serve_foreground(simulator, sock, log_level="info", access_log=True)
    return 0
