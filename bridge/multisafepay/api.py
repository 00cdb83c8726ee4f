"""MultiSafepay's REST API for cloud POS orders, over the project's small HTTP/1.1 client
(:mod:`bridge.multisafepay.rest`), or over a few shared httpx clients (with a proxy configured).

Every call takes the API key of the terminal's group (MultiSafepay requires the group's key for
all calls of an order). The key goes in the ``api_key`` header by default; the query form is a
fallback because a key in a URL ends up in access logs.

Why several httpx clients (:func:`rest_clients`), where httpx is used: httpcore's pool walks
every connection it holds, idle or busy, on each request and on each response's close (and
polls each idle socket), so one pool's cost per request grows with the requests in flight:
measured here, ~0.7 ms of CPU per request with one connection, 1.8 ms with 64 idle, 3-4 ms
with 32-64 requests in flight. Calls go to the client with the fewest in flight among
``REST_SHARDS`` small ones, so each pool stays a few connections long whatever the load.
(Streams are not in these pools at all: see :mod:`bridge.multisafepay.sse`.)
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urlencode

import anyio
import httpx

from bridge.core.events import ErrorCode
from bridge.multisafepay.rest import RestError, RestPool


class ApiError(Exception):
    """MultiSafepay refused or could not answer a call.

    ``code`` is the bridge's error code for tills; ``maybe_done`` is true when the request may
    have taken effect anyway (timeout, connection lost after sending, 5xx), so the caller must
    find out with ``GET`` before saying anything final.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        http_status: int | None = None,
        upstream_code: int | None = None,
        maybe_done: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status
        self.upstream_code = upstream_code
        self.maybe_done = maybe_done


@dataclass(frozen=True, slots=True)
class CreatedOrder:
    order_id: str
    session_id: str | None
    events_token: str | None
    events_stream_url: str | None
    events_url: str | None


def _pick(data: dict[str, Any], *names: str) -> str | None:
    """First present of several spellings (``events_token`` / older ``event_token``)."""
    for name in names:
        value = data.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _path(*segments: str | int) -> str:
    """A URL path from segments, each percent-encoded whole (``/`` included).

    MultiSafepay allows ``/`` in an order id (MultiSafepay/docs:
    content/point-of-sale/smartpos-solutions.md: "a-z, A-Z, 0-9 and the special characters
    ``/ - _``"), so ``till7/123`` must travel as ``till7%2F123``, and an id such as
    ``X/refunds`` can never reach another endpoint. The official SDK encodes the same way
    (``multisafepay`` 3.1.0: ``api/base/abstract_manager.py``, ``quote(segment, safe="")``).
    """
    return "/".join(quote(str(segment), safe="") for segment in segments)


def _error_for_status(status: int) -> ErrorCode:
    if status in (401, 403):
        return ErrorCode.UNAUTHORIZED
    if status == 404:
        return ErrorCode.NOT_FOUND
    return ErrorCode.UPSTREAM_REJECTED


#: Small REST pools the calls are spread over, and the idle connections each keeps.
REST_SHARDS = 16
REST_KEEPALIVE_PER_SHARD = 4


