"""MultiSafepay's answer shapes as Starlette responses (``errors`` stays free of server
libraries: the pure pieces raise ``MspError``, the app renders it here)."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from bridge.simulator.errors import MspError


def ok(data: Any, status: int = 200) -> JSONResponse:
    """MultiSafepay's success shape: ``{"success": true, "data": ...}``."""
    return JSONResponse({"success": True, "data": data}, status_code=status)


def fail(err: MspError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.http_status)
