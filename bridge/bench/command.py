"""``pos-bridge bench``: which bench the flags ask for (imported lazily by the CLI)."""

from __future__ import annotations

import argparse

from bridge.errors import UserError

#: The benches that are not the load bench; --tls is the load bench's (and --peer's) only.
OTHER_BENCHES = ("faults", "fuzz", "soak", "redis_failover", "cluster_failover")


def bench_command(args: argparse.Namespace) -> int:
    if getattr(args, "tls", False):
        other = [name for name in OTHER_BENCHES if getattr(args, name, None) not in (None, False)]
        if other:
            flag = "--" + other[0].replace("_", "-")
            raise UserError(f"bench: --tls runs the load bench over TLS; not with {flag}")
    if getattr(args, "peer", False):
        if getattr(args, "faults", False) or getattr(args, "fuzz", False):
            raise UserError("bench: --peer compares load figures; not with --faults or --fuzz")
        from bridge.bench.peer import peer_command

        return peer_command(args)
    from bridge.bench.main import bench_command as load_bench

    return load_bench(args)
