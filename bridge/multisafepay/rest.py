"""A small HTTP/1.1 client for the REST calls: keep-alive connections, one request at a time
each, read by an :class:`asyncio.Protocol` feeding a sans-I/O response parser.

Why not httpx here: a call through ``httpx.AsyncClient`` cost ~0.8-0.9 ms of the daemon's CPU
(its client, URL and header models, cookies, hooks, httpcore's pool and locks, each with anyio
cancel scopes), measured against the simulator on this project's 2-core VM; the same ``GET``
written by hand on a kept connection cost ~60 us. A payment makes three such calls (create, the
``GET`` once its stream opens, the details ``GET`` after its final), so they were most of what
opening and closing a payment cost.

What it does: ``http``/``https`` (the daemon's one TLS context: :mod:`bridge.multisafepay.tls`),
a request with an optional body, a response with ``Content-Length``, chunked, or read until the
connection closes, ``gzip``/``deflate`` bodies (``identity`` is asked for), heads and bodies
bounded.
Connections are kept ``KEEPALIVE_EXPIRY`` seconds idle (httpx's default), at most
``MAX_IDLE``. What it does not do: proxies (with a proxy in the environment the daemon keeps
httpx: :func:`proxy_configured`), redirects (the API answers none), HTTP/2, ``Expect``.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.request
import zlib
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio

from bridge.multisafepay import http1

#: Longest response head and body read (an order is a few KB; a terminals page ~50 KB).
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024
#: Idle connections kept, and for how long (httpx's defaults: 5 s).
MAX_IDLE = 64
KEEPALIVE_EXPIRY = 5.0


class RestError(Exception):
    """The request failed on the wire (after ``sent``: it may have reached the server)."""

    def __init__(self, message: str, *, sent: bool, timeout: bool = False) -> None:
        super().__init__(message)
        self.sent = sent
        self.timeout = timeout


class ResponseTooLarge(RestError):
    pass


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    #: The server keeps the connection open for the next request.
    keep_alive: bool


class ResponseParser:
    """Bytes in, one :class:`Response` out (sans I/O, over :mod:`http1`). ``feed`` returns it
    once complete; ``eof`` says the connection closed (which completes a body read to the end).
    Raises :class:`RestError` for garbage or a response over the limits."""

    __slots__ = ("_buf", "_head", "_body", "_reader", "_head_only")

    def __init__(self, *, head_only: bool = False) -> None:
        self._buf = bytearray()
        self._head: http1.Head | None = None
        self._body = bytearray()
        self._reader: http1.BodyReader | None = None
        self._head_only = head_only  # a HEAD request's response has no body

    def feed(self, data: bytes) -> Response | None:
        self._buf += data
        if self._reader is not None and self._reader.done:  # bytes past the response
            return None
        try:
            while self._reader is None:
                raw = http1.take_head(self._buf, MAX_HEAD_BYTES)
                if raw is None:
                    return None
                head = http1.parse_head(raw, no_body=self._head_only)
                if not head.interim:  # an interim answer: the real one follows
                    if (head.length or 0) > MAX_BODY_BYTES:
                        raise ResponseTooLarge("response body too large", sent=True)
                    self._head, self._reader = head, http1.BodyReader(head)
            self._body += self._reader.read(self._buf)
        except http1.HeadTooLarge:
            raise ResponseTooLarge("response head too large", sent=True) from None
        except http1.HTTPGarbage as exc:
            raise RestError(f"server answered garbage HTTP: {exc}", sent=True) from None
        if len(self._body) > MAX_BODY_BYTES:
            raise ResponseTooLarge("response body too large", sent=True)
        return self._done() if self._reader.done else None

    def eof(self) -> Response:
        """The connection closed: the response, if one read to the end is now whole."""
        if self._reader is None:
            raise RestError("server closed the connection mid-response", sent=True)
        try:
            self._reader.eof()
        except http1.HTTPGarbage:
            raise RestError("server closed the connection mid-response", sent=True) from None
        return self._done(closed=True)

    def _done(self, *, closed: bool = False) -> Response:
        head = self._head
        assert head is not None
        body = bytes(self._body)
        encoding = head.headers.get("content-encoding", "identity").lower().strip()
        if encoding in ("gzip", "x-gzip", "deflate"):
            body = _decompress(body, encoding)
        elif encoding not in ("", "identity"):
            raise RestError(f"server answered {encoding[:32]!r}-encoded", sent=True)
        # bytes past the response: the connection is odd
        keep = head.keep_alive and not closed and not self._buf
        return Response(head.status, head.headers, body, keep)


def _decompress(body: bytes, encoding: str) -> bytes:
    wbits = 31 if "gzip" in encoding else 15
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, MAX_BODY_BYTES)
        if d.unconsumed_tail:
            raise ResponseTooLarge("response body too large", sent=True)
        return out
    except zlib.error:
        if encoding == "deflate":  # some servers send raw deflate
            try:
                return zlib.decompressobj(-15).decompress(body, MAX_BODY_BYTES)
            except zlib.error:
                pass
        raise RestError("server answered a body that does not decompress", sent=True) from None


class _Connection(asyncio.Protocol):
    """One kept connection; a request at a time."""

    __slots__ = ("transport", "_parser", "_waiter", "_result", "_error", "closed", "idle_since")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser: ResponseParser | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._result: Response | None = None
        self._error: RestError | None = None
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # bytes nobody asked for: the connection is not reusable
            self.close()
            return
        try:
            result = parser.feed(data)
        except RestError as exc:
            self._error = exc
            self.close()
            self._wake()
            return
        if result is not None:
            self._result = result
            self._parser = None
            self._wake()

    def eof_received(self) -> bool:
        if self._parser is not None:
            try:
                self._result = self._parser.eof()
            except RestError as exc:
                self._error = exc
            self._parser = None
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        if self._parser is not None and self._result is None and self._error is None:
            why = f": {str(exc)[:200]}" if exc else ""
            self._error = RestError(f"connection lost{why}", sent=True)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def exchange(self, request: bytes, head_only: bool) -> Response:
        """Send ``request`` and read its response (cancellation leaves the connection closed)."""
        assert self.transport is not None and self._parser is None
        self._parser = ResponseParser(head_only=head_only)
        self._result = self._error = None
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        done = False
        try:
            self.transport.write(request)
            while self._result is None and self._error is None:
                await waiter
                self._waiter = waiter = asyncio.get_running_loop().create_future()
            done = True
        finally:
            self._waiter = None
            if not done:
                self.close()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def close(self) -> None:
        self.closed = True
        self._parser = None
        if self.transport is not None:
            self.transport.abort()


@dataclass(frozen=True, slots=True)
class _Origin:
    host: str
    port: int
    tls: bool
    netloc: str


def proxy_configured(url: str) -> bool:
    """Whether the environment names a proxy for ``url`` (``HTTPS_PROXY``, ``ALL_PROXY``...,
    ``NO_PROXY`` honoured), as httpx would use one: then httpx makes the REST calls."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


