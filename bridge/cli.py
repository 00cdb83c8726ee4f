"""The ``pos-bridge`` command line.

Only argument parsing lives here; each subcommand's work is in the module that owns it and is
imported lazily, so ``pos-bridge --help`` stays fast and a till tool does not load the daemon.
A handler takes the parsed ``argparse.Namespace`` and returns the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from bridge.errors import UserError
from bridge.till.options import DEFAULT_PREFIX, DEFAULT_REDIS_URL

# subcommand -> "module:function"
HANDLERS = {
    "run": "bridge.daemon.main:run_command",
    "check-config": "bridge.config:check_config_command",
    "simulate": "bridge.simulator.cli:simulate_command",
    "demo": "bridge.till.demo:demo_command",
    "sandbox": "bridge.till.sandbox:sandbox_command",
    "pay": "bridge.till.receipt:pay_with_receipt_command",  # pay.pay_command, + --receipt
    "cancel": "bridge.till.pay:cancel_command",
    "refund": "bridge.till.pay:refund_command",
    "receipt": "bridge.till.receipt:receipt_command",
    "tail": "bridge.till.tail:tail_command",
    "schema": "bridge.till.schema:schema_command",
    "bench": "bridge.bench.command:bench_command",
}


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $POS_BRIDGE_CONFIG, else /etc/pos-bridge/config.toml)",
    )


def _add_redis(
    p: argparse.ArgumentParser, default_url: str | None = DEFAULT_REDIS_URL, *, cluster: bool = True
) -> None:
    p.add_argument(
        "--redis-url",
        default=default_url,
        metavar="URL",
        help=f"Redis to talk to (default: {default_url or 'a private redis-server'})",
    )
    p.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"key prefix (default: {DEFAULT_PREFIX})"
    )
    g = p.add_argument_group("Redis Sentinel, TLS and Cluster (as [redis] in the daemon's config)")
    g.add_argument(
        "--sentinel",
        action="append",
        metavar="HOST:PORT",
        help="a sentinel to ask where the master is (repeatable; --redis-url then gives only "
        "scheme, user, password and database; default: none, --redis-url is the node)",
    )
    g.add_argument(
        "--master-name", metavar="NAME", help="the master the sentinels monitor (default: none)"
    )
    g.add_argument(
        "--sentinel-username", metavar="USER", help="the sentinels' ACL user (default: none)"
    )
    g.add_argument(
        "--sentinel-password-env",
        metavar="VAR",
        help="environment variable holding the sentinels' password (default: none)",
    )
    g.add_argument(
        "--tls-ca-file",
        metavar="PEM",
        help="with rediss://: the CA of Redis's certificate (default: the system's CAs)",
    )
    g.add_argument(
        "--tls-cert-file",
        metavar="PEM",
        help="with rediss://: a client certificate (default: none)",
    )
    g.add_argument(
        "--tls-key-file", metavar="PEM", help="with rediss://: its private key (default: none)"
    )
    g.add_argument(
        "--wait-replicas",
        type=int,
        metavar="N",
        help="after sending, WAIT for N replicas (default: 1 with --sentinel, else 0)",
    )
    g.add_argument(
        "--wait-timeout",
        type=float,
        metavar="S",
        help="at most S seconds (default: 10)",
    )
    if not cluster:
        return
    g.add_argument(
        "--cluster",
        action="store_true",
        help="the Redis is a Redis Cluster (--redis-url: any node): keys in the cluster layout "
        "({prefix}:...), sharded pub/sub; not with --sentinel "
        "(default: a single Redis server)",
    )
    g.add_argument(
        "--retry-for",
        type=float,
        metavar="S",
        help="on a lost connection (a failover), keep retrying for up to S seconds, asking the "
        "sentinels for the master again (default: 60 with --sentinel or --cluster, 0 for a "
        "single node)",
    )


EXIT_CODES = (
    "Exit codes: 0 done (with --wait: the payment completed, the order was cancelled, the "
    "refund was made; without: the command was sent), 1 not done (it failed or the order "
    "ended otherwise), 2 nothing was sent (bad input, Redis unreachable), 3 no answer "
    "within --timeout (the outcome is unknown), 130 interrupted while waiting."
)


def _add_wait(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--wait", action="store_true", help=f"{what} (default: only send)")
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="with --wait: give up after S seconds (default: 600)",
    )


def _add_order_command(sub: Any, name: str, what: str) -> argparse.ArgumentParser:
    """A till tool that sends one command (pay, cancel, refund): Redis options, exit codes."""
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=what, description=f"Send a {name} command. {EXIT_CODES}"
    )
    _add_redis(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pos-bridge",
        description=(
            "Bridge MultiSafepay SmartPOS (cloud mode) payments to Redis: tills write commands "
            "to a Redis stream and read each terminal's events from Redis."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon")
    _add_config(p)
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N daemon processes under a supervisor, sharing the work through Redis; only "
        "worker 0 serves [http] and [webhook] (default: 1, the daemon itself)",
    )

    p = sub.add_parser(
        "check-config", help="validate a config file and print it with secrets masked"
    )
    _add_config(p)

    p = sub.add_parser("simulate", help="run the MultiSafepay cloud POS simulator")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="listen port (default: 8765)")
    p.add_argument("--webhook-url", metavar="URL", help="send signed webhooks to this URL")
    p.add_argument(
        "--speed", type=float, default=1.0, help="time factor: 10 makes payments 10x faster"
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="accept only this API key (repeatable; default: any non-empty key)",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="play an uncertain API detail one way (see README: simulator variants)",
    )

    p = sub.add_parser("demo", help="simulator + private Redis + daemon, one payment per scenario")
    _add_redis(p, default_url=None, cluster=False)  # the demo runs on one redis-server
    p.add_argument("--speed", type=float, default=20.0, help="simulator speed (default: 20)")

    p = sub.add_parser(
        "sandbox",
        help="simulator + private Redis + daemon, left running: integrate a till against it",
        description="The simulator, a private redis-server and the daemon, every simulated "
        "terminal configured (any SIM-<SCENARIO>-NN), running until Ctrl-C. Prints the Redis "
        "URL, the prefix, the simulator's URL and ready redis-cli / pos-bridge pay lines.",
    )
    p.add_argument("--redis-port", type=int, default=None, help="Redis port (default: a free port)")
    p.add_argument(
        "--simulator-port", type=int, default=0, help="simulator port (default: a free port)"
    )
    p.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"key prefix (default: {DEFAULT_PREFIX})"
    )
    p.add_argument(
        "--speed", type=float, default=1.0, help="simulator speed: 10 is 10x faster (default: 1)"
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="the daemon's log level (default: info)",
    )

    p = _add_order_command(sub, "pay", "what a till does: ask a terminal for a payment")
    p.add_argument("--terminal", required=True, help="terminal ID")
    p.add_argument("--amount", required=True, help="amount in currency units: 12.50 or 12,50")
    p.add_argument("--currency", default="EUR", help="ISO currency code (default: EUR)")
    p.add_argument("--order-id", help="order id (default: derived from the command id)")
    p.add_argument("--description", help="shown to the customer (default: none)")
    _add_wait(p, "print events until the payment's final one")
    p.add_argument(
        "--receipt",
        action="store_true",
        help="with --wait: after a completed payment, print its receipt (default: no receipt)",
    )
    p.add_argument(
        "--width", type=int, default=42, help="with --receipt: characters per line (default: 42)"
    )

    p = _add_order_command(sub, "cancel", "ask the bridge to cancel an order in flight")
    p.add_argument("--order-id", required=True, help="the order to cancel")
    p.add_argument("--terminal", help="terminal ID (default: read from the order's key)")
    _add_wait(p, "print events until the order's final one or the cancel's failure")

    p = _add_order_command(sub, "refund", "refund (part of) a completed order")
    p.add_argument("--order-id", required=True, help="the completed order to refund")
    p.add_argument(
        "--amount", help="amount in currency units: 12.50 or 12,50 (default: what remains)"
    )
    p.add_argument("--description", help="the refund's description (default: none)")
    p.add_argument("--terminal", help="terminal ID (default: read from the order's key)")
    _add_wait(p, "print events until the refund's order.refund or its failure")

    p = sub.add_parser(
        "receipt",
        help="ask the bridge for an order's receipt and print it",
        description=(
            "Sends a receipt command and prints the answer: on a terminal (or with --text) "
            "as plain text for a receipt printer, customer and merchant copy; piped, the "
            "order.receipt event as JSON. Exit 0 printed, 1 no receipt (the bridge says why), "
            "2 nothing sent, 3 no answer within --timeout."
        ),
    )
    _add_redis(p)
    p.add_argument("--order-id", required=True, help="the order whose receipt to print")
    p.add_argument("--terminal", help="terminal ID (default: read from the order's key)")
    p.add_argument("--width", type=int, default=42, help="characters per line (default: 42)")
    p.add_argument(
        "--text", action="store_true", help="plain text even when piped (default: JSON when piped)"
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="seconds to wait (default: 30)"
    )

    p = sub.add_parser("tail", help="print events as they arrive, catching up first")
    _add_redis(p)
    p.add_argument("--terminal", help="only this terminal (default: all terminals)")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--since", metavar="ID", help="catch up from this stream id (default: from now on)"
    )
    g.add_argument(
        "--from-start",
        action="store_true",
        help="catch up from the start of the stream (default: from now on)",
    )

    sub.add_parser("schema", help="print the JSON Schema of commands and events")

    p = sub.add_parser(
        "bench",
        help="the performance harness",
        description=(
            "Private redis-server, simulator, daemon and tills, each in its own process: opens "
            "N payments (N upstream streams held by the daemon), drives M status changes per "
            "second across them, and measures the time from the simulator's send to the tills' "
            "receipt against a baseline (the same transitions applied straight into Redis). "
            "Exit 0 when every event sent was received, 1 otherwise."
        ),
    )
    p.add_argument(
        "--transport",
        choices=["sse", "websocket"],
        default="sse",
        help="upstream stream transport (default: sse)",
    )
    p.add_argument(
        "--streams",
        "-n",
        type=int,
        metavar="N",
        help="concurrent payments, each an open upstream stream (default: 1000)",
    )
    p.add_argument(
        "--rate",
        "-m",
        type=float,
        metavar="M",
        help="status changes per second across the streams (default: 1000)",
    )
    p.add_argument("--duration", type=float, metavar="S", help="seconds of driving (default: 30)")
    p.add_argument(
        "--baseline-duration",
        type=float,
        metavar="S",
        help="seconds of the baseline (default: the duration, at most 30)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a preset that ends within a minute: 200 streams, 200/s, 10 s",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="the daemon's log level (default: info, as in production)",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        metavar="S",
        help="the daemon's polling of quiet orders (default: 10, the daemon's default; 0: off)",
    )
    p.add_argument(
        "--hold",
        type=float,
        metavar="S",
        help="seconds the opened payments are held quiet, to measure what holding costs "
        "(default: 30; --quick: 20)",
    )
    p.add_argument(
        "--no-enrich",
        action="store_true",
        help="run the daemon with enrich_final = false (no GET for the card details after a final)",
    )
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="record the daemon with py-spy during the drive (.svg, .json, .txt), and the "
        "opening, hold and finish beside it (FILE-open, FILE-hold, FILE-close; the peer's: "
        "FILE-peer...)",
    )
    p.add_argument("--keep", action="store_true", help="keep the logs and data of the run")
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run the daemon as `pos-bridge run --workers N`: CPU and memory are summed over "
        "the supervisor and its workers (default: 1)",
    )
    p.add_argument(
        "--peer",
        action="store_true",
        help="also run a naive bridge on MultiSafepay's official Python SDK (a thread per "
        "payment, redis-py) on the same simulator and load, and report both side by side; "
        "the SDK is installed from PyPI into its own virtualenv on first use",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="the simulator serves HTTPS/WSS with a throwaway local CA made for the run, which "
        "the daemon trusts through [multisafepay] ca_file (and the SDK peer through "
        "SSL_CERT_FILE/REQUESTS_CA_BUNDLE): the figures with TLS",
    )
    p.add_argument(
        "--daemon-gc",
        choices=["default", "freeze"],
        default="default",
        help="freeze: gc.freeze() the daemon's start-up heap (an experiment)",
    )
    p.add_argument(
        "--fuzz",
        action="store_true",
        help="instead: hostile commands, notifications and upstream messages against real "
        "daemon processes; reports crashes, unanswered inputs, payments never ended, memory",
    )
    p.add_argument(
        "--fuzz-commands", type=int, default=20000, metavar="N", help="with --fuzz (default: 20000)"
    )
    p.add_argument(
        "--fuzz-notifications",
        type=int,
        default=10000,
        metavar="N",
        help="with --fuzz (default: 10000)",
    )
    p.add_argument(
        "--fuzz-payments",
        type=int,
        default=20,
        metavar="N",
        help="with --fuzz: hostile-upstream payments (default: 20)",
    )
    p.add_argument(
        "--seed", type=int, default=1, help="with --fuzz or --soak: the random seed (default: 1)"
    )
    p.add_argument(
        "--soak",
        type=float,
        metavar="MINUTES",
        help="instead: steady payments with hostile commands and webhooks mixed in, for MINUTES; "
        "reports the daemon's RSS and Python objects over time, its RSS slope after a warm-up "
        "(MB/hour) and leases lost per 10 minutes; exit 1 if a payment was lost",
    )
    p.add_argument("--soak-unit", type=float, help=argparse.SUPPRESS)  # seconds per minute (tests)
    p.add_argument(
        "--faults",
        action="store_true",
        help="instead: payments on real processes while faults are injected (kill -9, "
        "Redis restart, stream drops, takeover; as root: Redis black-holed, 30%% packet loss "
        "and half-open streams to the upstream); audits every final",
    )
    p.add_argument(
        "--redis-failover",
        action="store_true",
        help="instead: payments on a Redis Sentinel deployment (master, replica, 3 sentinels) "
        "whose master is failed over (SENTINEL FAILOVER, then kill -9) every round; reports "
        "finals lost, duplicates and how long a till could not send (--rounds, --terminals)",
    )
    p.add_argument(
        "--cluster-failover",
        action="store_true",
        help="instead: payments on a Redis Cluster (3 masters, 3 replicas) whose master of the "
        "bridge's slot is killed (kill -9) every round; reports finals lost, duplicates and "
        "the longest silence (--rounds, --terminals)",
    )
    p.add_argument(
        "--scenario",
        action="append",
        choices=["kill", "redis", "drop", "takeover"]
        + ["blackhole-redis", "loss-upstream", "halfopen-upstream", "halfopen-bus"],
        help="with --faults: only these scenarios (repeatable; default: all; the last four, "
        "network faults, need root, ip and nft)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        metavar="R",
        help="with --faults: rounds per scenario, one payment per terminal (default: 3)",
    )
    p.add_argument(
        "--terminals",
        type=int,
        default=12,
        metavar="T",
        help="with --faults: terminals, so payments per round (default: 12)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    module_name, func_name = HANDLERS[args.command].split(":")
    try:
        handler = getattr(importlib.import_module(module_name), func_name)
        return int(handler(args) or 0)
    except UserError as exc:
        print(f"pos-bridge: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
