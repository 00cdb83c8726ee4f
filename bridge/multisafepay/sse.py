"""One order's server-sent event stream (``events_stream_url``), read with httpx + httpx-sse.

This only reads a stream; what a message means is the core's business and reconnecting is the
session's. A silent connection is detected by httpx's read timeout: keep-alive comments are
bytes, so only a stream with no traffic at all for ``idle_timeout`` is declared dead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

import httpx
from httpx_sse import SSEError, aconnect_sse

#: Longest message the bridge reads; a longer one is garbage (a real one is ~200 bytes).
MAX_MESSAGE_BYTES = 64 * 1024


class StreamError(Exception):
    """The stream could not be read (refused, wrong content type, closed, silent, too long)."""


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
) -> AsyncIterator[StreamMessage]:
    """Yield the stream's messages until it ends. Keep-alives (``data: ping``) are skipped.

    Raises :class:`StreamError` for anything that ends the stream other than its own end. Use
    with ``contextlib.aclosing`` so the connection closes when the caller stops early.
    """
    headers = {"Authorization": auth_header(token, auth)}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    timeout = httpx.Timeout(connect=connect_timeout, read=idle_timeout, write=10.0, pool=10.0)
    try:
        async with aconnect_sse(http, "GET", url, headers=headers, timeout=timeout) as source:
            status = source.response.status_code
            if status in (401, 403):
                raise StreamRejected(f"stream refused the events token (HTTP {status})")
            if status != 200:
                raise StreamError(f"stream answered HTTP {status}")
            async for sse in source.aiter_sse():
                if len(sse.data) > MAX_MESSAGE_BYTES:
                    raise StreamError(f"message of {len(sse.data)} bytes: not a MultiSafepay event")
                if sse.event == "message" and sse.data.strip() in ("ping", ""):
                    continue
                yield StreamMessage(event=sse.event, data=sse.data, id=sse.id or None)
    except SSEError as exc:
        raise StreamError(str(exc)) from exc
    except httpx.ReadTimeout as exc:
        raise StreamError(f"stream silent for {idle_timeout:g} s") from exc
    except httpx.HTTPError as exc:
        raise StreamError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
