"""One order's server-sent event stream (``events_stream_url``), read by a small asyncio protocol.

This only reads a stream; what a message means is the core's business and reconnecting is the
session's. A long-lived stream needs little: one request, then bytes. So each stream is an
:class:`asyncio.Protocol` on the shared event loop feeding two sans-I/O parsers, the
project's :mod:`http1` (the HTTP/1.1 response: one small object per stream, where an
``h11.Connection`` was six and about 1 KB) and its bounded :mod:`sse_decoder` (httpx-sse's
keeps an unfinished line without limit). Compared with a reader on httpx (a client pool scanned
on every new request, a response object, its byte-stream iterators and their buffers), it holds
a few KB per stream and no pool. TLS: the daemon's one context (:mod:`bridge.multisafepay.tls`).

Two ways a connection is declared dead: no bytes at all for ``idle_timeout`` (keep-alive
comments are bytes), or bytes that never complete a line for ``idle_timeout`` (a slow drip).
Not supported, as no MultiSafepay stream needs them: HTTP proxies, redirects, HTTP/2.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import anyio

from bridge.multisafepay import http1
from bridge.multisafepay.sse_decoder import SSEDecoder, SSEMessage, SSEProtocolError
from bridge.multisafepay.tls import client_context

#: Longest line and message the bridge reads; a real message is ~200 bytes.
MAX_LINE_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 64 * 1024
#: Longest response head (status line and headers) read.
MAX_HEAD_BYTES = 16 * 1024
#: Messages decoded but not yet taken before the socket stops being read (flow control).
MAX_QUEUED = 64
USER_AGENT = "pos-bridge/0.1"
EVENT_STREAM = "text/event-stream"
IDENTITY = "identity"


class StreamError(Exception):
    """The stream could not be read (refused, wrong content type, closed, silent, garbage)."""


class StreamRejected(StreamError):
    """The stream refused the token (401/403): reconnecting with it will not help."""


@dataclass(frozen=True, slots=True)
class StreamMessage:
    event: str
    data: str
    id: str | None


def auth_header(token: str, mode: Literal["bearer", "raw"]) -> str:
    # MultiSafepay documents the bare token; their SDK sends "Bearer TOKEN".
    return f"Bearer {token}" if mode == "bearer" else token


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    tls: bool
    host_header: str
    path: str

    @classmethod
    def parse(cls, url: str) -> _Target:
        # Never quote the URL in an error: it may carry what the server treats as secret.
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise StreamError("invalid stream URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StreamError("invalid stream URL (http or https with a host)")
        tls = parts.scheme == "https"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname, port or (443 if tls else 80), tls, parts.netloc, path)


class StreamConnection(asyncio.Protocol):
    """One stream's socket: bytes -> HTTP/1.1 body -> SSE decoder -> :attr:`messages`.

    Callbacks only parse and record; :meth:`wake` tells the one reader waiting (a coroutine in
    :meth:`wait_until`, or the ``on_change`` callback of an owner that holds no task). Its clock
    is :func:`time.monotonic` (the daemon's scheduler's), not the loop's.
    """

    __slots__ = (
        "_buf",
        "_body",
        "_decoder",
        "_request",
        "_waiter",
        "_paused",
        "transport",
        "status",
        "content_type",
        "content_encoding",
        "messages",
        "error",
        "ended",
        "bytes_at",
        "line_at",
        "on_change",
    )

    def __init__(self, request: bytes, now: float) -> None:
        self._buf = bytearray()  # bytes received and not yet parsed
        self._body: http1.BodyReader | None = None  # once the answer's head is read
        self._decoder = SSEDecoder(max_line=MAX_LINE_BYTES, max_event=MAX_MESSAGE_BYTES)
        self._request = request
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.transport: asyncio.Transport | None = None
        self.status: int | None = None
        self.content_type = ""
        self.content_encoding = IDENTITY
        # A list, not a deque: at most MAX_QUEUED messages, and an empty deque is a 760-byte
        # block per stream held (tracemalloc, 1,000 streams), an empty list 56 bytes.
        self.messages: list[SSEMessage] = []
        self.error: StreamError | None = None
        self.ended = False
        self.bytes_at = self.line_at = now
        #: Called (synchronously, from the loop's callbacks) whenever :meth:`wake` is.
        self.on_change: Callable[[], None] | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is one without subclassing asyncio.Transport).
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self._request)
        self._request = b""  # sent: not held (nor its token) for the stream's life

    def data_received(self, data: bytes) -> None:
        self.bytes_at = time.monotonic()
        self._buf += data
        self._read_events(eof=False)

    def eof_received(self) -> bool:
        self._read_events(eof=True)
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended and self.error is None:
            why = f": {str(exc)[:200] or type(exc).__name__}" if exc else ""
            self.error = StreamError(f"stream connection lost{why}")
        self.transport = None
        self.wake()

    # -- parsing ----------------------------------------------------------------------------

    def _read_events(self, *, eof: bool) -> None:
        # The reader is woken only for what it waits for (the answer's head, a message, the
        # end, an error), not for every chunk: a keep-alive every 15 s per held stream woke
        # its task through five coroutine frames and a new future and timer each time. The
        # idle deadlines need no wake-up per chunk: the reader's timer is at the earliest.
        if self.ended or self.error is not None:
            return
        queued, answered = len(self.messages), self.status is not None
        try:
            self._parse(eof)
        except http1.HTTPGarbage as exc:
            self.error = StreamError(f"stream answered garbage HTTP: {exc}")
        except SSEProtocolError as exc:
            self.error = StreamError(f"garbage on the stream: {exc}")
        if len(self.messages) >= MAX_QUEUED and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        if (
            len(self.messages) != queued
            or (self.status is not None) != answered
            or self.ended
            or self.error is not None
        ):
            self.wake()

    def _parse(self, eof: bool) -> None:
        while self._body is None:
            raw = http1.take_head(self._buf, MAX_HEAD_BYTES)
            if raw is None:
                if eof:  # closed before answering
                    self.ended = True
                return
            head = http1.parse_head(raw)
            if head.interim:  # the real answer follows
                continue
            self.status = head.status
            # the expected values as the module's constants: not two strings per held stream
            ctype = head.headers.get("content-type", "").partition(";")[0].strip()
            self.content_type = EVENT_STREAM if ctype == EVENT_STREAM else ctype
            coding = head.headers.get("content-encoding")
            self.content_encoding = IDENTITY if coding is None else coding.lower()
            self._body = http1.BodyReader(head)
        data = self._body.read(self._buf)
        if data:
            lines = self._decoder.lines
            self.messages.extend(m for m in self._decoder.feed(data) if not _ping(m))
            if self._decoder.lines != lines:
                self.line_at = self.bytes_at
        if eof:
            self._body.eof()  # garbage when the body was cut short
        if self._body.done:
            self._decoder.close()  # a half message at the end is dropped, garbage raised
            self.ended = True

    # -- the reader's side ------------------------------------------------------------------

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self.on_change is not None:
            self.on_change()

    def check_idle(self, idle_timeout: float) -> float | None:
        """The idle deadline (:func:`time.monotonic`) while the stream is alive; None once it
        is past, with :attr:`error` set to why (silent, or a slow drip of bytes that never
        complete a line: a keep-alive is a line, so it keeps a quiet stream alive)."""
        now = time.monotonic()
        if now - self.line_at < idle_timeout:
            return self.line_at + idle_timeout
        if self.error is None:
            if now - self.bytes_at >= idle_timeout:
                self.error = StreamError(f"stream silent for {idle_timeout:g} s")
            else:
                self.error = StreamError(f"no complete line for {idle_timeout:g} s (a slow drip)")
        return None

    async def wait_until(self, deadline: float) -> None:
        """Until something happens, or :func:`time.monotonic` reaches ``deadline``: one future
        and one timer of the loop's own scheduler (no cancel scope per message: less garbage
        for the collector, whose pauses grow with the heap of thousands of streams)."""
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(deadline - time.monotonic(), self.wake)
        try:
            await waiter  # a cancellation (anyio's included) cancels this await
        finally:
            timer.cancel()
            self._waiter = None

    def take(self) -> SSEMessage:
        message = self.messages.pop(0)
        if self._paused and len(self.messages) < MAX_QUEUED // 4 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return message

    def close(self) -> None:
        self.ended = True
        self.on_change = None  # its owner closed it: nothing more to tell
        if self.transport is not None:
            self.transport.abort()  # a stream has nothing to flush: drop it at once


def _ping(message: SSEMessage) -> bool:
    """A keep-alive (``data: ping`` or empty data): dropped where it is parsed."""
    return message.event == "message" and message.data.strip() in ("ping", "")


def _request(target: _Target, headers: list[tuple[str, str]]) -> bytes:
    head = [("Host", target.host_header), ("User-Agent", USER_AGENT), *headers]
    try:
        return http1.request("GET", target.path, head)
    except ValueError as exc:  # a token or an id with a line break: never sent
        raise StreamError(f"bad stream request: {exc}") from None


async def _open(
    target: _Target,
    request: bytes,
    connect_timeout: float,
    idle_timeout: float,
    tls: ssl.SSLContext | None,
) -> StreamConnection:
    loop = asyncio.get_running_loop()
    conn = StreamConnection(request, time.monotonic())
    try:
        with anyio.fail_after(connect_timeout):
            await loop.create_connection(
                lambda: conn,
                target.host,
                target.port,
                ssl=(tls or client_context()) if target.tls else None,
                server_hostname=target.host if target.tls else None,
            )
    except TimeoutError:
        conn.close()
        raise StreamError(f"ConnectTimeout: no connection within {connect_timeout:g} s") from None
    except OSError as exc:
        raise StreamError(f"ConnectError: {str(exc)[:200] or type(exc).__name__}") from None
    while conn.status is None and conn.error is None and not conn.ended:
        if time.monotonic() - conn.bytes_at >= idle_timeout:
            conn.close()
            raise StreamError(f"stream silent for {idle_timeout:g} s")
        await conn.wait_until(conn.bytes_at + idle_timeout)
    return conn


def _check_response(conn: StreamConnection) -> None:
    status = conn.status
    if status is None:
        raise conn.error or StreamError("stream closed before answering")
    if status in (401, 403):
        raise StreamRejected(f"stream refused the events token (HTTP {status})")
    if status != 200:
        raise StreamError(f"stream answered HTTP {status}")
    if conn.content_encoding not in ("", IDENTITY):
        raise StreamError(f"stream answered {conn.content_encoding[:32]!r}-encoded, not identity")
    if conn.content_type != EVENT_STREAM:
        raise StreamError(
            f"stream answered {conn.content_type or 'no content type'}, not text/event-stream"
        )


async def open_stream(
    url: str,
    token: str,
    *,
    auth: Literal["bearer", "raw"] = "bearer",
    last_event_id: str | None = None,
    connect_timeout: float = 10.0,
    idle_timeout: float = 45.0,
    tls: ssl.SSLContext | None = None,
) -> StreamConnection:
    """Connect and read the answer's head: a stream accepted, its messages queued on it as
    they come (keep-alives dropped) in :attr:`StreamConnection.messages`.

    ``tls``: the context of an ``https`` stream (default: :func:`client_context`'s, trusting
    what httpx trusts; the daemon passes the one its config asks for). Raises
    :class:`StreamError` (:class:`StreamRejected` for a refused token). The caller closes it.
    """
    target = _Target.parse(url)
    headers = [
        ("Authorization", auth_header(token, auth)),
        ("Accept", "text/event-stream"),
        ("Cache-Control", "no-store"),
        # The bytes are decoded as they come: a compressed answer would decode to nothing.
        ("Accept-Encoding", "identity"),
    ]
    if last_event_id:
        headers.append(("Last-Event-ID", last_event_id))
    conn = await _open(target, _request(target, headers), connect_timeout, idle_timeout, tls)
    try:
        _check_response(conn)
    except StreamError:
        conn.close()
        raise
    return conn


async def sse_messages(
    url: str,
    token: str,
    *,
    idle_timeout: float = 45.0,
    on_open: Callable[[], Awaitable[None]] | None = None,
    **options: Any,
) -> AsyncGenerator[StreamMessage, None]:
    """Yield the stream's messages until it ends (:func:`open_stream`, with its ``options``,
    read by a coroutine). Keep-alives (``data: ping``) are skipped.

    ``on_open`` is awaited once the stream is accepted, before its first message is read.
    Raises :class:`StreamError` for anything that ends the stream other than its own end. Use
    with ``contextlib.aclosing`` so the connection closes when the caller stops early.
    """
    conn = await open_stream(url, token, idle_timeout=idle_timeout, **options)
    try:
        if on_open is not None:
            await on_open()
        while True:
            while conn.messages:
                message = conn.take()  # keep-alives were dropped as they were parsed
                yield StreamMessage(event=message.event, data=message.data, id=message.id)
                del message  # not held in this frame while the stream waits
            if conn.error is not None:
                raise conn.error
            if conn.ended:
                return
            deadline = conn.check_idle(idle_timeout)
            if deadline is None:
                raise conn.error or StreamError(f"stream silent for {idle_timeout:g} s")
            await conn.wait_until(deadline)
    finally:
        conn.close()
