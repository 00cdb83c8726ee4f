"""The tills of ``pos-bridge bench``: one process subscribed to every terminal's channel.

    python -m bridge.bench.tills --redis-url URL --prefix P

``PSUBSCRIBE {p}:terminal:*`` on a plain socket read with hiredis (no event loop between the
socket and the clock), and for every ``order.status`` event records ``time.monotonic()`` when
its bytes arrived, with the event's status, ``event_id`` and ``stream_id``, per order in arrival
order (:mod:`bridge.bench.pairing` pairs them with what was sent). Pub/sub keeps the order of
one publisher's messages, and the bridge publishes an order's transitions in order.

Driven over stdin/stdout, one line each way: ``count`` answers ``{"status": {...}, ...}``
(events by order-id prefix), ``dump PATH`` writes the records as JSON and answers ``ok``,
``quit`` ends. It prints ``ready`` once subscribed.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import sys
import time
from urllib.parse import urlsplit

import hiredis

from bridge.bench.procs import raise_nofile


def _prefix_of(order_id: str) -> str:
    return order_id.split("-", 1)[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--prefix", default="pos")
    args = ap.parse_args()
    raise_nofile()
    url = urlsplit(args.redis_url)
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 6379))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    pattern = f"{args.prefix}:terminal:*".encode()
    sock.sendall(b"*2\r\n$10\r\nPSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(pattern), pattern))
    reader = hiredis.Reader()

    # order_id -> [(status, t, event_id, stream_id), ...] in arrival order; counts by
    # (prefix, type)
    received: dict[str, list[tuple[str, float, str, str]]] = {}
    counts: dict[str, dict[str, int]] = {}
    loads = json.loads

    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "redis")
    sel.register(sys.stdin, selectors.EVENT_READ, "cmd")
    out = sys.stdout
    subscribed = False
    running = True
    while running:
        for key, _ in sel.select():
            if key.data == "redis":
                data = sock.recv(1 << 20)
                now = time.monotonic()
                if not data:
                    print("tills: redis closed the connection", file=sys.stderr)
                    return
                reader.feed(data)
                while (msg := reader.gets()) is not False:
                    kind = msg[0]
                    if kind == b"pmessage":
                        try:
                            ev = loads(msg[3])
                            oid = ev.get("order_id") or ""
                            typ = ev["type"]
                        except (ValueError, KeyError, TypeError):
                            typ, oid = "malformed", ""
                        by = counts.setdefault(_prefix_of(oid), {})
                        by[typ] = by.get(typ, 0) + 1
                        if typ == "order.status":
                            received.setdefault(oid, []).append(
                                (
                                    ev["status"],
                                    now,
                                    ev.get("event_id") or "",
                                    ev.get("stream_id") or "",
                                )
                            )
                    elif kind == b"psubscribe" and not subscribed:
                        subscribed = True
                        out.write("ready\n")
                        out.flush()
            else:
                line = sys.stdin.readline()
                cmd, _, arg = line.strip().partition(" ")
                if cmd == "count":
                    out.write(json.dumps(counts) + "\n")
                elif cmd == "dump":
                    tmp = arg + ".tmp"
                    with open(tmp, "w") as f:
                        json.dump(received, f)
                    os.replace(tmp, arg)
                    out.write("ok\n")
                elif cmd in ("quit", ""):
                    running = False
                    continue
                out.flush()


if __name__ == "__main__":
    main()
