"""Route on the path as the client encoded it, one segment at a time.

ASGI servers hand the app a decoded ``path``: ``orders/till7%2F123`` arrives as
``orders/till7/123``, which matches no route (or, for ``X%2Frefunds``, the refund route of order
``X``). MultiSafepay allows ``/`` in order ids (MultiSafepay/docs:
content/point-of-sale/smartpos-solutions.md), and its official SDK percent-encodes every path
segment (``multisafepay`` 3.1.0: ``api/base/abstract_manager.py``), so the simulator routes on
``raw_path``: each segment is decoded on its own and a ``/`` inside a segment stays ``%2F`` for
the router. Handlers read ids with :func:`path_param`, which decodes that last step.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

#: Scope key of the connection's asyncio transport (so a simulated drop can abort it).
TRANSPORT_KEY = "pos_bridge.transport"

# Everything but "/" and "%" is left readable for the router; those two stay encoded.
_KEEP = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "/%")


def segment_path(raw_path: bytes) -> str:
    """The path with each segment decoded, except that ``/`` and ``%`` inside one stay encoded."""
    text = raw_path.decode("latin-1")
    return "/".join(quote(unquote(seg), safe=_KEEP) for seg in text.split("/"))


def path_param(connection: HTTPConnection, name: str) -> str:
    """A path parameter as the client meant it (``till7%2F123`` -> ``till7/123``)."""
    return unquote(str(connection.path_params[name]))


class SegmentRouting:
    """ASGI middleware: ``scope["path"]`` rebuilt from ``raw_path`` by :func:`segment_path`.

    It also records the server's transport under ``TRANSPORT_KEY`` when ``send`` is a method of
    uvicorn's protocol object, so a simulated network failure can drop the connection without
    a WebSocket closing handshake (ASGI itself only offers clean closes).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = dict(scope)  # the server's own scope is left as it was
            raw = scope.get("raw_path")
            if raw:
                scope["path"] = segment_path(raw.partition(b"?")[0])
            if scope["type"] == "websocket":
                scope[TRANSPORT_KEY] = getattr(getattr(send, "__self__", None), "transport", None)
        await self.app(scope, receive, send)
