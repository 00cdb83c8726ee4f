"""Helpers for the simulator tests: a running simulator and small clients for its API."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from bridge.simulator import SimulatorServer
from bridge.simulator.clock import Clock
from bridge.simulator.variants import Variants

KEY = "test-key-1"
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(speed=100) as server:
        yield server


class SteppedClock(Clock):
    """A clock the test moves: each scripted step of a payment waits for a ``step()``.

    For tests that must act between two scripted events (open a stream, subscribe) without
    racing them. Keep-alives still run at ``speed``; a zero wait (``final_grace=0``) passes.
    """

    def __init__(self, speed: float = 100.0) -> None:
        super().__init__(speed)
        self._lock = threading.Lock()
        self._permits = 0
        self._waiting: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with self._lock:
            if self._permits:
                self._permits -= 1
                return
            loop = asyncio.get_running_loop()  # the simulator's, in its own thread
            waiter = (loop, loop.create_future())
            self._waiting.append(waiter)
        try:
            await waiter[1]
        finally:
            with self._lock:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)

    def step(self, count: int = 1) -> None:
        """Let ``count`` scripted waits end (now, or as soon as they start)."""
        with self._lock:
            for _ in range(count):
                if not self._waiting:
                    self._permits += 1
                    continue
                loop, future = self._waiting.popleft()
                loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@pytest.fixture
def stepped() -> Iterator[tuple[SimulatorServer, SteppedClock]]:
    """A simulator of its own whose payments move only when the test says ``clock.step()``;
    streams close as soon as the order is final."""
    clock = SteppedClock()
    with SimulatorServer(clock=clock, final_grace=0) as server:
        yield server, clock


def admin_order(sim: SimulatorServer, order_id: str) -> dict[str, Any] | None:
    """The order as the simulator's admin API shows it (status, events, open streams)."""
    orders = httpx.get(sim.url + "_sim/orders").json()["data"]
    return next((o for o in orders if o["order_id"] == order_id), None)


def wait_admin(
    sim: SimulatorServer,
    order_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Poll the admin API until the order exists and satisfies ``predicate`` (generous
    timeout)."""
    deadline = time.monotonic() + timeout
    while (order := admin_order(sim, order_id)) is None or not predicate(order):
        assert time.monotonic() < deadline, order
        time.sleep(0.01)
    return order


def in_background(func: Callable[[], Any]) -> Background:
    """Run ``func`` in a thread; calling the result joins it and gives what ``func`` returned
    (or raises what it raised)."""
    return Background(func)


class Background:
    """A function running in a thread (see ``in_background``)."""

    def __init__(self, func: Callable[[], Any]) -> None:
        self.func = func
        self.result: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result["value"] = self.func()
        except BaseException as exc:  # noqa: BLE001  # handed to the caller of __call__
            self.result["error"] = exc

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def __call__(self, timeout: float = 15.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.func} still running after {timeout} s"
        if "error" in self.result:
            raise self.result["error"]
        return self.result["value"]


@pytest.fixture(scope="module")
def sim_ids() -> Iterator[SimulatorServer]:
    """A simulator whose SSE messages carry ``id:`` (variant ``sse_ids=on``), so a stream read
    with ``Last-Event-ID: 0`` replays from the start and a fast speed cannot make a test miss
    the first statuses."""
    with SimulatorServer(speed=100, variants=Variants(sse_ids="on")) as server:
        yield server


@pytest.fixture(autouse=False)
def reset_variants(sim: SimulatorServer) -> Iterator[None]:
    yield
    httpx.put(sim.url + "_sim/variants", json=Variants().as_dict())


def new_order_id(prefix: str = "t") -> str:
    return f"{prefix}-{next(_ids)}"


def order_body(
    terminal: str, amount: int = 1250, order_id: str | None = None, **extra: Any
) -> dict[str, Any]:
    body = {
        "type": "redirect",
        "order_id": order_id or new_order_id(),
        "gateway": "",
        "currency": "EUR",
        "amount": amount,
        "description": "test sale",
        "gateway_info": {"terminal_id": terminal},
    }
    body.update(extra)
    return body


def create(
    sim: SimulatorServer, terminal: str, amount: int = 1250, key: str = KEY, **extra: Any
) -> httpx.Response:
    return httpx.post(
        sim.base_url + "orders",
        headers={"api_key": key},
        json=order_body(terminal, amount, **extra),
        timeout=10,
    )


def read_sse(
    url: str,
    authorization: str,
    last_event_id: str | None = None,
    timeout: float = 10.0,
    on_message: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Read a whole SSE stream; each message as {"event", "id", "data"} (pings included).
    ``on_message`` sees each message (data still text) as it arrives."""
    headers = {"Accept": "text/event-stream", "Authorization": authorization}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    messages: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line == "":
                if current:
                    messages.append(current)
                    if on_message is not None:
                        on_message(current)
                current = {}
            elif line.startswith(":"):
                messages.append({"comment": line})
                if on_message is not None:
                    on_message(messages[-1])
            else:
                name, _, value = line.partition(":")
                current[name] = value.removeprefix(" ")
    for m in messages:
        if "data" in m and m["data"] != "ping":
            m["data"] = json.loads(m["data"])
    return messages


def statuses(messages: list[dict[str, Any]]) -> list[str]:
    return [m["data"]["status"] for m in messages if m.get("event") == "session.order"]


class Receiver:
    """A tiny webhook endpoint: records requests; answers `OK` unless told to refuse."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.refuse: set[str] = set()  # statuses to refuse (answer 500)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self.do_POST()

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = urlsplit(self.path)
                status = json.loads(raw)["status"] if raw else None
                receiver.requests.append(
                    {
                        "method": self.command,
                        "path": parts.path,
                        "query": parse_qs(parts.query),
                        "headers": dict(self.headers),
                        "raw": raw,
                        "status": status,
                        "at": time.monotonic(),
                    }
                )
                if status in receiver.refuse:
                    self.send_response(500)
                    body = b"not now"
                else:
                    self.send_response(200)
                    body = b"OK"
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait(self, predicate: Any, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, self.requests
            time.sleep(0.01)


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()
