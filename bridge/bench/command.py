"""``pos-bridge bench``: which bench the flags ask for (imported lazily by the CLI)."""

from __future__ import annotations

import argparse

from bridge.errors import UserError


def bench_command(args: argparse.Namespace) -> int:
    if getattr(args, "peer", False):
        if getattr(args, "faults", False) or getattr(args, "fuzz", False):
            raise UserError("bench: --peer compares load figures; not with --faults or --fuzz")
        from bridge.bench.peer import peer_command

        return peer_command(args)
    from bridge.bench.main import bench_command as load_bench

    return load_bench(args)