class RestPool:
    """Kept connections to MultiSafepay's API origin(s); :meth:`request` sends one request."""

    def __init__(
        self,
        *,
        tls: ssl.SSLContext,
        connect_timeout: float = 10.0,
        user_agent: str = "pos-bridge/0.1",
        max_idle: int = MAX_IDLE,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
    ) -> None:
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._user_agent = user_agent
        self._max_idle = max_idle
        self._expiry = keepalive_expiry
        self._idle: dict[_Origin, deque[_Connection]] = {}
        #: Connections opened so far (the tests see reuse with it).
        self.opened = 0

    def _target(self, url: str) -> tuple[_Origin, str]:
        """The origin and request target of ``url``."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RestError("invalid API URL (http or https with a host)", sent=False)
        tls = parts.scheme == "https"
        host = parts.netloc.rpartition("@")[2]  # never credentials in the Host header
        origin = _Origin(parts.hostname, parts.port or (443 if tls else 80), tls, host)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return origin, target

    async def _connect(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection()
        try:
            with anyio.fail_after(self._connect_timeout):
                await loop.create_connection(
                    lambda: conn,
                    origin.host,
                    origin.port,
                    ssl=self._tls if origin.tls else None,
                    server_hostname=origin.host if origin.tls else None,
                )
        except TimeoutError:
            conn.close()
            raise RestError(
                f"ConnectTimeout: no connection within {self._connect_timeout:g} s",
                sent=False,
                timeout=True,
            ) from None
        except OSError as exc:
            conn.close()
            raise RestError(
                f"ConnectError: {str(exc)[:200] or type(exc).__name__}", sent=False
            ) from None
        self.opened += 1
        return conn

    def _take_idle(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recent: the likeliest to be alive
            if (
                not conn.closed
                and conn.transport is not None
                and (now - conn.idle_since < self._expiry)
            ):
                return conn
            conn.close()
        return None

    def _put_idle(self, origin: _Origin, conn: _Connection) -> None:
        idle = self._idle.setdefault(origin, deque())
        now = time.monotonic()
        while idle and (len(idle) >= self._max_idle or now - idle[0].idle_since >= self._expiry):
            idle.popleft().close()
        conn.idle_since = now
        idle.append(conn)

    async def request(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes | None = None,
    ) -> Response:
        """One request; raises :class:`RestError` (``sent``: it may have reached the server).
        The caller bounds the whole call in time (a cancellation closes its connection)."""
        origin, target = self._target(url)
        fixed = [
            ("Host", origin.netloc),
            ("User-Agent", self._user_agent),
            ("Accept-Encoding", "identity"),
        ]
        try:
            request = http1.request(method, target, [*fixed, *headers], body)
        except ValueError as exc:
            raise RestError(str(exc), sent=False) from None
        head_only = method == "HEAD"
        conn = self._take_idle(origin)
        if conn is not None:
            try:
                response = await conn.exchange(request, head_only)
            except RestError as exc:
                if exc.timeout or method not in ("GET", "HEAD"):
                    raise
                # a kept connection the server closed as we sent: a GET may go again, fresh
                conn = None
        if conn is None:
            conn = await self._connect(origin)
            response = await conn.exchange(request, head_only)
        if response.keep_alive and not conn.closed:
            self._put_idle(origin, conn)
        else:
            conn.close()
        return response

    def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()
