"""Micro-benchmark of log redaction: what masking secrets costs per logged event.

    python -m bridge.bench.redaction [--calls N]

Redacts a typical event (short strings: names, statuses, IDs; no secret in it) with two keys
registered, as every log line of the daemon is. Reports microseconds per call, with the
string cache warm (the common case) and cleared before each call (the worst case for short
strings). The tests assert what makes the common case cheap (the cache answers), not a time.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bridge import logs

EVENT: dict[str, Any] = {
    "event": "order.status",
    "order_id": "till7-000123",
    "terminal_id": "0000004D",
    "status": "initialized",
    "amount": 1250,
    "currency": "EUR",
    "source": "stream",
    "details": {"card": "VISA", "last4": "1234"},
}


def per_call_us(calls: int, *, warm: bool) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        if not warm:
            logs._redact_short.cache_clear()  # the short-string cache, as after a reload
        logs.redact(dict(EVENT))
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50_000)
    args = parser.parse_args()
    logs.register_secrets(["bench-api-key-0123456789", "another-key-1234567"])
    logs.redact(dict(EVENT))  # warm-up
    warm = per_call_us(args.calls, warm=True)
    cold = per_call_us(max(1, args.calls // 10), warm=False)
    print(f"redact one event: {warm:.1f} us warm cache, {cold:.1f} us cold ({args.calls} calls)")


if __name__ == "__main__":
    main()
