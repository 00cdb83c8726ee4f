"""One order's server-sent event stream (``events_stream_url``), read with httpx.

This only reads a stream; what a message means is the core's business and reconnecting is the
session's. The bytes go through the project's bounded decoder (``sse_decoder``): httpx-sse's
keeps an unfinished line without limit. Two ways a connection is declared dead: no bytes at all
for ``idle_timeout`` (httpx's read timeout; keep-alive comments are bytes), or bytes that never
complete a line for ``idle_timeout`` (a slow drip).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import httpx

from bridge.multisafepay.sse_decoder import SSEDecoder, SSEProtocolError

#: Longest line and message the bridge reads; a real message is ~200 bytes.
MAX_LINE_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 64 * 1024


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


async def sse_messages(
    http: httpx.AsyncClient,
    url: str,
    token: str,
    *,
    auth: Literal["bearer", "raw"] = "bearer",
    last_event_id: str | None = None,
    connect_timeout: float = 10.0,
    idle_timeout: float = 45.0,
    on_open: Callable[[], Awaitable[None]] | None = None,
) -> AsyncGenerator[StreamMessage, None]:
    """Yield the stream's messages until it ends. Keep-alives (``data: ping``) are skipped.

    ``on_open`` is awaited once the stream is accepted, before its first message is read.

    Raises :class:`StreamError` for anything that ends the stream other than its own end. Use
    with ``contextlib.aclosing`` so the connection closes when the caller stops early.
    """
    headers = {
        "Authorization": auth_header(token, auth),
        "Accept": "text/event-stream",
        # The bytes are read raw (``aiter_raw``): a compressed answer would decode to nothing.
        "Accept-Encoding": "identity",
        "Cache-Control": "no-store",
    }
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    timeout = httpx.Timeout(connect=connect_timeout, read=idle_timeout, write=10.0, pool=10.0)
    decoder = SSEDecoder(max_line=MAX_LINE_BYTES, max_event=MAX_MESSAGE_BYTES)
    try:
        async with http.stream("GET", url, headers=headers, timeout=timeout) as response:
            status = response.status_code
            if status in (401, 403):
                raise StreamRejected(f"stream refused the events token (HTTP {status})")
            if status != 200:
                raise StreamError(f"stream answered HTTP {status}")
            content_type = response.headers.get("content-type", "").partition(";")[0].strip()
            if content_type != "text/event-stream":
                raise StreamError(
                    f"stream answered {content_type or 'no content type'}, not text/event-stream"
                )
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise StreamError(f"stream answered {encoding[:32]!r}-encoded, not identity")
            if on_open is not None:
                await on_open()
            lines, alive_at = 0, time.monotonic()
            async for chunk in response.aiter_raw():
                for message in decoder.feed(chunk):
                    if message.event == "message" and message.data.strip() in ("ping", ""):
                        continue
                    yield StreamMessage(event=message.event, data=message.data, id=message.id)
                if decoder.lines != lines:
                    lines, alive_at = decoder.lines, time.monotonic()
                elif time.monotonic() - alive_at > idle_timeout:
                    raise StreamError(f"no complete line for {idle_timeout:g} s (a slow drip)")
            decoder.close()
    except SSEProtocolError as exc:
        raise StreamError(f"garbage on the stream: {exc}") from exc
    except httpx.ReadTimeout as exc:
        raise StreamError(f"stream silent for {idle_timeout:g} s") from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise StreamError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
