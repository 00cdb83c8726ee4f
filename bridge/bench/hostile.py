"""A fake MultiSafepay that answers the create normally, then misbehaves on purpose.

For the hostile-upstream tests and ``pos-bridge bench --fuzz``: real HTTP over real sockets
(a threaded ``http.server``), one misbehaviour per terminal, chosen by its ID
``HOSTILE-{MODE}-NN``:

| mode | events token | stream | ``GET orders/{id}`` | cancel |
| --- | --- | --- | --- | --- |
| ``DEEPJSON`` | normal | messages nested 5,000 deep | deep JSON twice, then ``completed`` | ok |
| ``ABSURDEXP`` | ``exp`` = 10**400 | 401 | ``initialized`` twice, then ``completed`` | ok |
| ``DEEPTOKEN`` | payload nested 5,000 deep | 401 | ``initialized`` twice, then ``completed`` | ok |
| ``MALFORMED`` | normal | 401 | a negative amount, always | 500 |
| ``UNKNOWNSTATUS`` | normal | 401 | ``pending_weird`` twice, then ``completed`` | ok |
| ``SURROGATE`` | normal | 401 | ``initialized`` x2, then ``completed``, card ``VI\\ud800SA`` | ok |

Only what the bridge's client needs is served; anything else is 404.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODES = ("DEEPJSON", "ABSURDEXP", "DEEPTOKEN", "MALFORMED", "UNKNOWNSTATUS", "SURROGATE")
_DEEP = "[" * 5000 + "]" * 5000


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _token(mode: str) -> str:
    if mode == "ABSURDEXP":
        claims = '{"exp": 1' + "0" * 400 + "}"
    elif mode == "DEEPTOKEN":
        claims = '{"exp": ' + _DEEP + "}"
    else:
        claims = json.dumps({"exp": int(time.time()) + 600})
    header = _b64(json.dumps({"alg": "HS256", "kid": mode}))  # the stream reads its mode here
    return f"{header}.{_b64(claims)}.c2lnbmF0dXJl"


def mode_of(terminal: str) -> str:
    found = re.match(r"HOSTILE-([A-Z]+)-", terminal.upper())
    return found[1] if found and found[1] in MODES else "ABSURDEXP"


class _Order:
    def __init__(self, order_id: str, terminal: str, amount: int) -> None:
        self.order_id = order_id
        self.terminal = terminal
        self.amount = amount
        self.mode = mode_of(terminal)
        self.gets = 0
        self.cancelled = False

    def answer(self) -> str:
        """What ``GET orders/{id}`` says now (raw JSON text, maybe hostile)."""
        self.gets += 1
        early = self.gets <= 2
        if self.mode == "DEEPJSON" and early:
            return '{"success": true, "data": ' + _DEEP + "}"
        status = {
            "ABSURDEXP": "initialized",
            "DEEPTOKEN": "initialized",
            "UNKNOWNSTATUS": "pending_weird",
        }.get(self.mode, "initialized")
        if not early:
            status = "completed"
        if self.cancelled:
            status = "cancelled"
        data = {
            "order_id": self.order_id,
            "status": status,
            "financial_status": status,
            "amount": -5 if self.mode == "MALFORMED" else self.amount,
            "currency": "EUR",
            "transaction_id": "900" + str(abs(hash(self.order_id)) % 1000),
            "modified": datetime.now(UTC).isoformat(),
            "payment_details": {"terminal_id": self.terminal},
        }
        if self.mode == "SURROGATE":
            data["payment_details"] = {"terminal_id": self.terminal, "type": "VI\ud800SA"}
        return json.dumps({"success": True, "data": data})  # ASCII: "\ud800" escaped


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-answer (the daemon dropped a stream) is no news."""


class HostileUpstream:
    """Serve the fake on 127.0.0.1 (a free port) in a thread; ``base_url`` is the API base."""

    def __init__(self) -> None:
        self.orders: dict[str, _Order] = {}
        self.requests = 0
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                upstream.serve(self, "GET")

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                upstream.serve(self, "POST")

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}/"
        self.base_url = self.url + "v1/json/"

    def __enter__(self) -> HostileUpstream:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- requests ---------------------------------------------------------------------------

    def serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        with self._lock:
            self.requests += 1
        path = handler.path.split("?", 1)[0]
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        if method == "POST" and path == "/v1/json/orders":
            self._reply(handler, 200, self._create(body))
        elif method == "GET" and path.startswith("/v1/json/orders/"):
            order = self.orders.get(path.removeprefix("/v1/json/orders/"))
            self._reply(handler, 200 if order else 404, order.answer() if order else "{}")
        elif method == "POST" and path.endswith("/cancel"):
            order = self.orders.get(path.removeprefix("/v1/json/orders/").removesuffix("/cancel"))
            if order is None or order.mode == "MALFORMED":
                self._reply(handler, 500, '{"success": false, "error_code": 500}')
            else:
                order.cancelled = True
                self._reply(handler, 200, '{"success": true, "data": {}}')
        elif method == "GET" and path == "/events/stream/":
            self._stream(handler)
        else:
            self._reply(handler, 404, '{"success": false, "error_code": 1000}')

    def _create(self, body: bytes) -> str:
        request: dict[str, Any] = json.loads(body)
        order_id = str(request["order_id"])
        terminal = str(request["gateway_info"]["terminal_id"])
        order = _Order(order_id, terminal, int(request["amount"]))
        self.orders[order_id] = order
        data = {
            "order_id": order_id,
            "session_id": "s-" + order_id,
            "events_token": _token(order.mode),
            "events_stream_url": self.url + "events/stream/",
        }
        return json.dumps({"success": True, "data": data})

    def _stream(self, handler: BaseHTTPRequestHandler) -> None:
        token = (handler.headers.get("Authorization") or "").removeprefix("Bearer ")
        head = token.split(".")[0]
        try:
            mode = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))).get("kid")
        except ValueError:
            mode = None
        if mode != "DEEPJSON":
            self._reply(handler, 401, '{"success": false, "error_code": 1032}')
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Connection", "close")
        handler.end_headers()
        for _ in range(3):
            handler.wfile.write(f"data: {_DEEP}\n\n".encode())
            handler.wfile.write(b'data: {"order_id": ' + _DEEP.encode() + b"}\n\n")
        handler.wfile.flush()
        handler.close_connection = True

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, text: str) -> None:
        raw = text.encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        handler.end_headers()
        handler.wfile.write(raw)
