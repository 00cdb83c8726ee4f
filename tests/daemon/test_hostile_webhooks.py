"""The webhook receiver against hostile senders, over real sockets: a group's key speaks only
for its orders, replays change nothing, unsigned GETs cost bounded upstream calls, slow and
garbage clients are answered or dropped while valid notifications keep being answered."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import httpx
import pytest
from helpers.harness import API_KEY, Till, bridge_config, running_bridge, statuses
from redis.asyncio import Redis

from bridge.redis.server import free_port
from bridge.simulator.signing import auth_header

pytestmark = pytest.mark.anyio

OTHER_KEY = "other-group-key-9876543210"
PATH = "/webhooks/multisafepay"


def two_groups_config(redis_url: str, api_base_url: str, port: int) -> Any:
    return bridge_config(
        redis_url,
        api_base_url,
        multisafepay={
            "terminal_groups": [
                {"name": "shop", "api_key": API_KEY, "terminals": ["TILL-A", "SIM-TIMEOUT-01"]},
                {"name": "other", "api_key": OTHER_KEY, "terminals": ["OTHER-01"]},
            ]
        },
        webhook={
            "enabled": True,
            "listen": f"127.0.0.1:{port}",
            "public_url": f"http://127.0.0.1:{port}",
            "max_age": 300,
            "header_timeout": 2.0,
        },
    )


def order_body(order_id: str, terminal: str, status: str, modified: str) -> bytes:
    return json.dumps(
        {
            "order_id": order_id,
            "status": status,
            "financial_status": status,
            "amount": 1250,
            "currency": "EUR",
            "transaction_id": "4711",
            "modified": modified,
            "payment_details": {"terminal_id": terminal, "type": "VISA"},
        }
    ).encode()


def signed(key: str, raw: bytes) -> dict[str, str]:
    now = str(int(time.time()))
    return {"Auth": auth_header(key, now, raw), "Content-Type": "application/json"}


def notify(port: int, group: str, raw: bytes, headers: dict[str, str], slash: str = "") -> int:
    url = f"http://127.0.0.1:{port}{PATH}/{group}{slash}"
    return httpx.post(url, content=raw, headers=headers, follow_redirects=False).status_code


async def test_a_group_key_speaks_only_for_its_own_orders(
    redis_server, redis_client: Redis, simulator
) -> None:
    port = free_port()
    till = Till(redis_client)
    async with running_bridge(two_groups_config(redis_server.url, simulator.base_url, port)):
        paid = await till.pay("SIM-TIMEOUT-01", 500, order_id="shop-order-1")
        await till.wait_for("SIM-TIMEOUT-01", lambda ev: statuses(ev)[-1:] == ["initialized"])
        forged = order_body("shop-order-1", "other-01", "completed", "2026-11-24T10:00:05")
        same_terminal = order_body(
            "shop-order-1", "sim-timeout-01", "completed", "2026-11-24T10:00:05"
        )
        foreign_new = order_body("typed-in-9", "other-01", "completed", "2026-11-24T10:00:05")
        other_till = order_body("shop-order-1", "till-a", "completed", "2026-11-24T10:00:05")

        def send() -> list[int]:
            return [
                notify(port, "other", forged, signed(OTHER_KEY, forged)),  # B's key, A's order
                notify(port, "other", same_terminal, signed(OTHER_KEY, same_terminal)),
                notify(port, "shop", foreign_new, signed(API_KEY, foreign_new)),  # B's terminal
                notify(port, "shop", other_till, signed(API_KEY, other_till)),  # not its terminal
            ]

        codes = await anyio.to_thread.run_sync(send)  # each answered once decided and recorded
        events = await till.events("SIM-TIMEOUT-01")
        other_events = await till.events("OTHER-01")
        tilla_events = await till.events("TILL-A")
        await till.send(
            {"type": "cancel", "terminal_id": "SIM-TIMEOUT-01", "order_id": "shop-order-1"}
        )
        await till.until_final("SIM-TIMEOUT-01", paid)
    assert codes == [401, 401, 401, 401]
    assert statuses(events) == ["order.created", "initialized"]  # nothing forged published
    assert other_events == [] and tilla_events == []


async def test_a_replayed_notification_changes_nothing(
    redis_server, redis_client: Redis, simulator
) -> None:
    port = free_port()
    till = Till(redis_client)
    second = "2026-11-24T10:00:00"  # both in one second: time cannot order them
    first = order_body("hooked-r", "till-a", "initialized", second)
    then = order_body("hooked-r", "till-a", "declined", second)
    first_headers, then_headers = signed(API_KEY, first), signed(API_KEY, then)
    async with running_bridge(two_groups_config(redis_server.url, simulator.base_url, port)):

        def send() -> list[int]:
            return [
                notify(port, "shop", first, first_headers),
                notify(port, "shop", then, then_headers),
                notify(port, "shop", first, first_headers),  # replayed, within max_age
                notify(port, "shop", then, then_headers, slash="/"),
                notify(port, "shop", first, first_headers),
            ]

        codes = await anyio.to_thread.run_sync(send)  # 200 only once the transition is in Redis
        events = await till.events("TILL-A")
    assert codes == [200] * 5  # answered (MultiSafepay must not resend), not acted on
    assert statuses(events) == ["initialized", "declined"]


class RecordingApi:
    """A stand-in for MultiSafepay's REST API that records every path asked for and answers
    ``GET orders/{id}`` with an initialized order on TILL-A."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                recorder.paths.append(self.path)
                order_id = self.path.split("/orders/", 1)[-1].split("?")[0]
                body = json.dumps(
                    {
                        "success": True,
                        "data": json.loads(
                            order_body(order_id, "till-a", "initialized", "2026-11-24T10:00:09")
                        ),
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/v1/json/"

    def __enter__(self) -> RecordingApi:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recording_api() -> Iterator[RecordingApi]:
    with RecordingApi() as api:
        yield api


async def test_unsigned_get_notifications_cost_bounded_upstream_calls(
    redis_server, redis_client: Redis, recording_api: RecordingApi
) -> None:
    port = free_port()
    known = order_body("known-1", "till-a", "initialized", "2026-11-24T10:00:00")
    async with running_bridge(two_groups_config(redis_server.url, recording_api.base_url, port)):

        def send() -> tuple[dict[str, int], list[int], float]:
            url = f"http://127.0.0.1:{port}{PATH}/shop"
            with httpx.Client() as client:
                assert (
                    client.post(url, content=known, headers=signed(API_KEY, known)).status_code
                    == 200
                )
                hostile = {
                    name: client.get(url, params={"transactionid": value}).status_code
                    for name, value in {
                        "traversal": "../../terminals",
                        "query": "x?api_key=1",
                        "unknown": "nobody-1",
                        "slash": "known-1/refunds",
                        "empty": "",
                        "other group": "known-1",
                    }.items()
                    if name != "other group"
                }
                hostile["other group"] = client.get(
                    f"http://127.0.0.1:{port}{PATH}/other", params={"transactionid": "known-1"}
                ).status_code
                hostile["none"] = client.get(url).status_code
                started = time.monotonic()
                flood = [
                    client.get(url, params={"transactionid": "known-1"}).status_code
                    for _ in range(60)
                ]
                return hostile, flood, time.monotonic() - started

        hostile, flood, elapsed = await anyio.to_thread.run_sync(send)
    assert hostile == {
        "traversal": 400,
        "query": 400,
        "unknown": 404,
        "slash": 404,
        "empty": 400,
        "other group": 404,
        "none": 400,
    }
    assert all(p == "/v1/json/orders/known-1" for p in recording_api.paths), recording_api.paths
    assert 200 in flood and 429 in flood
    # the bucket: a burst of 20, then 2 per second
    assert len(recording_api.paths) == flood.count(200) <= 20 + 2 * elapsed + 1


def _slow_client(
    port: int, stop: threading.Event, answers: list[bytes], connected: threading.Barrier
) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    connected.wait()
    sock.settimeout(0.5)
    request = f"POST {PATH}/shop HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode() + b"a" * 10_000
    received = b""
    try:
        for byte in request:
            if stop.is_set():
                break
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            received += chunk
            if not chunk:
                break
    finally:
        answers.append(received or b"closed")
        sock.close()


async def test_slow_clients_are_dropped_while_notifications_are_answered(
    redis_server, redis_client: Redis, simulator
) -> None:
    port = free_port()
    raw = order_body("hooked-s", "till-a", "initialized", "2026-11-24T10:00:00")
    async with running_bridge(two_groups_config(redis_server.url, simulator.base_url, port)):
        stop = threading.Event()
        answers: list[bytes] = []
        connected = threading.Barrier(31)
        slow = [
            threading.Thread(
                target=_slow_client, args=(port, stop, answers, connected), daemon=True
            )
            for _ in range(30)
        ]
        for thread in slow:
            thread.start()
        await anyio.to_thread.run_sync(connected.wait)  # every slow client is connected
        code = await anyio.to_thread.run_sync(
            lambda: notify(port, "shop", raw, signed(API_KEY, raw))
        )
        # the header timeout (2 s here) drops every slow client
        await anyio.to_thread.run_sync(lambda: [thread.join(60) for thread in slow])
        assert len(answers) == len(slow)
        stop.set()
        garbage = await anyio.to_thread.run_sync(lambda: [_raw_exchange(port, g) for g in GARBAGE])
        code_after = await anyio.to_thread.run_sync(
            lambda: notify(port, "shop", raw, signed(API_KEY, raw), slash="/")
        )
        events = await Till(redis_client).events("TILL-A")
    assert code == 200 and code_after == 200
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[:3]
    assert all(g.startswith(b"HTTP/1.1 ") for g in garbage), garbage
    assert statuses(events) == ["initialized"]


GARBAGE = [
    b"GARBAGE\r\n\r\n",
    b"\xff\xfe\r\n\r\n",
    f"POST {PATH}/shop HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".encode(),
    f"POST {PATH}/shop HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{{[[[".encode(),
    f"GET {PATH}/sh%ZZop?transactionid=%ff HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    f"GET {PATH}/shop?transactionid=%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    b"POST /webhooks/multisafepay/\xff HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    f"POST {PATH}/shop HTTP/1.1\r\nHost: x\r\nAuth: \xff\r\nContent-Length: 2\r\n\r\n{{}}".encode(
        "latin-1"
    ),
    f"PUT {PATH}/shop HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * 100_000 + b"\r\n\r\n",
]


def _raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        try:
            sock.sendall(request)
        except OSError:
            pass
        try:
            return sock.recv(4096)
        except OSError as exc:
            return repr(exc).encode()