@asynccontextmanager
async def rest_clients(
    shards: int = REST_SHARDS, keepalive: int = REST_KEEPALIVE_PER_SHARD, **options: Any
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """``shards`` httpx clients made alike (``options``: ``verify``, ``timeout``, ``headers``,
    ...), each keeping at most ``keepalive`` idle connections; all closed on exit."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=keepalive)
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(httpx.AsyncClient(limits=limits, **options))
            for _ in range(shards)
        ]


def _json_or_none(body: bytes) -> Any:
    try:
        return jsonlib.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's limit
        return None


class MultiSafepayApi:
    def __init__(
        self,
        http: httpx.AsyncClient | Sequence[httpx.AsyncClient] | RestPool,
        base_url: str,
        *,
        api_key_in: Literal["header", "query"] = "header",
        request_timeout: float = 30.0,
    ) -> None:
        self._pool = http if isinstance(http, RestPool) else None
        if isinstance(http, RestPool):
            self._clients: list[httpx.AsyncClient] = []
        else:
            self._clients = [http] if isinstance(http, httpx.AsyncClient) else list(http)
            assert self._clients, "at least one client"
        self._in_flight = [0] * len(self._clients)
        self._base = base_url if base_url.endswith("/") else base_url + "/"
        self._key_in = api_key_in
        self._timeout = request_timeout

    async def _call(
        self,
        method: str,
        path: str,
        api_key: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        params = dict(params or {})
        if self._key_in == "header":
            headers["api_key"] = api_key
        else:
            params["api_key"] = api_key
        if self._pool is not None:
            return await self._call_pool(self._pool, method, path, headers, json, params)
        flights = self._in_flight
        shard = flights.index(min(flights))  # the least busy pool: each stays short
        flights[shard] += 1
        try:
            response = await self._clients[shard].request(
                method,
                self._base + path,
                json=json,
                params=params or None,
                headers=headers,
                timeout=self._timeout,
            )
        except httpx.TimeoutException as exc:
            raise ApiError(
                ErrorCode.UPSTREAM_UNAVAILABLE,
                f"{method} {path}: no answer within {self._timeout:g} s",
                maybe_done=method != "GET",
            ) from exc
        except httpx.HTTPError as exc:
            # A refused connection certainly did nothing; anything later might have.
            refused = isinstance(exc, httpx.ConnectError)
            raise ApiError(
                ErrorCode.UPSTREAM_UNAVAILABLE,
                f"{method} {path}: {type(exc).__name__}",
                maybe_done=method != "GET" and not refused,
            ) from exc
        finally:
            flights[shard] -= 1
        return self._answer_httpx(method, path, response)

    async def _call_pool(
        self,
        pool: RestPool,
        method: str,
        path: str,
        headers: dict[str, str],
        json: Any,
        params: dict[str, Any],
    ) -> Any:
        url = self._base + path + (f"?{urlencode(params)}" if params else "")
        body = None
        if json is not None:
            body = jsonlib.dumps(json, separators=(",", ":"), ensure_ascii=False).encode()
            headers["Content-Type"] = "application/json"
        try:
            with anyio.fail_after(self._timeout):
                response = await pool.request(method, url, list(headers.items()), body)
        except TimeoutError as exc:
            raise ApiError(
                ErrorCode.UPSTREAM_UNAVAILABLE,
                f"{method} {path}: no answer within {self._timeout:g} s",
                maybe_done=method != "GET",
            ) from exc
        except RestError as exc:
            # A connection that never opened certainly did nothing; anything later might have.
            raise ApiError(
                ErrorCode.UPSTREAM_UNAVAILABLE,
                f"{method} {path}: {str(exc)[:200]}",
                maybe_done=method != "GET" and (exc.sent or exc.timeout),
            ) from exc
        return self._answer(method, path, response.status, _json_or_none(response.body))

    @staticmethod
    def _answer_httpx(method: str, path: str, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's limit
            body = None
        return MultiSafepayApi._answer(method, path, response.status_code, body)

    @staticmethod
    def _answer(method: str, path: str, status: int, body: Any) -> Any:
        if status < 300 and isinstance(body, dict) and body.get("success") is True:
            return body.get("data")
        info = code = None
        if isinstance(body, dict):
            info = body.get("error_info")
            code = body.get("error_code")
        detail = f"{info}" if info else f"HTTP {status}"
        if status >= 500 or status == 429:
            raise ApiError(
                ErrorCode.UPSTREAM_UNAVAILABLE,
                f"{method} {path}: {detail}",
                http_status=status,
                upstream_code=code if isinstance(code, int) else None,
                maybe_done=method != "GET" and status != 429,
            )
        raise ApiError(
            _error_for_status(status) if status >= 300 else ErrorCode.UPSTREAM_REJECTED,
            f"MultiSafepay refused {method} {path}: {detail}",
            http_status=status,
            upstream_code=code if isinstance(code, int) else None,
        )

    async def create_order(
        self,
        api_key: str,
        *,
        order_id: str,
        terminal_id: str,
        amount: int,
        currency: str,
        description: str | None,
        notification_url: str | None = None,
    ) -> CreatedOrder:
        body: dict[str, Any] = {
            "type": "redirect",
            "order_id": order_id,
            "gateway": "",
            "currency": currency,
            "amount": amount,
            "description": description or f"Order {order_id}",
            "gateway_info": {"terminal_id": terminal_id},
        }
        if notification_url:
            body["payment_options"] = {
                "notification_url": notification_url,
                "notification_method": "POST",
            }
        data = await self._call("POST", "orders", api_key, json=body)
        if not isinstance(data, dict):
            raise ApiError(ErrorCode.UPSTREAM_REJECTED, "POST orders: answer has no data object")
        return CreatedOrder(
            order_id=_pick(data, "order_id") or order_id,
            session_id=_pick(data, "session_id"),
            events_token=_pick(data, "events_token", "event_token"),
            events_stream_url=_pick(data, "events_stream_url", "event_stream_url"),
            events_url=_pick(data, "events_url", "event_url"),
        )

    async def get_order(self, api_key: str, order_id: str) -> dict[str, Any]:
        path = _path("orders", order_id)
        data = await self._call("GET", path, api_key)
        if not isinstance(data, dict):
            raise ApiError(ErrorCode.UPSTREAM_REJECTED, f"GET {path}: no order object")
        return data

    async def cancel_order(self, api_key: str, order_id: str) -> dict[str, Any]:
        data = await self._call("POST", _path("orders", order_id, "cancel"), api_key)
        return data if isinstance(data, dict) else {}

    async def refund_order(
        self, api_key: str, order_id: str, *, amount: int, currency: str, description: str | None
    ) -> dict[str, Any]:
        body = {"currency": currency, "amount": amount, "description": description or "refund"}
        path = _path("orders", order_id, "refunds")
        data = await self._call("POST", path, api_key, json=body)
        return data if isinstance(data, dict) else {}

    async def get_receipt(self, api_key: str, order_id: str) -> dict[str, Any]:
        """The receipt of a POS order: ``merchant``, ``order``, ``payment``, ``printed_on``,
        ``related_transactions`` (MultiSafepay/docs: ``openapi/paths/receipt@{order_id}.yaml``).
        An unknown order is HTTP 404 / 1006 (``ApiError`` ``not_found``)."""
        path = _path("pos", "receipt", order_id)
        data = await self._call("GET", path, api_key)
        if not isinstance(data, dict):
            raise ApiError(ErrorCode.UPSTREAM_REJECTED, f"GET {path}: no receipt object")
        return data

    async def list_terminals(
        self, api_key: str, group_id: int | None = None
    ) -> list[dict[str, Any]]:
        """Every terminal the key sees (of one terminal group, if given), across pages."""
        path = _path("terminal-groups", group_id, "terminals") if group_id else "terminals"
        terminals: list[dict[str, Any]] = []
        limit = 100
        for page in range(1, 1000):
            data = await self._call("GET", path, api_key, params={"page": page, "limit": limit})
            items = [t for t in data if isinstance(t, dict)] if isinstance(data, list) else []
            terminals.extend(items)
            if len(items) < limit:
                break
        return terminals
