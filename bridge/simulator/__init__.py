"""A local stand-in for MultiSafepay's cloud POS API (orders, SSE stream, WebSocket bus, webhooks).

Pure pieces (scenarios, orders, tokens, signing, SSE/bus framing, variants) are importable and
testable without a server; ``app`` wires them into Starlette and ``server.SimulatorServer`` runs
the app on a free port for tests and tools. See ``errors`` for the error codes it answers with.

Importing the package loads none of it: the pure pieces import no server library, and
``SimulatorServer`` (uvicorn, Starlette) is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bridge.simulator.server import SimulatorServer

__all__ = ["SimulatorServer"]


def __getattr__(name: str) -> Any:
    if name == "SimulatorServer":
        from bridge.simulator.server import SimulatorServer

        return SimulatorServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
